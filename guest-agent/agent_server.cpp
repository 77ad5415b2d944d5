#include "guest-agent/agent_server.h"

#include <cstdio>
#include <thread>

#include "guest-agent/fd_io.h"
#include "guest-agent/wire_format.h"

namespace hv::agent {

namespace pb = ::hvpatch::agent;

void AgentServer::Run() {
  for (;;) {
    auto fd = channel_->WaitForHost();
    if (!fd.ok()) {
      std::fprintf(stderr, "hvpatch-agent: %s: %s\n", channel_->Describe().c_str(),
                   fd.status().message().c_str());
      IdleWait(std::chrono::seconds(1));
      continue;
    }
    const Status why = ServeSession(*fd);
    std::fprintf(stderr, "hvpatch-agent: session on %s ended: %s\n", channel_->Describe().c_str(),
                 why.ok() ? "host disconnected" : why.message().c_str());
    // Where the stream goes on, what is buffered stays: it may already be the next host's sync
    // and request (see VirtioSerialChannel). A stale partial frame of the old host is dropped by
    // the stale-frame timer, and a sync swallowed by it is found again (RejectLastFrame).
    if (!channel_->EndSession(why.ok() ? SessionEnd::kHostLeft : SessionEnd::kFailed)) decoder_.Clear();
  }
}

Status AgentServer::ServeSession(int fd) {
  const auto send = [&](const pb::Response& response, bool delimited) -> Status {
    std::string payload;
    if (!response.SerializeToString(&payload) || payload.size() > kMaxResponsePayload) {
      return Internal("response to request " + std::to_string(response.id()) + " does not fit a frame");
    }
    const std::string frame = delimited ? EncodeDelimitedFrame(payload) : EncodeFrame(payload);
    return WriteAll(fd, frame.data(), frame.size(), Deadline::In(options_.write_timeout_ms),
                    [this](const Deadline& d) { return channel_->WaitOutHangup(d); });
  };
  const AgentService::Sink sink = [&](const pb::Response& r) { return send(r, false); };

  char buf[64 * 1024];
  for (;;) {
    std::string payload, why;
    switch (decoder_.Next(&payload, &why)) {
      case FrameDecoder::Outcome::kFrame: {
        pb::Request request;
        if (!request.ParseFromString(payload) ||
            request.body_case() == pb::Request::BODY_NOT_SET) {
          // Protobuf parses many random byte strings; a Request without a body is garbage too.
          std::fprintf(stderr, "hvpatch-agent: resynchronizing: a %zu-byte frame is not a request\n",
                       payload.size());
          decoder_.RejectLastFrame();
          continue;
        }
        if (request.has_sync()) {
          pb::Response reply;
          reply.set_id(request.id());
          reply.mutable_sync()->set_nonce(request.sync().nonce());
          HV_RETURN_IF_ERROR(send(reply, true));
          continue;
        }
        HV_RETURN_IF_ERROR(service_->Handle(request, sink));
        continue;
      }
      case FrameDecoder::Outcome::kMalformed:
        std::fprintf(stderr, "hvpatch-agent: resynchronizing: %s\n", why.c_str());
        decoder_.SkipToDelimiter();
        continue;
      case FrameDecoder::Outcome::kNeedMore:
        break;
    }
    const bool partial = decoder_.buffered() > 0;
    auto n = ReadSome(fd, buf, sizeof(buf),
                      partial ? Deadline::In(options_.stale_frame_ms) : Deadline::Infinite());
    if (!n.ok()) {
      if (n.status().code() != Code::kDeadlineExceeded) return n.status();
      std::fprintf(stderr, "hvpatch-agent: dropping a stale partial frame (%zu bytes)\n",
                   decoder_.buffered());
      decoder_.SkipToDelimiter();
      continue;
    }
    if (*n == 0) return Status::Ok();
    decoder_.Append(buf, *n);
  }
}

}  // namespace hv::agent
