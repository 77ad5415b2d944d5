#include "guest-agent/agent_client.h"

#include "base/unix_socket.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "guest-agent/fd_io.h"
#include "guest-agent/hvpatch_agent.pb.h"
#include "guest-agent/response_decoder.h"

namespace hv::agent {

namespace pb = ::hvpatch::agent;

namespace {

// A hostile agent could stream empty chunks forever; real kallsyms needs a few hundred.
constexpr size_t kMaxKallsymsChunks = 100000;

}  // namespace

AgentClient::AgentClient(std::string path, const AgentClientOptions& options)
    : path_(std::move(path)), options_(options), decoder_(kMaxResponsePayload),
      rng_(std::random_device{}()) {}

AgentClient::~AgentClient() { Close(); }

Result<std::unique_ptr<AgentClient>> AgentClient::Connect(const std::string& socket_path,
                                                          const AgentClientOptions& options) {
  std::unique_ptr<AgentClient> client(new AgentClient(socket_path, options));
  HV_RETURN_IF_ERROR(client->Sync());
  return client;
}

Status AgentClient::Context(std::string_view what, const Status& s) const {
  return s.WithContext("agent at '" + path_ + "': " + std::string(what));
}

void AgentClient::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  synced_ = false;
  decoder_.Clear();
}

Status AgentClient::Open() {
  Close();
  HV_ASSIGN_OR_RETURN(fd_, ConnectUnixSocket(path_, options_.connect_timeout_ms, /*nonblocking=*/true));
  return Status::Ok();
}

Status AgentClient::Sync() { return DoSync().WithContext("agent at '" + path_ + "'"); }

Status AgentClient::DoSync() {
  if (fd_ < 0) HV_RETURN_IF_ERROR(Open().WithContext("connect"));
  synced_ = false;
  const uint64_t nonce = rng_();
  pb::Request request;
  request.set_id(next_id_++);
  request.mutable_sync()->set_nonce(nonce);
  std::string payload;
  request.SerializeToString(&payload);
  const std::string frame = EncodeDelimitedFrame(payload);
  const Deadline deadline = Deadline::In(options_.sync_timeout_ms);
  Status written = WriteAll(fd_, frame.data(), frame.size(), deadline);
  if (!written.ok()) {
    Close();
    return Unavailable("sync: sending the sync request: " + written.message());
  }
  const auto accept = [nonce](std::string_view candidate) {
    pb::Response r;
    return r.ParseFromArray(candidate.data(), static_cast<int>(candidate.size())) && r.has_sync() &&
           r.sync().nonce() == nonce;
  };
  char buf[16 * 1024];
  for (;;) {
    if (decoder_.FindSync(kMaxSyncPayload, accept)) {
      synced_ = true;
      return Status::Ok();
    }
    auto n = ReadSome(fd_, buf, sizeof(buf), deadline);
    if (!n.ok() || *n == 0) {
      const std::string why = !n.ok() && n.status().code() == Code::kDeadlineExceeded
                                  ? "no sync reply within " + std::to_string(options_.sync_timeout_ms) + " ms"
                              : n.ok() ? std::string("connection closed during the sync handshake")
                                       : n.status().message();
      Close();
      return Unavailable("sync: " + why);
    }
    decoder_.Append(buf, *n);
  }
}

Status AgentClient::Ready() {
  if (fd_ >= 0 && synced_) return Status::Ok();
  return DoSync();
}

Status AgentClient::SendRequest(pb::Request* request, const Deadline& deadline) {
  std::string payload;
  if (!request->SerializeToString(&payload) || payload.size() > kMaxRequestPayload) {
    return InvalidArgument("request of " + std::to_string(payload.size()) + " bytes exceeds " +
                           std::to_string(kMaxRequestPayload));
  }
  const std::string frame = EncodeFrame(payload);
  Status s = WriteAll(fd_, frame.data(), frame.size(), deadline);
  if (!s.ok()) {
    // Part of a frame may be out: the agent drops it as stale, we resynchronize.
    if (s.code() == Code::kDeadlineExceeded) {
      synced_ = false;
    } else {
      Close();
    }
  }
  return s;
}

Result<pb::Response> AgentClient::ReadResponse(uint64_t id, const Deadline& deadline, int timeout_ms) {
  char buf[64 * 1024];
  for (;;) {
    std::string payload, why;
    switch (decoder_.Next(&payload, &why)) {
      case FrameDecoder::Outcome::kFrame: {
        pb::Response response;
        if (!response.ParseFromString(payload)) {
          synced_ = false;
          return InvalidArgument("undecodable response of " + std::to_string(payload.size()) + " bytes");
        }
        if (response.id() != id) {
          synced_ = false;
          return InvalidArgument("response for request " + std::to_string(response.id()) +
                                 " while waiting for " + std::to_string(id));
        }
        return response;
      }
      case FrameDecoder::Outcome::kMalformed:
        synced_ = false;
        return InvalidArgument("malformed frame: " + why);
      case FrameDecoder::Outcome::kNeedMore:
        break;
    }
    auto n = ReadSome(fd_, buf, sizeof(buf), deadline);
    if (!n.ok()) {
      if (n.status().code() == Code::kDeadlineExceeded) {
        synced_ = false;
        return DeadlineExceeded("no reply within " + std::to_string(timeout_ms) + " ms");
      }
      Close();
      return Unavailable(n.status().message());
    }
    if (*n == 0) {
      Close();
      return Unavailable("connection closed by the peer");
    }
    decoder_.Append(buf, *n);
  }
}

