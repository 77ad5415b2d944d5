// The per-VM ledger: what hvpatch has written into one guest, in stack order, so that `list`,
// `revert` and crash recovery never depend on memory of a previous process.
//
// Write-ahead rule: a patch is recorded in state kApplying (with every original byte it will
// overwrite and every arena range it will fill) BEFORE the first guest write, and moved to kApplied
// after the last one. Revert records kReverting before restoring bytes. A record found in a
// transitional state by the next invocation means that process died mid-transaction; the recovery
// (PatchEngine::Recover) compares the guest's bytes with the record and finishes the job one way
// or the other.
//
// This file is the data model only; LedgerStore persists it (the host implementation is a
// crash-safe JSON file, cli/ledger_file.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

enum class PatchState { kApplying, kApplied, kReverting };
std::string_view PatchStateName(PatchState s);

// One replaced function: where its trampoline sits, what was there, what we put there.
struct LedgerFunction {
  std::string name;           // old_name
  std::string object;         // "vmlinux" or a module name
  std::uint64_t sympos = 0;   // as requested by the patch (0 = unique)
  std::uint64_t old_addr = 0; // the old function's address
  std::uint64_t old_size = 0;
  std::uint64_t site = 0;     // trampoline address (old_addr, or old_addr+4 after endbr64)
  std::vector<std::uint8_t> original;    // bytes at `site` before this patch (5)
  std::vector<std::uint8_t> trampoline;  // bytes this patch wrote at `site` (5)
  std::uint64_t new_addr = 0;  // the replacement's address in the arena
  std::uint64_t new_size = 0;
};

struct LedgerPatch {
  std::string name;
  std::string build_id;  // of the .ko (sha256 of the file), to tell two builds apart
  PatchState state = PatchState::kApplying;
  std::vector<LedgerFunction> functions;
  std::int64_t applied_at = 0;  // unix seconds
  // klp_patch.replace: an atomic-replace patch (docs/atomic-replace.md). It took over every
  // hvpatch patch that was applied before it, named in `replaces` (bottom to top). While it is
  // kApplying, those patches are still in the ledger (kApplied), below it: recovery either
  // finishes the replace (drops them) or undoes it (keeps them). Once applied, they are gone
  // from `patches` and `replaces` is their record. For a function of this patch that a replaced
  // patch had patched, `original` is the kernel's own entry (what that patch had found), so
  // that reverting this patch gives back the original kernel.
  bool replace = false;
  std::vector<std::string> replaces;
};

// How the arena is mapped into the guest (kept while any patch uses it).
struct ArenaMapping {
  bool mapped = false;
  std::uint64_t base_va = 0;        // the 2 MiB slot in the kernel-image window
  std::uint64_t bar_gpa = 0;        // the device's BAR2
  std::uint64_t size = 0;
  std::uint64_t pmd_entry_gpa = 0;  // where the PMD entry was written
  std::uint64_t pmd_entry = 0;      // the value written
  // The allocator's state (ArenaLayout::Serialize): who owns which pages, and which freed pages
  // stay mapped (see patcher/arena_layout.h for why pages are retired, never unmapped).
  std::string layout;
  // True once an apply that mapped the arena has finished its pause: from then on the PMD entry
  // is in the guest's page tables for as long as this boot lasts. Before (a first apply killed
  // mid-way), a missing PMD entry proves nothing about the boot.
  bool committed = false;
};

// Which boot of the guest a ledger describes. A ledger is only ever used on the boot it was
// written for; see docs/transaction.md, "Boot identity", for why these parts and not others.
struct BootIdentity {
  std::string kernel_build_id;      // vmcoreinfo BUILD-ID
  std::uint64_t kaslr_offset = 0;   // vmcoreinfo KERNELOFFSET
  std::uint64_t page_table_gpa = 0; // the kernel's own top-level page table (init_top_pgt), 0 if unknown
  // hvpatch's boot mark: a random value hvpatch writes into entry 0 of the arena's PTE table
  // (page 0 of the BAR) when it maps the arena. Entry 0 never maps a page (the table is not
  // mapped itself), and bit 0 (present) of the mark is clear, so the guest's MMU ignores it.
  // Migration and save/restore carry it with the arena; a new QEMU with a fresh arena file has
  // none. 0 until the arena is mapped.
  std::uint64_t mark = 0;
  bool operator==(const BootIdentity&) const = default;
};

// A ledger that was found to belong to another boot, kept by the store under another name.
struct ArchivedLedger {
  std::string path;                  // where LedgerStore::Archive put it
  std::string reason;                // why it was not this boot's
  std::int64_t at = 0;               // unix seconds
  std::vector<std::string> patches;  // the patches it held (they went with that boot)
  std::uint64_t arena_va = 0;        // where that boot had the arena mapped (0: not mapped)
};

struct Ledger {
  std::string vm_identity;
  std::string kernel_build_id;  // the guest kernel the ledger's addresses belong to
  // The rest of the boot identity (BootIdentity, with kernel_build_id above).
  std::uint64_t kaslr_offset = 0;
  std::uint64_t page_table_gpa = 0;
  std::uint64_t boot_mark = 0;
  ArenaMapping arena;
  std::vector<LedgerPatch> patches;  // stack order: the last one is on top
  // Set while a process holds the VM paused: if it dies, the next run restores the run state.
  bool paused_by_hvpatch = false;
  bool was_running = false;
  // Ledgers of earlier boots this one replaced, oldest first (at most kArchivedKept): what
  // `list` reports and what lets `revert` say that a patch went with an earlier boot.
  std::vector<ArchivedLedger> archived;
  static constexpr std::size_t kArchivedKept = 8;

  BootIdentity Boot() const { return {kernel_build_id, kaslr_offset, page_table_gpa, boot_mark}; }
  // True when the ledger holds nothing of this boot's guest: no patch, no arena, no pause.
  bool Empty() const { return patches.empty() && !arena.mapped && !paused_by_hvpatch; }

  LedgerPatch* Find(std::string_view name);
  const LedgerPatch* Find(std::string_view name) const;
  // The topmost patch in the ledger that patches `site`, or nullptr.
  const LedgerPatch* TopAt(std::uint64_t site) const;
  // The patch whose `replaces` names `name` (it took `name` over by atomic replace), or nullptr.
  const LedgerPatch* ReplacedBy(std::string_view name) const;
};

// Persistence for one VM's ledger. Save() must be atomic and durable when it returns Ok: after a
// crash, Load() sees either the old or the new ledger, never a mix.
class LedgerStore {
 public:
  virtual ~LedgerStore() = default;
  // An empty ledger if none was saved yet.
  virtual Result<Ledger> Load() = 0;
  virtual Status Save(const Ledger& ledger) = 0;
  // Moves the saved ledger aside, kept for the record under a new name with a timestamp, and
  // returns where it went. The next Load() finds no ledger. Errors: kIo.
  virtual Result<std::string> Archive() = 0;
  // Where it lives, for messages.
  virtual std::string Describe() const = 0;
};

}  // namespace hv::patcher
