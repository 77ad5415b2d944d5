// Turns agent responses into the plain values of agent_types.h. Every field is hostile input: each
// string and count is bounded, text must be printable, and anything out of bounds is refused with
// kInvalidArgument naming the field, never truncated silently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "guest-agent/agent_types.h"
#include "guest-agent/hvpatch_agent.pb.h"

namespace hv::agent {

// Bounds on what an agent may send (the agent side has its own, equal or tighter).
inline constexpr size_t kMaxReleaseLength = 64;        // __NEW_UTS_LEN
inline constexpr size_t kMaxBuildIdLength = 64;        // 20 for SHA-1, room for others
inline constexpr size_t kMaxCapabilities = 64;
inline constexpr size_t kMaxShortText = 64;            // versions, capabilities, module names
inline constexpr size_t kMaxSymbolName = 512;          // KSYM_NAME_LEN
inline constexpr size_t kMaxPatches = 256;
inline constexpr size_t kMaxObjectsPerPatch = 256;
inline constexpr size_t kMaxFunctionsPerObject = 4096;
inline constexpr size_t kMaxFtraceEntries = 200000;
inline constexpr size_t kMaxDetail = 1024;
inline constexpr size_t kMaxPath = 4096;
inline constexpr size_t kMaxErrorMessage = 1024;
inline constexpr uint32_t kMaxVerifyLength = 4096;

// The agent's Response.error as a Status with the agent's code and a sanitized message; Ok when
// the response carries no error.
Status DecodeError(const hvpatch::agent::Response& response);

Result<AgentHello> DecodeHello(const hvpatch::agent::HelloResponse& hello);

// Appends a chunk's symbols to `out`, refusing the chunk when `out` would exceed `max_symbols`.
Status AppendKallsyms(const hvpatch::agent::KallsymsChunk& chunk, size_t max_symbols,
                      std::vector<KernelSymbol>* out);

Result<LivepatchState> DecodeLivepatchState(const hvpatch::agent::LivepatchState& state);
Result<FtraceState> DecodeFtraceState(const hvpatch::agent::FtraceState& state);

// The bytes read at `address`; the reply must echo the address and carry exactly `length` bytes.
Result<std::vector<uint8_t>> DecodeVerify(const hvpatch::agent::VerifyResponse& verify,
                                          uint64_t address, uint32_t length);

Result<PublishResult> DecodePublish(const hvpatch::agent::PublishStateResponse& publish);

// The wire form of a patch for PublishState.
hvpatch::agent::Patch EncodePatch(const LivepatchPatch& patch);

}  // namespace hv::agent
