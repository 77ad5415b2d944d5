#include "cli/agent_link.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "base/hex.h"

namespace hv::cli {

std::vector<agent::LivepatchPatch> PublishedTree(const patcher::Ledger& ledger) {
  std::vector<agent::LivepatchPatch> out;
  for (std::size_t i = 0; i < ledger.patches.size(); ++i) {
    const auto& p = ledger.patches[i];
    if (p.state != patcher::PatchState::kApplied) continue;
    agent::LivepatchPatch lp;
    lp.name = p.name;
    lp.enabled = true;
    lp.transition = false;  // hvpatch switches everything in one pause: never in transition
    lp.replace = p.replace;
    lp.stack_order = static_cast<std::uint32_t>(out.size() + 1);
    for (const auto& f : p.functions) {
      auto obj = std::find_if(lp.objects.begin(), lp.objects.end(),
                              [&](const agent::LivepatchObject& o) { return o.name == f.object; });
      if (obj == lp.objects.end()) {
        lp.objects.push_back({f.object, true, {}});
        obj = lp.objects.end() - 1;
      }
      obj->functions.push_back({f.name, static_cast<std::uint32_t>(std::max<std::uint64_t>(f.sympos, 1))});
    }
    out.push_back(std::move(lp));
  }
  return out;
}

Status AgentLink::CheckNotOwned(std::span<const patcher::KlpFunction> functions) {
  HV_ASSIGN_OR_RETURN(agent::LivepatchState lp, client_->GetLivepatchState(false));
  for (const auto& f : functions) {
    for (const auto& p : lp.patches) {
      for (const auto& o : p.objects) {
        if (o.name != f.object) continue;
        for (const auto& g : o.functions) {
          if (g.name == f.old_name) {
            return FailedPrecondition("function '" + f.old_name + "' is already patched in the guest by livepatch module '" +
                                      p.name + "'")
                .WithHint("disable it in the guest first: echo 0 > /sys/kernel/livepatch/" + p.name + "/enabled");
          }
        }
      }
    }
  }
  auto ft = client_->GetFtraceState();
  if (ft.ok()) {
    for (const auto& f : functions) {
      for (const auto& e : ft->entries) {
        if (e.function == f.old_name && (e.module.empty() ? f.object == "vmlinux" : e.module == f.object)) {
          return FailedPrecondition("function '" + f.old_name + "' is traced by ftrace in the guest (" + e.detail + ")")
              .WithHint("stop tracing it in the guest first");
        }
      }
    }
  }
  return Status::Ok();
}

Result<bool> AgentLink::Confirm(const patcher::LedgerPatch& patch) {
  for (const auto& f : patch.functions) {
    HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> seen,
                        client_->Verify(f.site, static_cast<std::uint32_t>(f.trampoline.size())));
    if (seen != f.trampoline) return false;
  }
  return true;
}

Result<std::string> AgentLink::KallsymsText() {
  HV_ASSIGN_OR_RETURN(std::vector<agent::KernelSymbol> syms, client_->Kallsyms());
  std::string text;
  for (const auto& k : syms) {
    char addr[20];
    std::snprintf(addr, sizeof addr, "%016llx", static_cast<unsigned long long>(k.address));
    text += std::string(addr) + " " + k.type + " " + k.name;
    if (!k.module.empty()) text += "\t[" + k.module + "]";
    text += "\n";
  }
  return text;
}

Status AgentLink::Publish(const patcher::Ledger& ledger) {
  auto r = client_->PublishState(PublishedTree(ledger));
  return r.ok() ? Status::Ok() : r.status();
}

Result<std::vector<std::string>> AgentLink::CompareWithLedger(const patcher::Ledger& ledger) {
  HV_ASSIGN_OR_RETURN(agent::LivepatchState tree, client_->GetLivepatchState(true));
  std::vector<std::string> diffs;
  const auto want = PublishedTree(ledger);
  std::map<std::string, const agent::LivepatchPatch*> have;
  for (const auto& p : tree.patches) have[p.name] = &p;
  for (const auto& w : want) {
    auto it = have.find(w.name);
    if (it == have.end()) {
      diffs.push_back("patch '" + w.name + "' is in the ledger but not in the guest's tree");
      continue;
    }
    if (!it->second->enabled) diffs.push_back("patch '" + w.name + "' is not enabled in the guest's tree");
    std::set<std::string> theirs, ours;
    for (const auto& o : it->second->objects)
      for (const auto& f : o.functions) theirs.insert(o.name + "/" + f.name + "," + std::to_string(f.sympos));
    for (const auto& o : w.objects)
      for (const auto& f : o.functions) ours.insert(o.name + "/" + f.name + "," + std::to_string(f.sympos));
    if (theirs != ours) diffs.push_back("patch '" + w.name + "' lists other functions in the guest's tree");
    have.erase(it);
  }
  for (const auto& [name, p] : have) diffs.push_back("patch '" + name + "' is in the guest's tree but not in the ledger");
  return diffs;
}

}  // namespace hv::cli
