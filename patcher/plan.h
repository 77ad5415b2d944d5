// The plan of one apply: every byte hvpatch will write into the guest for a patch module, and
// every check that can be made before the pause. Pure: guest memory comes in through
// GuestCodeReader, nothing is written. The commit carries the plan out (pause, stack check,
// run-pre check against FunctionPlan::entry.current, arena writes, PTE writes, trampolines).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "patcher/arena_layout.h"
#include "patcher/entry_site.h"
#include "patcher/patch_module.h"
#include "patcher/kernel_tables.h"
#include "patcher/relocator.h"
#include "patcher/run_pre.h"
#include "patcher/shadow_module.h"
#include "patcher/static_keys.h"
#include "patcher/symbol_resolver.h"

namespace hv::patcher {

// Reads guest kernel memory by virtual address (the lead's VM access implements it).
class GuestCodeReader {
 public:
  virtual ~GuestCodeReader() = default;
  // Exactly `size` bytes at `va`, or an error (unmapped, I/O).
  virtual Result<std::vector<std::uint8_t>> Read(std::uint64_t va, std::size_t size) const = 0;
};

struct FunctionPlan {
  KlpFunction klp;
  std::uint64_t old_va = 0;
  std::uint64_t old_size = 0;  // from kallsyms (next symbol); 0 if unknown
  std::uint64_t new_va = 0;    // in the arena
  std::uint64_t new_size = 0;
  // What the entry held when planned. entry.site_va is where `trampoline` goes; entry.current is
  // both the run-pre expectation and, for a fresh site, the bytes a revert restores.
  EntrySite entry;
  std::array<std::uint8_t, 5> trampoline{};
  // entry.kind == kArenaJump: the site already holds another hvpatch patch's jump to
  // entry.target. This patch stacks on it; reverting this one restores entry.current.
  bool stacked = false;
};

// Arena bytes, whole pages, written before the PTEs that make them visible.
struct ArenaWrite {
  std::uint64_t va = 0;
  std::uint64_t gpa = 0;
  std::vector<std::uint8_t> bytes;  // a multiple of the page size (code padded with int3)
  MemoryClass memory = MemoryClass::kCode;
  // Some page held code before: write it as code (TCG may hold translations of it).
  bool reuses_code_pages = false;
};

// One 8-byte entry of the arena's PTE table (arena page 0).
struct PteWrite {
  std::uint32_t page = 0;
  std::uint64_t gpa = 0;  // of the entry itself
  std::uint64_t value = 0;
};

struct PatchPlan {
  explicit PatchPlan(ArenaLayout arena) : arena_after(std::move(arena)) {}

  std::string name;
  bool replace = false;  // klp_patch.replace (hvpatch treats it as a plain patch for now)
  std::vector<FunctionPlan> functions;
  std::vector<ArenaAllocation> allocations;
  std::vector<ArenaWrite> arena_writes;
  std::vector<PteWrite> pte_writes;
  // The allocator once this plan is committed: persist it with the ledger. Untouched on failure.
  ArenaLayout arena_after;
  // Code no task may be executing when the trampolines switch: each old function. For a stacked
  // function the commit must add the code of the patch below (its size is in the ledger).
  std::vector<AddressRange> busy;
  std::size_t fentry_nops = 0;
  // With PlanOptions::shadow: where the shadow module was put (its bytes are in arena_writes;
  // the commit links it with LinkShadowModule inside the pause).
  std::optional<ShadowPlacement> shadow;
  std::size_t shadow_symbols = 0;
  KernelTables tables;  // __ex_table sorted, .altinstructions applied (with a shadow module)
  JumpTable jump_table;  // __jump_table sorted, sites in their keys' state (with a shadow module)
};

struct PlanOptions {
  // Give the patch a shadow module (shadow_module.h): THIS_MODULE resolves to it, and its
  // struct module and tables are part of the arena data. Null: none (THIS_MODULE is refused).
  const ShadowModuleLayout* shadow = nullptr;
  // The guest's boot_cpu_data.x86_capability, for the patch's alternatives (kernel_tables.h).
  CpuFeatures cpu;
  // The guest's static keys' state, for the patch's jump labels (static_keys.h).
  KeyReader read_key;
};

// Run-pre matching (patcher/run_pre.h) of one function: every occurrence of `record.name` in
// `record.object` (kallsyms may hold several static functions of one name) is read from the
// guest and compared with the build's before code. Exactly one must match; the result is that one,
// with its sympos (0 when the name is unique).
// Errors: kFailedPrecondition "run-pre: 'pipe_fasync' in 'vmlinux' differs from the build at offset
// 0x1c (guest has 0x41, the build 0x40)" when none matches (with several, each is named), or
// "... matches 2 functions of that name" when more than one does; the resolver's and the reader's.
struct RunPreChoice {
  ResolvedSymbol symbol;
  std::uint64_t sympos = 0;
};
Result<RunPreChoice> SelectByRunPre(const RunPreFunction& record, const SymbolResolver& resolver,
                                    const GuestCodeReader& reader);

// Builds the plan for `module` on top of the arena's current state `arena`:
//  1. SelectImage and Link (relocated against `resolver`), into freshly allocated arena pages;
//  2. each old function: resolved in its object (Resolve(old_name, object, old_sympos)), or, for a
//     module built by `hvpatch build` (it carries kRunPreSection), chosen by run-pre matching
//     (SelectByRunPre: the before code must equal the guest's); its entry
//     read (kEntryReadSize bytes) and classified (CheckPatchable), the trampoline's reach checked.
// Errors (prefixed "planning patch 'NAME'"): those of SelectImage and Link; the resolver's for an
// old function ("function 'port_debugfs_show' in 'virtio_console': ..."), e.g. kNotFound when the
// object's module is not loaded (livepatch would defer it; hvpatch refuses); kFailedPrecondition
// when an entry is not patchable, or two functions resolve to one address; kInvalidArgument when
// an old function is a per-cpu variable or too small for a 5-byte jump; kUnavailable when the
// arena is full; the reader's errors.
// With options.shadow, also the errors of BuildShadowModule.
Result<PatchPlan> BuildPlan(const PatchModule& module, const SymbolResolver& resolver,
                            const GuestCodeReader& reader, const ArenaLayout& arena,
                            const PlanOptions& options = {});

}  // namespace hv::patcher
