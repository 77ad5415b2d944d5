// The host side of hvpatch-agent: connects to the unix socket behind the guest's virtio-serial port
// (QEMU's chardev socket), synchronizes, and makes typed calls.
//
// Everything the agent sends is hostile input: every wait has a deadline, every frame and field is
// bounded (response_decoder.h), and a garbage-spewing, giant-length or silent agent yields an
// error, never a hang or a crash. After a timeout or a malformed frame the connection is marked
// unsynchronized and the next call runs the sync handshake again (qemu-ga's guest-sync-delimited);
// after end of file the next call reconnects. Not thread-safe: one call at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "guest-agent/agent_types.h"
#include "guest-agent/wire_format.h"

namespace hvpatch::agent {
class Request;
class Response;
}  // namespace hvpatch::agent

namespace hv::agent {

class Deadline;

struct AgentClientOptions {
  int connect_timeout_ms = 1000;
  // The agent answers a sync in milliseconds even under TCG; longer means no agent.
  int sync_timeout_ms = 3000;
  // Per reply (per chunk for Kallsyms).
  int call_timeout_ms = 10000;
  // The whole Kallsyms stream: reading /proc/kallsyms under TCG takes seconds.
  int kallsyms_timeout_ms = 120000;
  size_t max_symbols = 2000000;
};

class AgentClient {
 public:
  // Connects to `socket_path` and runs the sync handshake.
  // kUnavailable: no socket, connection refused, or no sync reply within sync_timeout_ms (QEMU
  // accepts the connection even when no agent runs in the guest).
  static Result<std::unique_ptr<AgentClient>> Connect(const std::string& socket_path,
                                                      const AgentClientOptions& options = {});
  ~AgentClient();
  AgentClient(const AgentClient&) = delete;
  AgentClient& operator=(const AgentClient&) = delete;

  // Every call below has the same error contract, messages prefixed with
  // "agent at 'PATH': REQUEST: ":
  //   kUnavailable        the connection is gone or cannot be re-established (no agent)
  //   kDeadlineExceeded   no (complete) reply in time: the agent is stuck or was killed mid-request
  //   kInvalidArgument    the agent sent something malformed or out of bounds
  //   other codes         the agent's own error for the request (e.g. kNotFound from Verify)

  // Runs the sync handshake now (calls do it by themselves when needed).
  Status Sync();

  Result<AgentHello> Hello();
  // /proc/kallsyms, streamed in chunks; at most options.max_symbols.
  Result<std::vector<KernelSymbol>> Kallsyms();
  // The guest's own /sys/kernel/livepatch, or with `published` the agent's parity tree of
  // hvpatch patches (/run/hvpatch/livepatch).
  Result<LivepatchState> GetLivepatchState(bool published = false);
  // tracefs enabled_functions.
  Result<FtraceState> GetFtraceState();
  // `length` (1..4096) bytes at kernel virtual address `address`, read by the agent through
  // /proc/kcore. kNotFound when the agent finds the range unmapped.
  Result<std::vector<uint8_t>> Verify(uint64_t address, uint32_t length);
  // Replaces the agent's parity tree with exactly `patches` (an empty list removes every patch
  // directory). The agent refuses bad names with kInvalidArgument and changes nothing then.
  Result<PublishResult> PublishState(const std::vector<LivepatchPatch>& patches);

  const std::string& socket_path() const { return path_; }
  bool synced() const { return synced_; }

 private:
  AgentClient(std::string path, const AgentClientOptions& options);

  Status Open();
  void Close();
  // Connects if needed and runs the handshake; errors carry no "agent at" prefix.
  Status DoSync();
  // Connects if needed and syncs if needed.
  Status Ready();
  Status SendRequest(hvpatch::agent::Request* request, const Deadline& deadline);
  // Reads the next response, which must be for `id`.
  Result<hvpatch::agent::Response> ReadResponse(uint64_t id, const Deadline& deadline, int timeout_ms);
  // Sends `request` and reads its (single) response, errors of the agent included.
  Result<hvpatch::agent::Response> Call(hvpatch::agent::Request* request);
  Status Context(std::string_view what, const Status& s) const;

  std::string path_;
  AgentClientOptions options_;
  int fd_ = -1;
  bool synced_ = false;
  uint64_t next_id_ = 1;
  FrameDecoder decoder_;
  std::mt19937_64 rng_;
};

}  // namespace hv::agent
