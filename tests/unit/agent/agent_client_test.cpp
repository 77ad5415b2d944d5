// The host client against scripted hostile agents: garbage, giant lengths, silence, wrong ids,
// out-of-bounds fields. None may hang or crash the host; each gives a precise error.
#include "guest-agent/agent_client.h"

#include <poll.h>

#include <atomic>
#include <functional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "guest-agent/hvpatch_agent.pb.h"
#include "guest-agent/wire_format.h"
#include "status_matchers.h"
#include "unit/agent/agent_test_support.h"

namespace hv::agent {
namespace {

using ::testing::HasSubstr;
using namespace hv::agent::testing;  // NOLINT
namespace pb = ::hvpatch::agent;

std::string Reply(const pb::Response& r) { return EncodeFrame(r.SerializeAsString()); }

// Listens on a unix socket; answers syncs correctly (unless told not to) and every other request
// with whatever `script` returns (raw bytes: may be garbage; empty means silence).
class FakeAgent {
 public:
  using Script = std::function<std::string(const pb::Request&)>;

  // `nonce_xor` != 0 makes the sync replies carry a wrong nonce.
  FakeAgent(std::string path, Script script, bool answer_sync = true, uint64_t nonce_xor = 0)
      : path_(std::move(path)), script_(std::move(script)), answer_sync_(answer_sync),
        nonce_xor_(nonce_xor) {
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listen_fd_, 4), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeAgent() {
    stop_ = true;
    thread_.join();
    close(listen_fd_);
  }
  int requests() const { return requests_; }

 private:
  bool WaitReadable(int fd) {
    while (!stop_) {
      struct pollfd p = {fd, POLLIN, 0};
      if (poll(&p, 1, 20) > 0) return true;
    }
    return false;
  }
  void Serve() {
    while (WaitReadable(listen_fd_)) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      FrameDecoder d(kMaxRequestPayload);
      char buf[4096];
      bool open = true;
      while (open && WaitReadable(fd)) {
        const ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) break;
        d.Append(buf, static_cast<size_t>(n));
        std::string payload;
        while (open && d.Next(&payload, nullptr) == FrameDecoder::Outcome::kFrame) {
          pb::Request req;
          req.ParseFromString(payload);
          std::string out;
          if (req.has_sync()) {
            if (!answer_sync_) continue;
            pb::Response r;
            r.set_id(req.id());
            r.mutable_sync()->set_nonce(req.sync().nonce() ^ nonce_xor_);
            out = EncodeDelimitedFrame(r.SerializeAsString());
          } else {
            ++requests_;
            out = script_(req);
            if (out == "CLOSE") {
              open = false;
              break;
            }
          }
          // Best effort: a client that gave up may have closed already.
          if (!out.empty() && send(fd, out.data(), out.size(), MSG_NOSIGNAL) < 0) open = false;
        }
      }
      close(fd);
    }
  }

  std::string path_;
  Script script_;
  bool answer_sync_;
  uint64_t nonce_xor_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

class AgentClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    path_ = dir_ + "/agent.sock";
    options_.sync_timeout_ms = 300;
    options_.call_timeout_ms = 300;
    options_.kallsyms_timeout_ms = 600;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string dir_, path_;
  AgentClientOptions options_;
};

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

TEST_F(AgentClientTest, NoSocketIsUnavailableAtOnce) {
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(AgentClient::Connect(path_, options_),
              StatusIs(Code::kUnavailable, HasSubstr("agent at '" + path_ + "': connect: cannot connect")));
  EXPECT_LT(MsSince(t0), 100);
}

TEST_F(AgentClientTest, ASocketWithoutAnAgentIsUnavailableAfterTheSyncTimeout) {
  // QEMU accepts on the chardev even when nothing runs in the guest.
  FakeAgent silent(path_, [](const pb::Request&) { return std::string(); }, /*answer_sync=*/false);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(AgentClient::Connect(path_, options_),
              StatusIs(Code::kUnavailable, HasSubstr("sync: no sync reply within 300 ms")));
  EXPECT_LT(MsSince(t0), 1000);
}