Result<pb::Response> AgentClient::Call(pb::Request* request) {
  HV_RETURN_IF_ERROR(Ready());
  request->set_id(next_id_++);
  const Deadline deadline = Deadline::In(options_.call_timeout_ms);
  HV_RETURN_IF_ERROR(SendRequest(request, deadline));
  HV_ASSIGN_OR_RETURN(pb::Response response,
                      ReadResponse(request->id(), deadline, options_.call_timeout_ms));
  HV_RETURN_IF_ERROR(DecodeError(response));
  return response;
}

Result<AgentHello> AgentClient::Hello() {
  pb::Request request;
  request.mutable_hello();
  auto response = Call(&request);
  if (!response.ok()) return Context("hello", response.status());
  if (!response->has_hello()) return Context("hello", InvalidArgument("reply has no hello body"));
  auto hello = DecodeHello(response->hello());
  if (!hello.ok()) return Context("hello", hello.status());
  return hello;
}

Result<std::vector<KernelSymbol>> AgentClient::Kallsyms() {
  const auto fail = [this](const Status& s) { return Context("kallsyms", s); };
  if (Status s = Ready(); !s.ok()) return s;
  pb::Request request;
  request.mutable_kallsyms();
  request.set_id(next_id_++);
  const Deadline total = Deadline::In(options_.kallsyms_timeout_ms);
  if (Status s = SendRequest(&request, Deadline::In(options_.call_timeout_ms)); !s.ok()) return fail(s);
  std::vector<KernelSymbol> symbols;
  for (size_t chunks = 0;; ++chunks) {
    if (chunks >= kMaxKallsymsChunks) {
      synced_ = false;
      return fail(InvalidArgument("more than " + std::to_string(kMaxKallsymsChunks) + " chunks"));
    }
    const int wait_ms = std::min(options_.call_timeout_ms, total.RemainingMs());
    auto response = ReadResponse(request.id(), Deadline::In(wait_ms), wait_ms);
    if (!response.ok()) return fail(response.status());
    if (Status s = DecodeError(*response); !s.ok()) return fail(s);
    if (!response->has_kallsyms()) {
      synced_ = false;
      return fail(InvalidArgument("reply has no kallsyms body"));
    }
    if (Status s = AppendKallsyms(response->kallsyms(), options_.max_symbols, &symbols); !s.ok()) {
      // The rest of the stream is still coming: resynchronize before the next call.
      synced_ = false;
      return fail(s);
    }
    if (response->kallsyms().last()) return symbols;
  }
}

Result<LivepatchState> AgentClient::GetLivepatchState(bool published) {
  pb::Request request;
  request.mutable_livepatch_state()->set_published(published);
  auto response = Call(&request);
  if (!response.ok()) return Context("livepatch state", response.status());
  if (!response->has_livepatch_state()) {
    return Context("livepatch state", InvalidArgument("reply has no livepatch_state body"));
  }
  auto state = DecodeLivepatchState(response->livepatch_state());
  if (!state.ok()) return Context("livepatch state", state.status());
  return state;
}

Result<FtraceState> AgentClient::GetFtraceState() {
  pb::Request request;
  request.mutable_ftrace_state();
  auto response = Call(&request);
  if (!response.ok()) return Context("ftrace state", response.status());
  if (!response->has_ftrace_state()) {
    return Context("ftrace state", InvalidArgument("reply has no ftrace_state body"));
  }
  auto state = DecodeFtraceState(response->ftrace_state());
  if (!state.ok()) return Context("ftrace state", state.status());
  return state;
}

Result<std::vector<uint8_t>> AgentClient::Verify(uint64_t address, uint32_t length) {
  if (length == 0 || length > kMaxVerifyLength) {
    return Context("verify", InvalidArgument("length " + std::to_string(length) + " (1.." +
                                             std::to_string(kMaxVerifyLength) + " allowed)"));
  }
  pb::Request request;
  request.mutable_verify()->set_address(address);
  request.mutable_verify()->set_length(length);
  auto response = Call(&request);
  if (!response.ok()) return Context("verify", response.status());
  if (!response->has_verify()) return Context("verify", InvalidArgument("reply has no verify body"));
  auto data = DecodeVerify(response->verify(), address, length);
  if (!data.ok()) return Context("verify", data.status());
  return data;
}

Result<PublishResult> AgentClient::PublishState(const std::vector<LivepatchPatch>& patches) {
  pb::Request request;
  for (const LivepatchPatch& p : patches) *request.mutable_publish_state()->add_patches() = EncodePatch(p);
  request.mutable_publish_state();  // an empty list is a valid request
  auto response = Call(&request);
  if (!response.ok()) return Context("publish state", response.status());
  if (!response->has_publish_state()) {
    return Context("publish state", InvalidArgument("reply has no publish_state body"));
  }
  auto result = DecodePublish(response->publish_state());
  if (!result.ok()) return Context("publish state", result.status());
  return result;
}

}  // namespace hv::agent
