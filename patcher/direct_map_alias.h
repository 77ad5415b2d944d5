// A read-only alias of the arena in the guest kernel's direct map, so the kernel's own text
// patching can write arena code (static keys, static_keys.h).
//
// Why: when a static key the patch's code uses is switched in the guest, jump_label_update()
// rewrites the patch's sites with text_poke_bp(). For an address outside the core kernel text,
// __text_poke() (arch/x86/kernel/alternative.c, 6.1) takes the page from vmalloc_to_page(),
// which walks init_mm's page tables: it refuses a PMD entry that is not exactly
// _KERNPG_TABLE (P|RW|A|D: the arena's PMD entry carries D for that, ArenaLayout::PmdEntry), and
// reads the PTE through pte_offset_kernel(), i.e. through the direct map at __va(the PTE table's
// physical address). The PTE table is the arena's page 0, in the ivshmem BAR, which the direct
// map (RAM only) does not cover: the walk faults. Without both, the first guest toggle of such a
// key ends in "kernel BUG at arch/x86/kernel/alternative.c:1384" (seen on the test guest).
// The same direct-map read is what made ptdump (CONFIG_DEBUG_WX, debugfs page_tables) fault on
// the arena (docs/libvirt.md).
//
// What: the 2 MiB slot(s) of guest-physical space holding the arena are mapped at
// page_offset_base + gpa by 2 MiB leaf PMD entries, present, read-only, no-execute, global. The
// PMD table is one arena page of its own (kDirectMapOwner, never freed) hung into the direct
// map's PUD page when that 1 GiB has no table yet; when it has one (guest RAM in the same GiB),
// the leaf goes into the guest's table. Only not-present entries are ever written (no TLB
// flush is needed), and nothing is ever removed: the alias lives as long as the arena mapping.
// The alias is read-only: the guest cannot write the arena's page tables or code through it.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "base/status.h"
#include "patcher/arena_layout.h"
#include "patcher/commit.h"
#include "patcher/kernel_words.h"

namespace hv::patcher {

// Arena owner of the alias's PMD table page (no patch name has a '-').
inline constexpr std::string_view kDirectMapOwner = "hvpatch-direct-map";

struct DirectMapAlias {
  std::uint64_t page_offset_base = 0;  // the guest's (KASLR) direct map base
  std::uint64_t pgd_va = 0;            // init_top_pgt (the PML5 table with `la57`)
  bool la57 = false;                   // 5-level paging (CR4.LA57)
  std::uint64_t arena_gpa = 0, arena_size = 0;
  std::uint64_t table_gpa = 0;  // the arena page that holds our PMD table
};

// The PMD table page: a leaf entry for each 2 MiB slot that [arena_gpa, arena_gpa + size)
// touches, at its index for page_offset_base + gpa.
std::vector<std::uint8_t> DirectMapPmdTable(const DirectMapAlias& a);

// In the pause: makes page_offset_base + [arena_gpa, arena_gpa + size) map the arena (read-only)
// in the guest's direct map, writing only entries that are not present. Nothing to do when it
// is there already. Errors: kUnimplemented when the direct map has no PGD (or, with 5 levels,
// P4D) entry for it (a new top-level entry would not reach the page tables of running
// processes), or a 2 MiB slot of it is mapped to something else; memory errors.
Status LinkDirectMapAlias(KernelWords& mem, const DirectMapAlias& a);

// For the engine: when `layout` has no alias page yet, allocates it (kDirectMapOwner, rodata)
// and returns the physical writes that fill it and its PTE; `alias->table_gpa` is set either
// way. Errors: the allocator's (arena full).
Result<std::vector<PhysWrite>> PlanDirectMapAlias(ArenaLayout& layout, DirectMapAlias* alias);

}  // namespace hv::patcher
