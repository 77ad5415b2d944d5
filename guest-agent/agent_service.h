// What hvpatch-agent answers: one method per request of hvpatch_agent.proto. Transport-free, so the
// server (agent_server.h) and tests drive it the same way.
#pragma once

#include <functional>
#include <string>

#include "base/status.h"
#include "guest-agent/hvpatch_agent.pb.h"

namespace hv::agent {

// Where the agent looks. Tests point them at temp dirs holding fixture files.
struct AgentPaths {
  std::string proc_root = "/proc";   // kallsyms, kcore, sys/kernel/osrelease
  std::string sys_root = "/sys";     // kernel/notes, kernel/livepatch, kernel/tracing, class/virtio-ports
  std::string state_root = "/run/hvpatch/livepatch";  // the parity tree (owned by the agent)
};

class AgentService {
 public:
  using Sink = std::function<Status(const hvpatch::agent::Response&)>;

  explicit AgentService(AgentPaths paths) : paths_(std::move(paths)) {}

  // Answers `request` through `send`: once, or several times for Kallsyms (a stream of chunks).
  // A failed request is answered with Response.error, not with a Status; the returned Status is the
  // first error of `send` itself (the connection is gone).
  Status Handle(const hvpatch::agent::Request& request, const Sink& send);

  // For logs and the Hello capabilities.
  const AgentPaths& paths() const { return paths_; }

 private:
  Result<hvpatch::agent::HelloResponse> Hello() const;
  Status StreamKallsyms(uint64_t id, const Sink& send) const;
  Result<hvpatch::agent::FtraceState> Ftrace() const;
  Result<hvpatch::agent::VerifyResponse> Verify(const hvpatch::agent::VerifyRequest& req) const;
  Result<hvpatch::agent::PublishStateResponse> Publish(
      const hvpatch::agent::PublishStateRequest& req) const;
  std::string Release() const;

  AgentPaths paths_;
};

}  // namespace hv::agent
