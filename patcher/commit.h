// The commit: every function of a patch switches in one pause of all vCPUs, or none does.
//
//   pause -> vCPU state -> stacks (StackSource) -> CheckStacks -> run-pre check ->
//   physical writes (arena, page tables) -> code writes (trampolines) -> resume
//
// On a stack hit it resumes, waits `backoff` and tries again, `tries` times in all (Ksplice: 5
// tries, 1 s apart), then fails with kBusy naming every blocking task and function. The caller
// records the transaction in the ledger before calling (write-ahead): nothing here is written
// before the check passes, and a failed check leaves the guest untouched.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_words.h"
#include "patcher/stack_check.h"
#include "vmm/page_walk.h"
#include "vmm/vm.h"

namespace hv::patcher {

// Guest-physical bytes written with a plain host write: memory the guest never executed.
struct PhysWrite {
  std::uint64_t gpa = 0;
  std::vector<std::uint8_t> bytes;
  std::string what;  // for messages
};

// Bytes written as code (Vm::WriteCode, so TCG drops stale translations). With `expected`
// non-empty, the bytes at `va` must equal it inside the pause (Ksplice's run-pre check), or the
// commit fails with kFailedPrecondition before any write.
struct CodeWrite {
  std::uint64_t va = 0;
  std::vector<std::uint8_t> expected;
  std::vector<std::uint8_t> bytes;
  std::string what;
};

// A kernel data edit decided inside the pause from what the guest holds at that moment (the
// shadow module's links into the module list and tree, shadow_module.h). It reads through `mem`
// and stages its writes there; the commit writes every staged word after phys_writes and before
// code_writes. kBusy from an edit counts as a busy try (resume, back off, retry): e.g. the guest
// holds module_mutex. Any other error aborts the commit before any write.
using KernelEdit = std::function<Status(KernelWords& mem)>;

struct CommitPlan {
  std::vector<PhysWrite> phys_writes;  // first
  std::vector<KernelEdit> kernel_edits;  // then the words they staged, in order
  std::vector<CodeWrite> code_writes;  // then, in order (trampolines last)
  // Decided in the same pause after kernel_edits (they see those edits' staged writes), and
  // written after the last code write: what may only become unreachable once no trampoline
  // leads into it any more (the shadow modules of patches an atomic replace takes over). A
  // crash before these words are written leaves every trampoline switched, so recovery
  // finishes the transaction rather than undo it.
  std::vector<KernelEdit> final_kernel_edits;
  std::vector<CodeRange> busy;         // code that must not be in use
};

// Kernel virtual memory through a VM's physical memory and page tables (reads and writes).
class VmKernelWords : public KernelWords {
 public:
  VmKernelWords(vmm::Vm& vm, const vmm::PagingMode& mode) : vm_(vm), mode_(mode) {}
  Status Read(std::uint64_t va, std::span<std::uint8_t> out) override;
  // A plain physical write, page by page: for kernel data, never for code.
  Status Write(std::uint64_t va, std::span<const std::uint8_t> bytes) override;

 private:
  vmm::Vm& vm_;
  vmm::PagingMode mode_;
};

// Produces the stacks to scan, inside the pause (the task list changes while the guest runs).
class StackSource {
 public:
  virtual ~StackSource() = default;
  virtual Result<std::vector<StackRegion>> Collect(std::span<const vmm::VcpuState> vcpus) = 0;
  // Called before each pause, with the guest running: a source may touch what it will read
  // in the pause (e.g. fault in a mapping of guest RAM), so the pause does not pay for it.
  // Never needed for correctness: Collect reads everything again inside the pause.
  virtual void Prepare() {}
  // Collects the stacks and checks them against `busy` (CheckStacks over `mem`), inside the
  // pause, with the same result as Collect then CheckStacks. The default does exactly that; a
  // source may overlap the two. `collect_us` receives the time spent collecting.
  // (Defined here, like the class's other members: the fuzz targets build the task walk's
  // sources without commit.cpp.)
  virtual Result<StackCheckReport> Check(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode,
                                         std::span<const vmm::VcpuState> vcpus, std::span<const CodeRange> busy,
                                         std::uint64_t& collect_us) {
    const auto t0 = std::chrono::steady_clock::now();
    HV_ASSIGN_OR_RETURN(std::vector<StackRegion> regions, Collect(vcpus));
    collect_us = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
    return CheckStacks(mem, mode, vcpus, regions, busy);
  }
};

struct RetryPolicy {
  int tries = 5;
  std::chrono::milliseconds backoff{1000};
};

// One step of the successful pause and its wall time, for profiling the pause window.
struct PausePhase {
  std::string name;  // "pause", "vcpus", "stacks", "stack_check", "run_pre", "phys_writes",
                     // "code_writes", "resume"
  std::uint64_t us = 0;
};

struct CommitReport {
  int tries = 0;
  std::uint64_t pause_us = 0;  // the successful pause: from asking for it to resume done
  std::vector<std::uint64_t> pause_us_per_try;
  std::vector<PausePhase> phases;  // of the successful pause, in order; they add up to pause_us
  std::size_t threads_scanned = 0;
  std::uint64_t bytes_scanned = 0;
};

// Test hook, called with the name of each step as it starts: "paused", "checked",
// "phys_written", "code_written:N" (after the Nth code write), "resumed". A crash test makes it
// stop the process to prove recovery.
using StepHook = std::function<void(std::string_view step)>;

class Committer {
 public:
  Committer(vmm::Vm& vm, StackSource& stacks, RetryPolicy policy, StepHook hook = {})
      : vm_(vm), stacks_(stacks), policy_(policy), hook_(std::move(hook)) {}

  // Errors: kBusy (stack hits after every try; message names pid, comm and function),
  // kFailedPrecondition (run-pre mismatch, unreadable stack), and any Vm error (after which the
  // VM is resumed if this call paused it).
  Result<CommitReport> Commit(const CommitPlan& plan);
  // True once Commit started writing into the guest: after a failure, the guest may hold part
  // of the plan (or all of it, with the resume failed), so the caller must not assume either.
  bool wrote() const { return wrote_; }

 private:
  void Step(std::string_view s) {
    if (hook_) hook_(s);
  }
  // `phase` closes a profiling phase ("phys_writes", "code_writes") as it ends.
  Status WriteAll(const CommitPlan& plan, const StagedKernelWords* edits, const StagedKernelWords* final_edits,
                  KernelWords* kernel, const std::function<void(const char*)>& phase);

  vmm::Vm& vm_;
  StackSource& stacks_;
  RetryPolicy policy_;
  StepHook hook_;
  bool wrote_ = false;
};

}  // namespace hv::patcher
