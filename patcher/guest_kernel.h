// GuestKernel: what the patcher knows about the running guest kernel, built from guest memory
// alone (no debug package, no agent), once per connection:
//
//   vmcoreinfo (scan of guest RAM)  -> release, build-id, KASLR offset, paging root, kallsyms
//   kallsyms (compressed tables)    -> vmlinux symbols, checked against vmcoreinfo's _stext
//   BTF (__start_BTF..__stop_BTF)   -> task_struct, rq, module, ... offsets
//                                      (or the answers an earlier run recorded: btf_answers.h)
//   module list (`modules`)         -> per-module symbol tables
//   task walk                       -> every thread, each CPU's idle and current task, stacks
//
// The task walk is re-run at each pause (WalkTasks/StackRegions): tasks come and go while the
// guest runs. Fallbacks for the symbols when the kallsyms tables cannot be decoded: the guest
// agent's /proc/kallsyms text, or a user-given System.map plus the KASLR offset.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "patcher/btf_answers.h"
#include "patcher/commit.h"
#include "patcher/helper_thread.h"
#include "patcher/kallsyms_cache.h"
#include "patcher/kernel_btf.h"
#include "patcher/module_symbols.h"
#include "patcher/stack_check.h"
#include "patcher/symbol_resolver.h"
#include "patcher/symbol_table.h"
#include "patcher/task_walk.h"
#include "patcher/vmcoreinfo.h"
#include "vmm/guest_memory.h"
#include "vmm/vm.h"

namespace hv::patcher {

struct GuestKernelOptions {
  // /proc/kallsyms text (from the guest agent): used when the tables in memory cannot be decoded.
  std::string agent_kallsyms;
  // A System.map for the guest's kernel build, with addresses relocated by `kaslr_offset`
  // (vmcoreinfo's KERNELOFFSET when not given). Used after the agent's kallsyms.
  std::string system_map;
  std::optional<std::uint64_t> kaslr_offset;
  // Skip the initial task walk (for `info` on a guest that is not paused).
  bool walk_tasks = true;
  // Decoded kallsyms and BTF answers kept between runs (patcher/kallsyms_cache.h,
  // patcher/btf_answers.h); null: always decode and parse, record nothing.
  KernelCacheStore* cache = nullptr;
  // Guest memory the model may read after Build has returned: with a BTF cache hit, the first
  // question the entry does not answer (e.g. a commit's, during apply) reads and parses the
  // BTF then, through this. It must outlive the GuestKernel. Null: Build's `mem`, which must
  // then outlive the GuestKernel when `cache` is set (give the VM here when `mem` is a
  // short-lived view such as the build's vmm::CachedPhysMemory).
  const vmm::GuestPhysMemory* memory_after_build = nullptr;
  // Where an earlier run found vmcoreinfo (GuestKernelSummary::vmcoreinfo_gpa): tried first
  // (Vmcoreinfo::ReadAt, which needs the vCPU states), then the scan of guest RAM.
  std::optional<std::uint64_t> vmcoreinfo_hint;
};

// What `hvpatch info` prints.
struct GuestKernelSummary {
  std::string release;
  std::string build_id;  // hex
  std::uint64_t kaslr_offset = 0;
  std::size_t symbols = 0;          // vmlinux + modules
  std::size_t vmlinux_symbols = 0;
  std::string symbol_source;        // "guest memory (kallsyms)", "agent kallsyms", "System.map"
  std::vector<std::string> modules;
  int cpus = 0;                     // nr_cpu_ids (read even when the task walk is skipped)
  std::size_t tasks = 0;            // from the build's walk (0 if skipped)
  std::uint64_t vmcoreinfo_gpa = 0;
  std::string vmcoreinfo_source;    // "hint", "scan (hint 0x... rejected: WHY)", "scan"
  std::uint64_t thread_size = 0;
  std::string symbol_cache;         // "hit", "miss: WHY", or empty without a cache
  std::string btf_cache;            // likewise for the BTF answers (btf_answers.h)
};

// Where Build spent its time (wall clock, milliseconds), for the benchmark.
struct GuestKernelTimings {
  double vmcoreinfo_ms = 0, kallsyms_ms = 0, btf_ms = 0, modules_ms = 0, tasks_ms = 0, total_ms = 0;
};

class GuestKernel : public SymbolResolver {
 public:
  // Builds the model. `vcpus` (their states in a pause) confirm that the vmcoreinfo found
  // belongs to the running kernel (Vmcoreinfo's live check; without them a location hint is
  // not used) and give the fallback paging root when vmcoreinfo has no init_top_pgt. The guest
  // should be paused for a consistent task walk.
  // Errors carry the failing step as context ("finding vmcoreinfo: ...", "decoding kallsyms: ...",
  // "reading BTF: ...", "reading modules: ...", "walking tasks: ..."), with the codes of the step.
  static Result<std::unique_ptr<GuestKernel>> Build(const vmm::GuestPhysMemory& mem,
                                                    std::span<const vmm::VcpuState> vcpus,
                                                    const GuestKernelOptions& options = {});

  const Vmcoreinfo& vmcoreinfo() const { return vmcoreinfo_; }
  const std::string& release() const { return vmcoreinfo_.os_release(); }
  const std::string& build_id() const { return vmcoreinfo_.build_id(); }
  std::uint64_t kaslr_offset() const { return vmcoreinfo_.kernel_offset(); }
  const SymbolTable& symbols() const { return symbols_; }
  const std::vector<GuestModule>& modules() const { return modules_; }
  const KernelBtf& btf() const { return *btf_; }
  const TaskLayout& task_layout() const { return walker_->layout(); }
  // The kernel's own page-table root (init_top_pgt), for reading kernel virtual memory.
  const vmm::PagingMode& paging() const { return paging_; }
  // The walk done by Build (empty if options.walk_tasks was false).
  const TaskSnapshot& initial_tasks() const { return initial_tasks_; }

