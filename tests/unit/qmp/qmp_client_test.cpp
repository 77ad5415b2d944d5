// QmpClient against a scripted QMP server on a temp-dir unix socket: the server replays
// recorded QEMU lines in answer to the client's commands.
#include "qmp/qmp_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "status_matchers.h"

namespace hv::qmp {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

constexpr char kGreeting[] =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
    "\"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n";

// A one-connection server. `script` gets each command the client sent and writes what QEMU
// would; it returns false to close the connection.
class ScriptedServer {
 public:
  using Script = std::function<bool(int fd, const json& cmd)>;

  explicit ScriptedServer(Script script) : script_(std::move(script)) {
    char tmpl[] = "/tmp/hv-qmp-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/qmp.sock";
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path_.c_str());
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(listen_fd_, 1), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~ScriptedServer() {
    thread_.join();
    close(listen_fd_);
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

  static void Write(int fd, std::string_view s) {
    while (!s.empty()) {
      ssize_t n = send(fd, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      s.remove_prefix(static_cast<std::size_t>(n));
    }
  }

 private:
  void Serve() {
    const int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;
    Write(fd, kGreeting);
    std::string buf;
    char tmp[4096];
    for (;;) {
      const auto nl = buf.find('\n');
      if (nl == std::string::npos) {
        const ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
        if (n <= 0) break;
        buf.append(tmp, static_cast<std::size_t>(n));
        continue;
      }
      const json cmd = json::parse(buf.substr(0, nl));
      buf.erase(0, nl + 1);
      if (!script_(fd, cmd)) break;
    }
    close(fd);
  }

  Script script_;
  std::string dir_, path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

std::string Reply(const json& cmd, const json& ret) {
  return json{{"return", ret}, {"id", cmd["id"]}}.dump() + "\r\n";
}

TEST(QmpClientTest, MatchesRepliesByIdAndQueuesEvents) {
  ScriptedServer server([](int fd, const json& cmd) {
    const std::string name = cmd["execute"];
    if (name == "stop") {
      // The event comes before the reply, and a stale reply with a foreign id is interleaved.
      ScriptedServer::Write(fd, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, "
                                "\"event\": \"STOP\"}\r\n");
      ScriptedServer::Write(fd, "{\"return\": {\"stale\": true}, \"id\": \"other\"}\r\n");
      ScriptedServer::Write(fd, Reply(cmd, json::object()));
    } else if (name == "query-status") {
      ScriptedServer::Write(fd, Reply(cmd, json{{"running", false}, {"status", "paused"}}));
    } else if (name == "human-monitor-command") {
      ScriptedServer::Write(fd, Reply(cmd, "got " + cmd["arguments"]["command-line"].get<std::string>()));
    } else if (name == "nosuch") {
      ScriptedServer::Write(fd, json{{"id", cmd["id"]},
                                     {"error", {{"class", "CommandNotFound"},
                                                {"desc", "The command nosuch has not been found"}}}}
                                        .dump() + "\r\n");
    } else {
      ScriptedServer::Write(fd, Reply(cmd, json::object()));
    }
    return true;
  });
  auto c = QmpClient::Connect(server.path());
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ((*c)->greeting()["version"]["qemu"]["major"], 7);

  auto r = (*c)->Execute("stop");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(*r, json::object());
  auto st = (*c)->Execute("query-status");
  ASSERT_THAT(st, IsOk());
  EXPECT_EQ((*st)["status"], "paused");

  auto events = (*c)->TakeEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "STOP");
  EXPECT_TRUE((*c)->TakeEvents().empty());

  auto h = (*c)->Hmp("info status");
  ASSERT_THAT(h, IsOk());
  EXPECT_EQ(*h, "got info status");

  EXPECT_THAT((*c)->Execute("nosuch"),
              StatusIs(Code::kUnimplemented,
                       HasSubstr("'nosuch': CommandNotFound: The command nosuch has not been found")));
}

// ExecuteAll sends the whole batch before it reads: this server answers nothing until it holds
// all three commands, then answers in order, with an event and a stale reply in between.
TEST(QmpClientTest, ExecuteAllPipelinesAndMatchesEachReply) {
  std::vector<json> held;
  ScriptedServer server([&held](int fd, const json& cmd) {
    if (cmd["execute"] == "qmp_capabilities") {
      ScriptedServer::Write(fd, Reply(cmd, json::object()));
      return true;
    }
    held.push_back(cmd);
    if (held.size() < 3) return true;
    ScriptedServer::Write(fd, Reply(held[0], "first"));
    ScriptedServer::Write(fd, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RESUME\"}\r\n");
    ScriptedServer::Write(fd, "{\"return\": \"stale\", \"id\": \"someone-else\"}\r\n");
    ScriptedServer::Write(fd, json{{"id", held[1]["id"]},
                                   {"error", {{"class", "DeviceNotFound"}, {"desc", "no such device"}}}}
                                      .dump() + "\r\n");
    ScriptedServer::Write(fd, Reply(held[2], json{{"n", 3}, {"x_of_b", held[1]["arguments"]["x"]}}));
    return true;
  });
  auto c = QmpClient::Connect(server.path());
  ASSERT_THAT(c, IsOk());
  const std::vector<QmpCall> calls = {{"a"}, {"b", json{{"x", 1}}}, {"c"}};
  auto r = (*c)->ExecuteAll(calls);
  ASSERT_EQ(r.size(), 3u);
  ASSERT_THAT(r[0], IsOk());
  EXPECT_EQ(*r[0], "first");
  EXPECT_THAT(r[1], StatusIs(Code::kNotFound, HasSubstr("'b': DeviceNotFound: no such device")));
  ASSERT_THAT(r[2], IsOk());
  EXPECT_EQ((*r[2])["n"], 3);
  EXPECT_EQ((*r[2])["x_of_b"], 1);  // (held is the server thread's: read there)
  auto events = (*c)->TakeEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "RESUME");
}

TEST(QmpClientTest, TimesOutAndDropsTheLateReply) {
  ScriptedServer server([](int fd, const json& cmd) {
    if (cmd["execute"] == "slow") return true;  // never answered now...
    if (cmd["execute"] == "query-status") {
      // ...its reply arrives late, just before this command's.
      ScriptedServer::Write(fd, "{\"return\": \"late\", \"id\": \"hv-2\"}\r\n");
      ScriptedServer::Write(fd, Reply(cmd, "mine"));
      return true;
    }
    ScriptedServer::Write(fd, Reply(cmd, json::object()));
    return true;
  });
  QmpOptions o;
  o.timeout_ms = 200;
  auto c = QmpClient::Connect(server.path(), o);
  ASSERT_THAT(c, IsOk());
  EXPECT_THAT((*c)->Execute("slow"),
              StatusIs(Code::kDeadlineExceeded, HasSubstr("QMP command 'slow'")));
  auto r = (*c)->Execute("query-status");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(*r, "mine");
}

TEST(QmpClientTest, OversizeReplyBreaksTheConnection) {
  ScriptedServer server([](int fd, const json& cmd) {
    if (cmd["execute"] == "big") {
      ScriptedServer::Write(fd, "{\"return\": \"" + std::string(8192, 'a') + "\"}\r\n");
      return true;
    }
    ScriptedServer::Write(fd, Reply(cmd, json::object()));
    return true;
  });
  QmpOptions o;
  o.max_line = 4096;
  auto c = QmpClient::Connect(server.path(), o);
  ASSERT_THAT(c, IsOk());
  EXPECT_THAT((*c)->Execute("big"), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds 4096 bytes")));
  EXPECT_THAT((*c)->Execute("query-status"),
              StatusIs(Code::kInvalidArgument, HasSubstr("exceeds 4096 bytes")));
}

TEST(QmpClientTest, ClosedPeerIsUnavailable) {
  ScriptedServer server([](int, const json& cmd) { return cmd["execute"] == "qmp_capabilities" ? false : true; });
  auto c = QmpClient::Connect(server.path());
  EXPECT_THAT(c, StatusIs(Code::kUnavailable, HasSubstr("closed by QEMU")));
}

TEST(QmpClientTest, MissingSocketIsUnavailable) {
  EXPECT_THAT(QmpClient::Connect("/nonexistent/qmp.sock"),
              StatusIs(Code::kUnavailable, HasSubstr("'/nonexistent/qmp.sock'")));
}

}  // namespace
}  // namespace hv::qmp
