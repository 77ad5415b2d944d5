// Everything a command needs to act on one VM, opened in order: the VM (vmm::Open), the per-VM
// lock, the guest kernel model (read from guest memory), the ledger, the patch engine, and the
// recovery of whatever an interrupted hvpatch left behind.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/agent_link.h"
#include "cli/command.h"
#include "cli/kernel_cache_file.h"
#include "cli/ledger_file.h"
#include "cli/vm_lock.h"
#include "cli/vmcoreinfo_hint_file.h"
#include "patcher/guest_kernel.h"
#include "patcher/guest_kernel_view.h"
#include "patcher/patch_engine.h"
#include "vmm/vm.h"

namespace hv::cli {

struct Session {
  // Saves the BTF answers the command's later questions (a commit's) added since the model was
  // built, for the next command (best effort: GuestKernel::SaveBtfAnswers).
  ~Session();

  // Declared first, so released last: after the VM connection (QMP, gdbstub) is closed, so the
  // next hvpatch never finds the lock free and QEMU's one QMP client slot still taken.
  std::optional<VmLock> domain_lock;  // taken before connecting (see OpenSession)
  std::optional<VmLock> lock;
  std::unique_ptr<vmm::Vm> vm;
  std::unique_ptr<KernelCacheFile> kernel_cache;  // decoded kallsyms and BTF answers between runs
  std::unique_ptr<patcher::GuestKernel> kernel;
  std::string vmcoreinfo_hint_note;  // why the location hint was not saved (empty: saved or unchanged)
  std::unique_ptr<patcher::GuestKernelView> view;
  std::unique_ptr<patcher::GuestKernelStacks> stacks;
  std::unique_ptr<LedgerFile> ledger;
  std::unique_ptr<AgentLink> agent;  // null without an agent
  std::string agent_note;            // why there is no agent
  std::unique_ptr<patcher::PatchEngine> engine;
  std::vector<std::string> recovery;  // what Recover() did
  std::string domain;
};

// Opens DOMAIN for a command. With `exclusive` it takes the VM's lock (apply, revert, check)
// and runs crash recovery. Progress goes to stderr unless --json.
Result<std::unique_ptr<Session>> OpenSession(const GlobalOptions& options, const std::string& domain,
                                             bool exclusive);

patcher::RetryPolicy RetryFrom(const GlobalOptions& options);

// The test hook for crash tests: with HVPATCH_TEST_STOP_AT=STEP in the environment, the process
// stops itself (SIGSTOP) when the transaction reaches STEP, so a test can kill -9 it there.
patcher::StepHook TestStopHook();

// Prints recovery notes (stderr, or nothing with --json: they go in the JSON object).
void Progress(const GlobalOptions& options, const std::string& line);

}  // namespace hv::cli
