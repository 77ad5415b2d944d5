// What the host learns from hvpatch-agent, as plain validated C++ values (no protobuf types), for
// the patcher and the CLI. Produced by agent_client.h / response_decoder.h.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hv::agent {

struct AgentHello {
  std::string release;             // uname -r
  std::vector<uint8_t> build_id;   // GNU build-id of the running kernel; empty when the agent had none
  std::string agent_version;
  std::vector<std::string> capabilities;  // "kallsyms", "verify", ..., "sysfs_abi=6.1"
  uint32_t protocol_version = 0;

  bool HasCapability(std::string_view name) const {
    for (const auto& c : capabilities) if (c == name) return true;
    return false;
  }
};

struct KernelSymbol {
  uint64_t address = 0;
  char type = '?';       // nm letter
  std::string name;
  std::string module;    // empty for vmlinux
};

struct LivepatchFunction {
  std::string name;
  uint32_t sympos = 0;
};

struct LivepatchObject {
  std::string name;  // "vmlinux" or a module name
  bool patched = false;
  std::vector<LivepatchFunction> functions;
};

struct LivepatchPatch {
  std::string name;
  bool enabled = false;
  bool transition = false;
  bool replace = false;
  uint32_t stack_order = 0;
  std::vector<LivepatchObject> objects;
};

struct LivepatchState {
  bool available = false;  // false: the guest kernel has no /sys/kernel/livepatch
  std::vector<LivepatchPatch> patches;
};

struct FtraceEntry {
  std::string function;
  std::string module;
  uint32_t refcount = 0;
  std::string detail;  // flags, trampoline and ops as tracefs prints them
};

struct FtraceState {
  bool available = false;  // false: tracefs is not mounted in the guest
  std::vector<FtraceEntry> entries;
};

struct PublishResult {
  std::string root;       // e.g. /run/hvpatch/livepatch
  std::string sysfs_abi;  // "6.1", "6.11", "6.13"
};

}  // namespace hv::agent
