// The agent's serve loop: sessions on a Channel, frames in, AgentService answers out.
#pragma once

#include "base/status.h"
#include "guest-agent/agent_service.h"
#include "guest-agent/channel.h"
#include "guest-agent/wire_format.h"

namespace hv::agent {

struct AgentServerOptions {
  // A frame that stays incomplete this long is dropped and the decoder hunts for the next sync
  // delimiter: the host timed out mid-write and will resynchronize.
  int stale_frame_ms = 1000;
  // A host that stops draining our answers for this long loses its session.
  int write_timeout_ms = 10000;
};

class AgentServer {
 public:
  AgentServer(Channel* channel, AgentService* service, AgentServerOptions options = {})
      : channel_(channel), service_(service), options_(options) {}

  // Serves sessions until the process is killed. Never returns.
  [[noreturn]] void Run();

  // Serves one session on `fd` until end of file (Ok) or a read or write failure. Bytes buffered
  // but not yet framed stay in the decoder for the next session on the same stream.
  Status ServeSession(int fd);

 private:
  Channel* channel_;
  AgentService* service_;
  AgentServerOptions options_;
  FrameDecoder decoder_{kMaxRequestPayload};
};

}  // namespace hv::agent
