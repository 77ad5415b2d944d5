// The engine's GuestConfirmation over the real agent (guest-agent/agent_client.h): confirm a
// patch from inside the guest (Verify through /proc/kcore), publish the sysfs-like tree, refuse
// functions the guest itself owns, and compare the agent's tree with the ledger for `list`.
// Everything the agent says is already bounded by AgentClient; this only interprets it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "guest-agent/agent_client.h"
#include "patcher/patch_engine.h"

namespace hv::cli {

class AgentLink : public patcher::GuestConfirmation {
 public:
  explicit AgentLink(std::unique_ptr<agent::AgentClient> client) : client_(std::move(client)) {}

  Status CheckNotOwned(std::span<const patcher::KlpFunction> functions) override;
  Result<bool> Confirm(const patcher::LedgerPatch& patch) override;
  Status Publish(const patcher::Ledger& ledger) override;

  // The guest's /proc/kallsyms as text ("ADDR T NAME [MODULE]" lines), for GuestKernel's fallback.
  Result<std::string> KallsymsText();

  // One line per difference between the ledger and the agent's published tree (empty: they
  // agree). kUnavailable etc. when the agent cannot be asked.
  Result<std::vector<std::string>> CompareWithLedger(const patcher::Ledger& ledger);

 private:
  std::unique_ptr<agent::AgentClient> client_;
};

// The tree the agent should publish for `ledger` (applied patches; sympos 0 shows as 1, as in
// livepatch's sysfs).
std::vector<agent::LivepatchPatch> PublishedTree(const patcher::Ledger& ledger);

}  // namespace hv::cli