  // Livepatch-style lookup; see SymbolTable::Find.
  Result<KernelSymbol> FindSymbol(std::string_view module, std::string_view name,
                                         std::uint32_t sympos = 0) const {
    return symbols_.Find(module, name, sympos);
  }
  Result<KernelSymbol> SymbolAt(std::uint64_t address) const {
    return symbols_.FindByAddress(address);
  }

  // SymbolResolver: "vmlinux" or a module name, or "" for vmlinux then every module.
  Result<ResolvedSymbol> Resolve(std::string_view name, std::string_view object,
                                 std::uint64_t sympos) const override;

  // Walks the tasks again (call inside a pause). Errors: see TaskWalker::Walk.
  // `hint`: see TaskWalker::Walk.
  Result<TaskSnapshot> WalkTasks(const vmm::GuestPhysMemory& mem, const TaskSnapshot* hint = nullptr) const;

  // The stacks the commit's safety check scans, inside a pause:
  //  - each vCPU in kernel mode: the stack holding its RSP, from RSP up; from an IRQ stack the
  //    interrupted SP saved at its top word, from an exception (IST) stack the RSP of the
  //    hardware frame at its top, is followed (at most 4 hops). If RSP is on no known stack,
  //    its task stack and IRQ stack are scanned whole. A vCPU in user mode has no live kernel
  //    frames: its task's stack is skipped.
  //    If RSP is on another task's stack (mid context switch), that stack is scanned from RSP.
  //  - every other thread and idle task: from its saved SP (thread.sp) to the top of its stack,
  //    or the whole stack if the saved SP is outside it or the task is marked on_cpu (being
  //    switched: frames below the saved SP may be live).
  // `hint` as for WalkTasks; `walked`, when given, receives the walk's snapshot.
  Result<std::vector<StackRegion>> StackRegions(const vmm::GuestPhysMemory& mem,
                                                std::span<const vmm::VcpuState> vcpus,
                                                const TaskSnapshot* hint = nullptr,
                                                TaskSnapshot* walked = nullptr) const;

  GuestKernelSummary Summary() const;
  const GuestKernelTimings& timings() const { return timings_; }

  // Saves the BTF answers under this kernel's key (build-id, BTF size) in `store` when some were
  // recorded since the last save: Build saves those it asked itself (when given a cache), and a
  // caller whose later questions (a commit's) added some calls this before it exits. Ok when
  // there is nothing new, or no cache was given to Build. Errors: kInvalidArgument when the
  // entry would exceed kMaxBtfAnswersBytes; the store's (best effort for callers: a failed save
  // only costs the next run a parse).
  Status SaveBtfAnswers(KernelCacheStore& store);

 private:
  GuestKernel() = default;

  Vmcoreinfo vmcoreinfo_;
  vmm::PagingMode paging_;
  SymbolTable symbols_;
  std::string symbol_source_;
  std::string symbol_cache_;
  std::string vmcoreinfo_source_;
  std::optional<KernelBtf> btf_;
  BtfAnswersKey btf_key_;
  std::string btf_cache_;
  std::vector<GuestModule> modules_;
  std::optional<TaskWalker> walker_;
  TaskSnapshot initial_tasks_;
  std::uint64_t per_cpu_end_ = 0;
  int nr_cpus_ = 0;
  GuestKernelTimings timings_;
};

// The commit's StackSource over a GuestKernel: re-walks the tasks in each pause.
class GuestKernelStacks : public StackSource {
 public:
  // Below this many predicted stacks, waking a second core costs about what it saves (Check).
  static constexpr std::size_t kMinShared = 256;
  GuestKernelStacks(const GuestKernel& kernel, const vmm::GuestPhysMemory& mem, std::size_t min_shared = kMinShared)
      : kernel_(kernel), mem_(mem), min_shared_(min_shared) {}
  Result<std::vector<StackRegion>> Collect(std::span<const vmm::VcpuState> vcpus) override {
    return kernel_.StackRegions(mem_, vcpus, hint_ ? &*hint_ : nullptr);
  }
  // When guest RAM is read from a mapping (vmm::GuestPhysMemory::ReadsFromMapping), walks the
  // tasks and reads their stacks once with the guest running, so the pages the pause will read
  // are already mapped in this process. Errors are ignored: a running guest's lists may be
  // mid-update, and the walk inside the pause is the one that counts. What it found is the
  // hint of the walk inside the pause (TaskWalker::Walk).
  void Prepare() override;

  // With a hint from Prepare, two cores share the pause's work: while this thread walks the
  // tasks, a helper thread scans the stacks the hint predicts (each task's saved SP to the top
  // of its stack), reading them inside the pause. The walk's regions that equal a predicted
  // one, bounds and all, take that scan's result (the same bytes, read in the same pause); any
  // other region (a task that ran since Prepare, a new task, the vCPUs' stacks) is scanned
  // after the walk. So the result is the serial check's. Without a hint: Collect, then
  // CheckStacks.
  Result<StackCheckReport> Check(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode,
                                 std::span<const vmm::VcpuState> vcpus, std::span<const CodeRange> busy,
                                 std::uint64_t& collect_us) override;

 private:
  const GuestKernel& kernel_;
  const vmm::GuestPhysMemory& mem_;
  std::size_t min_shared_;
  std::optional<TaskSnapshot> hint_;
  std::vector<StackRegion> hint_regions_;  // Prepare's regions, valid bounds only
  std::unordered_map<std::uint64_t, std::size_t> hint_by_begin_;  // index in hint_regions_
  std::unique_ptr<HelperThread> helper_;
};

}  // namespace hv::patcher
