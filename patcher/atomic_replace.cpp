#include "patcher/atomic_replace.h"

#include <algorithm>
#include <set>

#include "base/hex.h"

namespace hv::patcher {

Result<AtomicReplacePlan> PlanAtomicReplace(std::span<const LedgerPatch> replaced, const ArenaLayout& layout,
                                            std::span<const std::uint64_t> new_sites) {
  AtomicReplacePlan plan;
  const std::set<std::uint64_t> taken(new_sites.begin(), new_sites.end());
  // Per site, bottom to top: the first patch's original is the kernel's, the last one's
  // trampoline is what the guest holds now.
  struct Site {
    std::string function;
    std::uint64_t old_addr = 0, old_size = 0;
    std::vector<std::uint8_t> original, top;
  };
  std::map<std::uint64_t, Site> sites;
  std::vector<std::uint64_t> order;  // first-seen order, for stable restores
  for (const LedgerPatch& p : replaced) {
    if (p.state != PatchState::kApplied) {
      return FailedPrecondition("patch '" + p.name + "' is " + std::string(PatchStateName(p.state)) +
                                ", it cannot be replaced")
          .WithHint("run any hvpatch command on the VM (e.g. list) to recover the interrupted transaction first");
    }
    plan.replaced.push_back(p.name);
    for (const LedgerFunction& f : p.functions) {
      auto [it, fresh] = sites.try_emplace(f.site);
      Site& s = it->second;
      if (fresh) {
        s = {f.name, f.old_addr, f.old_size, f.original, f.trampoline};
        order.push_back(f.site);
        continue;
      }
      // Stacked on an earlier patch: it found that patch's trampoline there.
      if (f.original != s.top) {
        return FailedPrecondition("patch '" + p.name + "' found " + HexBytes(f.original) + " at " + Hex(f.site) +
                                  " ('" + f.name + "'), but the patch below it wrote " + HexBytes(s.top))
            .WithHint("the ledger does not describe one stack of patches; revert the patches one by one instead");
      }
      s.top = f.trampoline;
    }
    for (const ArenaAllocation& a : layout.allocations()) {
      if (a.owner == p.name && a.memory == MemoryClass::kCode) {
        plan.busy.push_back({layout.Va(a.offset()), layout.Va(a.offset()) + a.size(), "code of '" + p.name + "'"});
      }
    }
  }
  for (std::uint64_t site : order) {
    const Site& s = sites[site];
    if (taken.count(site) != 0) {
      plan.originals[site] = s.original;
      plan.current[site] = s.top;
      continue;
    }
    plan.restores.push_back({site, s.top, s.original, "original entry of '" + s.function + "' (atomic replace)"});
    plan.restored_functions.push_back(s.function);
    plan.restored_code.push_back({s.old_addr, s.old_addr + std::max<std::uint64_t>(s.old_size, 1), s.function});
  }
  return plan;
}

}  // namespace hv::patcher
