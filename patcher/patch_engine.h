// The patch transaction: the core's entry points for apply, revert, check, list and crash
// recovery. Everything it touches comes in as an interface: the VM (vmm::Vm), the guest kernel
// (KernelView), the ledger's persistence (LedgerStore) and, optionally, the in-guest agent
// (GuestConfirmation). It never parses argv or JSON and never opens sockets.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "patcher/arena_layout.h"
#include "patcher/commit.h"
#include "patcher/kernel_btf.h"
#include "patcher/kernel_tables.h"
#include "patcher/ledger.h"
#include "patcher/patch_module.h"
#include "patcher/symbol_resolver.h"
#include "vmm/page_walk.h"
#include "vmm/vm.h"

namespace hv::patcher {

// What the engine needs to know about the running guest kernel (GuestKernel implements it).
class KernelView : public SymbolResolver {
 public:
  virtual std::string BuildId() const = 0;
  // The kernel's own page tables (they map the kernel-image window for every process).
  virtual vmm::PagingMode KernelPaging() const = 0;
  // The end of the kernel image (`_end`): the arena goes into a free 2 MiB slot above it.
  virtual std::uint64_t ImageEnd() const = 0;
  // The guest's BTF, for the shadow module's offsets (shadow_module.h). Null: patches get no
  // shadow module, and THIS_MODULE is refused as before.
  virtual const KernelBtf* Btf() const { return nullptr; }
};

// The in-guest agent's part (optional): confirm from inside, publish the sysfs-like tree.
class GuestConfirmation {
 public:
  virtual ~GuestConfirmation() = default;
  // kFailedPrecondition when the guest itself owns one of `functions`: an in-guest livepatch
  // patch (named) or ftrace. kUnavailable when the agent cannot tell.
  virtual Status CheckNotOwned(std::span<const KlpFunction> functions) = 0;
  // Reads each site from inside the guest; Ok(true) when every one jumps to its new function.
  virtual Result<bool> Confirm(const LedgerPatch& patch) = 0;
  virtual Status Publish(const Ledger& ledger) = 0;
};

struct ApplyRequest {
  std::string patch_path;            // for messages
  std::vector<std::uint8_t> module;  // the .ko file's bytes
  RetryPolicy retry;
  bool dry_run = false;  // `check`: every check, including one stack check, and no write
};

struct RevertRequest {
  std::string name;
  RetryPolicy retry;
};

struct FunctionReport {
  std::string name, object;
  std::uint64_t sympos = 0;
  std::uint64_t old_addr = 0, site = 0, new_addr = 0;
  std::string entry;       // "ftrace nop", or "hvpatch trampoline" when stacking
  std::string stacked_on;  // the patch below, when stacking
};

struct ApplyResult {
  std::string name;
  std::vector<FunctionReport> functions;
  CommitReport commit;
  std::uint32_t arena_pages = 0;
  std::size_t fentry_nops = 0;
  bool dry_run = false;
  bool confirmed = false;
  std::string confirmation;  // why not confirmed, or "agent"
};

struct RevertResult {
  std::string name;
  std::vector<std::string> functions;
  CommitReport commit;
};

struct SiteCheck {
  std::string function;
  std::uint64_t site = 0;
  bool holds_trampoline = false;  // what the guest has now
};

struct ListedPatch {
  LedgerPatch patch;
  std::vector<SiteCheck> sites;
  bool consistent = false;  // every site of an applied patch that is on top holds its trampoline
};

class PatchEngine {
 public:
  PatchEngine(vmm::Vm& vm, const KernelView& kernel, StackSource& stacks, LedgerStore& store,
              GuestConfirmation* agent = nullptr, StepHook hook = {})
      : vm_(vm), kernel_(kernel), stacks_(stacks), store_(store), agent_(agent),
        hook_(std::move(hook)) {}

  // Finishes whatever a previous, dead hvpatch left in the ledger, and drops a ledger that
  // belongs to an earlier boot. Returns one line per thing done ("recovered patch 'x': fully
  // applied"), empty when there was nothing to do. Call it before any other operation.
  Result<std::vector<std::string>> Recover();

  // Errors: the loader's and linker's (kInvalidArgument, kUnimplemented), kFailedPrecondition
  // (already applied, entry owned by ftrace, run-pre mismatch), kNotFound (no arena device,
  // unknown function), kBusy (stack check), kUnavailable (arena full).
  Result<ApplyResult> Apply(const ApplyRequest& request);
  // Errors: kNotFound (not applied), kFailedPrecondition (a patch above it on some function:
  // patches are reverted in reverse order, as livepatch requires), kBusy.
  Result<RevertResult> Revert(const RevertRequest& request);
  Result<std::vector<ListedPatch>> List();

 private:
  Result<Ledger> LoadLedger();
  // The kernel edit that unlinks the shadow module of patch `name` (in its data runs of
  // `layout`), or none when this kernel gives patches no shadow module.
  std::optional<KernelEdit> ShadowUnlinkEdit(const std::string& name, const ArenaLayout& layout);
  // The guest's boot_cpu_data.x86_capability, for alternatives.
  Result<CpuFeatures> ReadCpuFeatures(const KernelBtf& btf);
  // A free 2 MiB slot above the kernel image. kFailedPrecondition when `bar_gpa` is already
  // mapped in the window (a ledger this engine does not hold), kUnavailable when none is free.
  Result<std::uint64_t> FindArenaSlot(const vmm::PagingMode& mode, std::uint64_t bar_gpa,
                                      std::uint64_t* pmd_entry_gpa);
  Result<std::vector<std::uint8_t>> ReadKernel(std::uint64_t va, std::size_t n);
  Result<CommitReport> CommitWithLedger(Ledger& ledger, const CommitPlan& plan, const RetryPolicy& retry);
  Status ResumeAfterCrash(Ledger& ledger, std::vector<std::string>& notes);

  vmm::Vm& vm_;
  const KernelView& kernel_;
  StackSource& stacks_;
  LedgerStore& store_;
  GuestConfirmation* agent_;
  StepHook hook_;
};

}  // namespace hv::patcher