TEST_F(AgentClientTest, ASyncReplyWithTheWrongNonceIsNotAccepted) {
  FakeAgent liar(path_, [](const pb::Request&) { return std::string(); }, /*answer_sync=*/true,
                 /*nonce_xor=*/1);
  EXPECT_THAT(AgentClient::Connect(path_, options_),
              StatusIs(Code::kUnavailable, HasSubstr("sync: no sync reply within 300 ms")));
}

TEST_F(AgentClientTest, SilenceAfterARequestIsADeadlineAndTheNextCallResyncs) {
  int calls = 0;
  FakeAgent agent(path_, [&](const pb::Request& req) {
    if (++calls == 1) return std::string();  // stuck on the first request
    pb::Response r;
    r.set_id(req.id());
    r.mutable_hello()->set_release("6.1.0");
    return Reply(r);
  });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT((*client)->Hello(), StatusIs(Code::kDeadlineExceeded, HasSubstr("hello: no reply within 300 ms")));
  EXPECT_LT(MsSince(t0), 1000);
  EXPECT_FALSE((*client)->synced());
  auto hello = (*client)->Hello();
  ASSERT_THAT(hello, IsOk());
  EXPECT_EQ(hello->release, "6.1.0");
}

TEST_F(AgentClientTest, GarbageIsAMalformedFrame) {
  FakeAgent agent(path_, [](const pb::Request&) { return std::string("HTTP/1.1 400 Bad Request\r\n\r\n"); });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Hello(), StatusIs(Code::kInvalidArgument, HasSubstr("hello: malformed frame")));
}

TEST_F(AgentClientTest, AGiantLengthIsRefusedWithoutAllocatingIt) {
  FakeAgent agent(path_, [](const pb::Request&) { return std::string("\x00\xff\xff\xff", 4); });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Hello(),
              StatusIs(Code::kInvalidArgument, HasSubstr("frame length 16777215 exceeds the limit")));
}

TEST_F(AgentClientTest, AnEndlessStreamOfGarbageEndsAtTheSyncDeadline) {
  // Delimiters and small would-be sync frames everywhere: the sync scan must keep discarding them
  // (bounded memory) and give up at its deadline.
  const int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
  ASSERT_EQ(bind(lfd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(lfd, 1), 0);
  std::atomic<long> sent{0};
  std::thread spew([&] {
    const int fd = accept(lfd, nullptr, nullptr);
    std::string junk;
    pb::Response wrong;
    wrong.mutable_sync()->set_nonce(12345);
    for (int i = 0; i < 200; ++i) junk += std::string("\xff\x00\x00\x00\x05" "abcde\xff", 11) + EncodeDelimitedFrame(wrong.SerializeAsString());
    while (send(fd, junk.data(), junk.size(), MSG_NOSIGNAL) > 0) sent += static_cast<long>(junk.size());
    close(fd);
  });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(AgentClient::Connect(path_, options_),
              StatusIs(Code::kUnavailable, HasSubstr("no sync reply within 300 ms")));
  EXPECT_LT(MsSince(t0), 1500);
  spew.join();
  close(lfd);
  EXPECT_GT(sent.load(), 1 << 20);  // it really was flooded
}

TEST_F(AgentClientTest, AnUndecodableOrMismatchedResponseIsRefused) {
  int calls = 0;
  FakeAgent agent(path_, [&](const pb::Request& req) {
    ++calls;
    if (calls == 1) return EncodeFrame("\xff\xff\xff\xff not protobuf");
    pb::Response r;
    r.set_id(req.id() + 100);
    r.mutable_hello()->set_release("6.1.0");
    return Reply(r);
  });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Hello(), StatusIs(Code::kInvalidArgument, HasSubstr("undecodable response")));
  EXPECT_THAT((*client)->Hello(), StatusIs(Code::kInvalidArgument, HasSubstr("while waiting for")));
}

