// The hvpatch command table (kvmtool's builtin-*.c pattern): one file per subcommand, each
// exporting a Command, all listed in commands.cpp. A command turns its argv into one typed
// request for the core, runs it, and renders the result as text or JSON.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::cli {

// Exit codes (documented in `hvpatch --help`).
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitBusy = 3;

// Options before the command name, shared by every command.
struct GlobalOptions {
  std::string uri = "qemu:///system";  // -c: libvirt connection URI
  bool json = false;                   // --json: one JSON object on stdout
  std::string state_dir;               // --state-dir: ledgers and locks (default /var/lib/hvpatch)
  int tries = 5;                       // --tries: stack-check attempts (Ksplice: 5)
  int retry_delay_ms = 1000;           // --retry-delay-ms: back-off between attempts (Ksplice: 1 s)
  int lock_wait_ms = 10000;            // --lock-wait-ms: how long to wait for another hvpatch
  std::string system_map;              // --system-map: last-resort symbols for the guest's build
  std::optional<std::uint64_t> kaslr_offset;  // --kaslr-offset: for --system-map (default: vmcoreinfo)
  bool agent = true;                   // --no-agent: do not talk to the guest agent
  int agent_timeout_ms = 3000;         // --agent-timeout-ms: sync wait (no reply: no agent)
  bool attach_arena = true;            // --no-attach-arena: refuse a VM without the arena device
};

struct Command {
  const char* name;
  // Runs the command; `args` are the words after the command name. Returns the exit code.
  int (*run)(const GlobalOptions& options, const std::vector<std::string>& args);
  const char* usage;    // "apply DOMAIN PATCH.ko"
  const char* summary;  // one line for `hvpatch --help`
};

const std::vector<Command>& Commands();

// Renders an error: to stderr as "hvpatch: MESSAGE" (+ "hint: ...") or, with --json, as
// {"error": {"code": ..., "message": ..., "hint": ...}} on stdout. Returns the exit code for it.
int ReportError(const GlobalOptions& options, const Status& status);
int UsageError(const Command& command, std::string_view problem);

}  // namespace hv::cli
