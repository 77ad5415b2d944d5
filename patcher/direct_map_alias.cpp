#include "patcher/direct_map_alias.h"

#include <cstring>
#include <string>

#include "base/hex.h"
#include "vmm/page_walk.h"

namespace hv::patcher {
namespace {

namespace pte = vmm::pte;
constexpr std::uint64_t k2M = 2ull << 20;
constexpr std::uint64_t kAddr2M = pte::kAddrMask & ~(k2M - 1);
// _KERNPG_TABLE: what pud_bad()/pmd_bad() accept for a table entry.
constexpr std::uint64_t kTableFlags = pte::kPresent | pte::kWritable | pte::kAccessed | pte::kDirty;
constexpr std::uint64_t kLeafFlags =
    pte::kPresent | pte::kAccessed | pte::kDirty | pte::kHuge | pte::kGlobal | pte::kNoExecute;

std::uint64_t Index(std::uint64_t va, int shift) { return (va >> shift) & 511; }

}  // namespace

std::vector<std::uint8_t> DirectMapPmdTable(const DirectMapAlias& a) {
  std::vector<std::uint8_t> page(kArenaPageSize, 0);
  for (std::uint64_t slot = a.arena_gpa & ~(k2M - 1); slot < a.arena_gpa + a.arena_size; slot += k2M) {
    const std::uint64_t e = slot | kLeafFlags;
    std::memcpy(page.data() + 8 * Index(a.page_offset_base + slot, 21), &e, 8);
  }
  return page;
}

Status LinkDirectMapAlias(KernelWords& mem, const DirectMapAlias& a) {
  for (std::uint64_t slot = a.arena_gpa & ~(k2M - 1); slot < a.arena_gpa + a.arena_size; slot += k2M) {
    const std::uint64_t va = a.page_offset_base + slot;
    // The top levels must exist: PGD (and P4D with 5 levels) entries are what a new process
    // copies, so one added now would not reach running processes.
    std::uint64_t table_va = a.pgd_va;
    for (int shift = a.la57 ? 48 : 39; shift >= 39; shift -= 9) {
      HV_ASSIGN_OR_RETURN(std::uint64_t e, mem.Read64(table_va + 8 * Index(va, shift)));
      if ((e & pte::kPresent) == 0 || (e & pte::kHuge)) {
        return Unimplemented("the guest's direct map has no " + std::string(shift == 48 ? "PGD" : a.la57 ? "P4D" : "PGD") +
                             " table entry for " + Hex(va) + " (the arena at " + Hex(slot) + ")");
      }
      table_va = a.page_offset_base + (e & pte::kAddrMask);
    }
    const std::uint64_t pud_va = table_va + 8 * Index(va, 30);
    HV_ASSIGN_OR_RETURN(std::uint64_t pud, mem.Read64(pud_va));
    if ((pud & pte::kPresent) == 0) {
      // The whole GiB is ours to describe: hang our table in (it holds every slot's leaf).
      HV_RETURN_IF_ERROR(mem.Write64(pud_va, (a.table_gpa & pte::kAddrMask) | kTableFlags));
      continue;
    }
    if (pud & pte::kHuge) {
      return Unimplemented("the guest's direct map maps " + Hex(va) + " with a 1 GiB page already");
    }
    const std::uint64_t table = pud & pte::kAddrMask;
    if (table == (a.table_gpa & pte::kAddrMask)) continue;  // ours, from an earlier apply
    const std::uint64_t pmd_va = a.page_offset_base + table + 8 * Index(va, 21);
    HV_ASSIGN_OR_RETURN(std::uint64_t pmd, mem.Read64(pmd_va));
    const std::uint64_t leaf = slot | kLeafFlags;
    if ((pmd & pte::kPresent) == 0) {
      HV_RETURN_IF_ERROR(mem.Write64(pmd_va, leaf));
    } else if (pmd != leaf) {
      return Unimplemented("the guest's direct map maps " + Hex(va) + " already (PMD entry " + Hex(pmd) + ")");
    }
  }
  return Status::Ok();
}

Result<std::vector<PhysWrite>> PlanDirectMapAlias(ArenaLayout& layout, DirectMapAlias* alias) {
  std::vector<PhysWrite> out;
  for (const auto& a : layout.allocations()) {
    if (a.owner == kDirectMapOwner) {
      alias->table_gpa = layout.Gpa(a.offset());
      return out;
    }
  }
  HV_ASSIGN_OR_RETURN(ArenaAllocation page, layout.Allocate(kDirectMapOwner, 1, MemoryClass::kRodata));
  alias->table_gpa = layout.Gpa(page.offset());
  out.push_back({alias->table_gpa, DirectMapPmdTable(*alias), "the arena's direct-map PMD table"});
  const std::uint64_t value = layout.PteValue(page.first_page);
  std::vector<std::uint8_t> e(8);
  std::memcpy(e.data(), &value, 8);
  out.push_back({layout.Gpa(std::uint64_t{page.first_page} * 8), e, "arena PTE " + std::to_string(page.first_page)});
  return out;
}

}  // namespace hv::patcher
