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
  // Parts of the boot identity (patcher/ledger.h BootIdentity): the KASLR offset, and the
  // guest-physical address of the kernel's own top-level page table, 0 when the view does not
  // know it (a paging root taken from a vCPU's CR3 changes with the running process, so it
  // cannot identify a boot).
  virtual std::uint64_t KaslrOffset() const { return 0; }
  virtual std::uint64_t PageTableGpa() const { return 0; }
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
  // Atomic replace: the patches taken over (bottom to top), and the functions of theirs that
  // this patch does not patch, which run the kernel's own code again.
  std::vector<std::string> replaced;
  std::vector<std::string> restored;
};

struct RevertResult {
  std::string name;
  std::vector<std::string> functions;
  CommitReport commit;
  // Set when the patch was live in an earlier boot of the guest and went with it: nothing was
  // written. Says where that boot's ledger was archived and why.
  std::string gone_with_boot;
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

  // Finishes whatever a previous, dead hvpatch left in the ledger. A ledger of another boot of
  // the guest (a restarted QEMU, a reboot inside QEMU: see BootIdentity) is archived through
  // LedgerStore::Archive and replaced by an empty one, writing nothing to the guest on its
  // behalf. Returns one line per thing done ("recovered patch 'x': fully applied"), empty when
  // there was nothing to do. Call it before any other operation. (Apply, Revert and List
  // archive a foreign ledger too, if Recover was not called.)
  Result<std::vector<std::string>> Recover();

  // The ledger as this engine uses it: of this boot (a foreign one archived first), with the
  // boot identity of the running guest filled in. For `list`.
  Result<Ledger> CurrentLedger() { return LoadLedger(); }
  // Why `ledger` does not describe the running boot of the guest, or "" when it does. Reads the
  // arena's PMD entry and boot mark from the guest; an unreadable one counts as gone.
  std::string ForeignBootReason(const Ledger& ledger);

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
  // ArenaLayout::Free of patch `name`'s runs, after its shadow module was unlinked, except its
  // data when it holds a static key tombstone (HoldsKeyTombstone, read from the arena): that data
  // is handed to kStaticKeyKeeper, never freed. Data the guest's page tables do not map (an apply
  // killed before its PTE writes) cannot hold one. Errors: Free's.
  Status FreePatchRuns(ArenaLayout& layout, const std::string& name);
  // The guest's boot_cpu_data.x86_capability, for alternatives.
  Result<CpuFeatures> ReadCpuFeatures(const KernelBtf& btf);
  // A free 2 MiB slot above the kernel image. kFailedPrecondition when `bar_gpa` is already
  // mapped in the window (a ledger this engine does not hold), kUnavailable when none is free.
  // `avoid_va`: a slot not to take if another is free (where an earlier boot had the arena: TCG
  // may still hold translations of that boot's code at that address).
  Result<std::uint64_t> FindArenaSlot(const vmm::PagingMode& mode, std::uint64_t bar_gpa,
                                      std::uint64_t* pmd_entry_gpa, std::uint64_t avoid_va = 0);
  void SetBootIdentity(Ledger& ledger) const;
  Result<std::vector<std::uint8_t>> ReadKernel(std::uint64_t va, std::size_t n);
  // `*wrote`: whether the commit got as far as writing into the guest (see Committer::wrote).
  Result<CommitReport> CommitWithLedger(Ledger& ledger, const CommitPlan& plan, const RetryPolicy& retry,
                                        bool* wrote);
  Status ResumeAfterCrash(Ledger& ledger, std::vector<std::string>& notes);
  // The end of an atomic replace by `by` (its pause done): the patches it replaced leave the
  // ledger and their arena pages are freed (retired) with FreePatchRuns, which keeps the data of
  // one that holds a static key tombstone (read from the arena, so a recovery that finds their
  // modules unlinked already decides the same). Does not save.
  Status DropReplaced(Ledger& ledger, const LedgerPatch& by);
  // Recovery of an atomic replace that a dead hvpatch left kApplying (ledger.patches[index]):
  // finished when every site holds the end state, else undone. Saves the ledger.
  Status RecoverReplace(Ledger& ledger, std::size_t index, std::vector<std::string>& notes);

  vmm::Vm& vm_;
  const KernelView& kernel_;
  StackSource& stacks_;
  LedgerStore& store_;
  GuestConfirmation* agent_;
  StepHook hook_;
  std::vector<std::string> boot_notes_;  // what LoadLedger archived, for Recover to report
};

}  // namespace hv::patcher
