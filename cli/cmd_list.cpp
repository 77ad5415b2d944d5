// hvpatch list DOMAIN: the ledger's patches in stack order, each site checked against the guest.
#include <cstdio>
#include <ctime>
#include <optional>
#include <nlohmann/json.hpp>

#include "base/hex.h"
#include "cli/command.h"
#include "cli/patch_set_record.h"
#include "cli/session.h"

namespace hv::cli {

extern const Command kListCommand;

static int RunList(const GlobalOptions& o, const std::vector<std::string>& args) {
  if (args.size() != 1) return UsageError(kListCommand, "expected DOMAIN");
  // Takes the lock too: a list in the middle of another tool's apply would read a half state.
  auto session = OpenSession(o, args[0], true);
  if (!session.ok()) return ReportError(o, session.status());
  auto patches = (*session)->engine->List();
  if (!patches.ok()) return ReportError(o, patches.status());
  auto current = (*session)->engine->CurrentLedger();
  if (!current.ok()) return ReportError(o, current.status());
  // The agent's tree next to the ledger.
  std::optional<std::vector<std::string>> diffs;
  std::string agent_note = (*session)->agent_note;
  if ((*session)->agent) {
    auto ledger = (*session)->ledger->Load();
    auto d = ledger.ok() ? (*session)->agent->CompareWithLedger(*ledger) : Result<std::vector<std::string>>(ledger.status());
    if (d.ok()) diffs = std::move(*d);
    else agent_note = "agent: " + d.status().message();
  }
  // A libvirt domain's patch set (what the hook re-applies at start) beside what is live.
  bool is_domain = false;
  const std::vector<std::string> set = PatchSetNames(o, **session, &is_domain);
  if (o.json) {
    nlohmann::json j = {{"patches", nlohmann::json::array()}, {"recovered", (*session)->recovery}};
    if (is_domain) j["patch_set"] = set;
    // Which boot the ledger describes (see docs/transaction.md), and the ledgers of earlier
    // boots it replaced.
    j["boot"] = {{"kernel_build_id", current->kernel_build_id}, {"kaslr_offset", Hex(current->kaslr_offset)},
                 {"page_table_gpa", Hex(current->page_table_gpa)},
                 {"mark", current->boot_mark ? nlohmann::json(Hex(current->boot_mark)) : nlohmann::json(nullptr)}};
    j["archived_ledgers"] = nlohmann::json::array();
    for (const auto& a : current->archived) {
      j["archived_ledgers"].push_back(
          {{"path", a.path}, {"reason", a.reason}, {"archived_at", a.at}, {"patches", a.patches}});
    }
    for (const auto& p : *patches) {
      nlohmann::json jp = {{"name", p.patch.name},
                           {"state", std::string(patcher::PatchStateName(p.patch.state))},
                           {"applied_at", p.patch.applied_at}, {"consistent", p.consistent},
                           {"functions", nlohmann::json::array()}};
      jp["replace"] = p.patch.replace;
      jp["replaces"] = p.patch.replaces;  // the patches it took over by atomic replace
      for (std::size_t i = 0; i < p.patch.functions.size(); ++i) {
        const auto& f = p.patch.functions[i];
        jp["functions"].push_back({{"name", f.name}, {"object", f.object}, {"site", Hex(f.site)},
                                   {"new_addr", Hex(f.new_addr)},
                                   {"live", p.sites[i].holds_trampoline}});
      }
      j["patches"].push_back(jp);
    }
    if (diffs) {
      j["agent"] = {{"in_sync", diffs->empty()}, {"differences", *diffs}};
    } else {
      j["agent"] = nullptr;
      j["agent_note"] = agent_note;
    }
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  if (patches->empty()) std::printf("no hvpatch patches on %s\n", args[0].c_str());
  for (const auto& p : *patches) {
    char when[32] = "?";
    const std::time_t t = p.patch.applied_at;
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
    std::printf("%s  %s  applied %s UTC%s\n", p.patch.name.c_str(),
                std::string(patcher::PatchStateName(p.patch.state)).c_str(), when,
                p.consistent ? "" : "  MISMATCH: the guest does not hold every trampoline");
    if (!p.patch.replaces.empty()) {
      std::string names;
      for (const auto& n : p.patch.replaces) names += " " + n;
      std::printf("  replaced (atomic replace):%s\n", names.c_str());
    }
    for (std::size_t i = 0; i < p.patch.functions.size(); ++i) {
      const auto& f = p.patch.functions[i];
      std::printf("  %s %s %s -> %s%s\n", f.object.c_str(), f.name.c_str(), Hex(f.site).c_str(),
                  Hex(f.new_addr).c_str(), p.sites[i].holds_trampoline ? "" : " (not live: covered by a later patch or changed)");
    }
  }
  if (is_domain) {
    std::string names;
    for (const auto& n : set) names += " " + n;
    std::printf("domain patch set (re-applied at start):%s\n", set.empty() ? " (empty)" : names.c_str());
  }
  if (diffs && diffs->empty()) std::printf("guest agent's tree: in sync with the ledger\n");
  if (diffs) for (const auto& d : *diffs) std::printf("MISMATCH (guest agent's tree): %s\n", d.c_str());
  if (!diffs) std::printf("guest agent's tree: not compared (%s)\n", agent_note.c_str());
  return kExitOk;
}

const Command kListCommand = {"list", RunList, "list DOMAIN",
                              "patches applied to the VM, in stack order, checked against the guest"};

}  // namespace hv::cli
