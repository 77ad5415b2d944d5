// Fleet runs: `apply --all PATCH.ko`, `apply --domains a,b,c PATCH.ko`, and the same for revert.
// A bounded pool (--parallel N, default min(8, domains)) runs one `hvpatch --json COMMAND DOMAIN
// ARG` child per domain: each child takes that domain's VM lock, as a single run does, and a
// crash or hang of one domain's run cannot take the others down. One result per domain
// (FleetOutcome), rendered once at the end as a table, or as JSON lines (virsh-like rendering;
// libvirt hooks and fleet code in CONVENTIONS.md).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cli/command.h"

namespace hv::cli {

// True when `args` is a fleet form (the first word is --all or --domains).
bool IsFleetForm(const std::vector<std::string>& args);

// Runs `command_name` (apply or revert) over the fleet `args` name: [--all | --domains LIST]
// [--parallel N] ARG. Returns the exit code: 0 when every domain succeeded or was skipped (its
// guest runs another kernel), 3 when some were busy and none failed, 1 otherwise.
int RunFleet(const GlobalOptions& options, const Command& command, const std::vector<std::string>& args);

// One domain's outcome, classified from its child's JSON.
struct FleetOutcome {
  std::string domain;
  std::string result;  // "ok", "busy", "skipped", "failed"
  std::string detail;  // the error message, or the confirmation
  std::uint64_t pause_us = 0;
  int tries = 0;
  bool confirmed = false;
  int exit_code = 0;
};

// Classifies a child's exit code and stdout (pure; tested without VMs).
FleetOutcome ClassifyFleetChild(const std::string& domain, int exit_code, const std::string& out);

}  // namespace hv::cli
