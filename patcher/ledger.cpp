#include "patcher/ledger.h"

namespace hv::patcher {

std::string_view PatchStateName(PatchState s) {
  switch (s) {
    case PatchState::kApplying: return "applying";
    case PatchState::kApplied: return "applied";
    case PatchState::kReverting: return "reverting";
  }
  return "unknown";
}

LedgerPatch* Ledger::Find(std::string_view name) {
  for (auto& p : patches)
    if (p.name == name) return &p;
  return nullptr;
}

const LedgerPatch* Ledger::Find(std::string_view name) const {
  return const_cast<Ledger*>(this)->Find(name);
}

const LedgerPatch* Ledger::TopAt(std::uint64_t site) const {
  for (auto it = patches.rbegin(); it != patches.rend(); ++it) {
    for (const auto& f : it->functions)
      if (f.site == site) return &*it;
  }
  return nullptr;
}

const LedgerPatch* Ledger::ReplacedBy(std::string_view name) const {
  for (const auto& p : patches) {
    for (const auto& r : p.replaces)
      if (r == name) return &p;
  }
  return nullptr;
}

}  // namespace hv::patcher