TEST_F(AgentClientTest, OutOfBoundsFieldsAreRefusedByName) {
  FakeAgent agent(path_, [](const pb::Request& req) {
    pb::Response r;
    r.set_id(req.id());
    if (req.has_hello()) r.mutable_hello()->set_release(std::string(100, 'r'));
    if (req.has_verify()) {
      r.mutable_verify()->set_address(req.verify().address());
      r.mutable_verify()->set_data("12");
    }
    if (req.has_livepatch_state()) {
      r.mutable_livepatch_state()->add_patches()->set_name("bad\nname");
    }
    if (req.has_ftrace_state()) {
      for (int i = 0; i < 3; ++i) r.mutable_ftrace_state()->add_entries()->set_function(std::string(600, 'f'));
    }
    if (req.has_kallsyms()) {
      pb::Symbol* s = r.mutable_kallsyms()->add_symbols();
      s->set_name("fn");
      s->set_type("TT");
      r.mutable_kallsyms()->set_last(true);
    }
    return Reply(r);
  });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Hello(), StatusIs(Code::kInvalidArgument, HasSubstr("release of 100 bytes (at most 64)")));
  EXPECT_THAT((*client)->Verify(0x1000, 5), StatusIs(Code::kInvalidArgument, HasSubstr("has 2 bytes, 5 requested")));
  EXPECT_THAT((*client)->GetLivepatchState(),
              StatusIs(Code::kInvalidArgument, HasSubstr("patch name has non-printable characters")));
  EXPECT_THAT((*client)->GetFtraceState(), StatusIs(Code::kInvalidArgument, HasSubstr("ftrace function of 600 bytes")));
  EXPECT_THAT((*client)->Kallsyms(), StatusIs(Code::kInvalidArgument, HasSubstr("symbol 'fn' has type 'TT'")));
}

TEST_F(AgentClientTest, AgentErrorsKeepTheirCodeAndUnknownCodesBecomeInternal) {
  FakeAgent agent(path_, [](const pb::Request& req) {
    pb::Response r;
    r.set_id(req.id());
    r.mutable_error()->set_code(req.has_verify() ? pb::ERROR_NOT_FOUND : static_cast<pb::ErrorCode>(999));
    r.mutable_error()->set_message(std::string("bad\x01thing"));
    return Reply(r);
  });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Verify(0x1000, 5), StatusIs(Code::kNotFound, HasSubstr("verify: agent: bad?thing")));
  EXPECT_THAT((*client)->Hello(), StatusIs(Code::kInternal, HasSubstr("agent: bad?thing")));
}

TEST_F(AgentClientTest, AnEndlessKallsymsStreamEndsAtTheDeadline) {
  FakeAgent agent(path_, [](const pb::Request& req) {
    pb::Response r;
    r.set_id(req.id());
    r.mutable_kallsyms();  // never last
    std::string out;
    for (int i = 0; i < 2000; ++i) out += Reply(r);
    return out;
  });
  options_.call_timeout_ms = 200;
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT((*client)->Kallsyms(), StatusIs(Code::kDeadlineExceeded, HasSubstr("kallsyms: no reply within")));
  EXPECT_LT(MsSince(t0), 1500);
}

TEST_F(AgentClientTest, ThePeerClosingMidRequestIsUnavailableAndTheClientReconnects) {
  int calls = 0;
  FakeAgent agent(path_, [&](const pb::Request& req) {
    if (++calls == 1) return std::string("CLOSE");
    pb::Response r;
    r.set_id(req.id());
    r.mutable_hello()->set_release("6.1.0");
    return Reply(r);
  });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Hello(), StatusIs(Code::kUnavailable, HasSubstr("hello: connection closed by the peer")));
  EXPECT_THAT((*client)->Hello(), IsOk());
}

TEST_F(AgentClientTest, VerifyLengthIsCheckedBeforeSending) {
  FakeAgent agent(path_, [](const pb::Request&) { return std::string(); });
  auto client = AgentClient::Connect(path_, options_);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Verify(0x1000, 0), StatusIs(Code::kInvalidArgument, HasSubstr("length 0")));
  EXPECT_THAT((*client)->Verify(0x1000, 4097), StatusIs(Code::kInvalidArgument, HasSubstr("length 4097")));
  EXPECT_EQ(agent.requests(), 0);
}

}  // namespace
}  // namespace hv::agent
