// The real hvpatch-agent binary, started on a temp-dir unix socket against fixture /proc and /sys
// trees (as QEMU's tests/unit/test-qga.c runs the real qemu-ga), driven by the real host client.
#include <sys/stat.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "guest-agent/agent_client.h"
#include "guest-agent/hvpatch_agent.pb.h"
#include "guest-agent/wire_format.h"
#include "status_matchers.h"
#include "unit/agent/agent_test_support.h"

namespace hv::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace hv::agent::testing;  // NOLINT

class AgentBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    guest_.dir = MakeTempDir();
    ASSERT_FALSE(guest_.dir.empty());
    guest_.Populate(Release());
    socket_ = guest_.dir + "/agent.sock";
    ASSERT_TRUE(agent_.Start(guest_, socket_));
  }
  void TearDown() override {
    agent_.Stop();
    std::error_code ec;
    fs::remove_all(guest_.dir, ec);
  }
  virtual std::string Release() const { return "6.1.0-18-cloud-amd64"; }

  std::unique_ptr<AgentClient> Connect() {
    auto c = AgentClient::Connect(socket_);
    EXPECT_THAT(c, IsOk()) << agent_.Log();
    return c.ok() ? std::move(*c) : nullptr;
  }

  GuestFixture guest_;
  std::string socket_;
  AgentProcess agent_;
};

TEST_F(AgentBinaryTest, HelloReportsReleaseBuildIdAndCapabilities) {
  auto client = Connect();
  ASSERT_TRUE(client);
  auto hello = client->Hello();
  ASSERT_THAT(hello, IsOk());
  EXPECT_EQ(hello->release, "6.1.0-18-cloud-amd64");
  EXPECT_EQ(std::string(hello->build_id.begin(), hello->build_id.end()), kBuildId);
  EXPECT_EQ(hello->protocol_version, kProtocolVersion);
  EXPECT_FALSE(hello->agent_version.empty());
  EXPECT_TRUE(hello->HasCapability("verify"));
  EXPECT_TRUE(hello->HasCapability("publish_state"));
  EXPECT_TRUE(hello->HasCapability("sysfs_abi=6.1"));
}

TEST_F(AgentBinaryTest, KallsymsStreamsEverySymbol) {
  // Enough symbols for several chunks.
  std::string text;
  for (int i = 0; i < 30000; ++i) {
    char line[128];
    std::snprintf(line, sizeof(line), "%016llx t some_long_function_name_%06d\n",
                  static_cast<unsigned long long>(kTextBase + 16ull * i), i);
    text += line;
  }
  text += "ffffffffc0a01000 t virtio_console_fn\t[virtio_console]\n";
  WriteFile(guest_.proc() + "/kallsyms", text);

  auto client = Connect();
  ASSERT_TRUE(client);
  auto syms = client->Kallsyms();
  ASSERT_THAT(syms, IsOk());
  ASSERT_EQ(syms->size(), 30001u);
  EXPECT_EQ((*syms)[0].address, kTextBase);
  EXPECT_EQ((*syms)[0].type, 't');
  EXPECT_EQ((*syms)[29999].name, "some_long_function_name_029999");
  EXPECT_EQ(syms->back().name, "virtio_console_fn");
  EXPECT_EQ(syms->back().module, "virtio_console");
  // The connection stays usable after a stream.
  EXPECT_THAT(client->Hello(), IsOk());
}

TEST_F(AgentBinaryTest, KallsymsOverTheSymbolLimitIsRefusedAndTheClientRecovers) {
  AgentClientOptions options;
  options.max_symbols = 2;
  auto client = AgentClient::Connect(socket_, options);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT((*client)->Kallsyms(), StatusIs(Code::kInvalidArgument, HasSubstr("more than 2 symbols")));
  EXPECT_THAT((*client)->Hello(), IsOk());
}

TEST_F(AgentBinaryTest, LivepatchStateMirrorsSysfs) {
  auto client = Connect();
  ASSERT_TRUE(client);
  auto state = client->GetLivepatchState();
  ASSERT_THAT(state, IsOk());
  EXPECT_TRUE(state->available);
  ASSERT_EQ(state->patches.size(), 1u);
  const LivepatchPatch& p = state->patches[0];
  EXPECT_EQ(p.name, "livepatch_sample");
  EXPECT_TRUE(p.enabled);
  EXPECT_FALSE(p.transition);
  ASSERT_EQ(p.objects.size(), 1u);
  EXPECT_EQ(p.objects[0].name, "vmlinux");
  EXPECT_TRUE(p.objects[0].patched);
  ASSERT_EQ(p.objects[0].functions.size(), 1u);
  EXPECT_EQ(p.objects[0].functions[0].name, "cmdline_proc_show");
  EXPECT_EQ(p.objects[0].functions[0].sympos, 1u);
}

TEST_F(AgentBinaryTest, LivepatchStateWithoutSysfsIsUnavailable) {
  fs::remove_all(guest_.sys() + "/kernel/livepatch");
  auto client = Connect();
  ASSERT_TRUE(client);
  auto state = client->GetLivepatchState();
  ASSERT_THAT(state, IsOk());
  EXPECT_FALSE(state->available);
  EXPECT_TRUE(state->patches.empty());
}

TEST_F(AgentBinaryTest, FtraceStateParsesEnabledFunctions) {
  auto client = Connect();
  ASSERT_TRUE(client);
  auto state = client->GetFtraceState();
  ASSERT_THAT(state, IsOk());
  EXPECT_TRUE(state->available);
  ASSERT_EQ(state->entries.size(), 2u);
  EXPECT_EQ(state->entries[0].function, "cmdline_proc_show");
  EXPECT_EQ(state->entries[0].refcount, 1u);
  EXPECT_THAT(state->entries[0].detail, HasSubstr("klp_ftrace_handler"));
  EXPECT_EQ(state->entries[1].function, "virtio_console_fn");
  EXPECT_EQ(state->entries[1].module, "virtio_console");
  EXPECT_EQ(state->entries[1].refcount, 2u);
}

TEST_F(AgentBinaryTest, FtraceStateFallsBackToDebugfsAndReportsAbsence) {
  fs::rename(guest_.sys() + "/kernel/tracing", guest_.sys() + "/kernel/debug-tracing");
  auto client = Connect();
  ASSERT_TRUE(client);
  auto none = client->GetFtraceState();
  ASSERT_THAT(none, IsOk());
  EXPECT_FALSE(none->available);

  fs::create_directories(guest_.sys() + "/kernel/debug");
  fs::rename(guest_.sys() + "/kernel/debug-tracing", guest_.sys() + "/kernel/debug/tracing");
  auto state = client->GetFtraceState();
  ASSERT_THAT(state, IsOk());
  EXPECT_TRUE(state->available);
  EXPECT_EQ(state->entries.size(), 2u);
}

TEST_F(AgentBinaryTest, VerifyReadsThroughKcore) {
  auto client = Connect();
  ASSERT_TRUE(client);
  auto bytes = client->Verify(kCmdlineProcShow, 5);
  ASSERT_THAT(bytes, IsOk());
  EXPECT_THAT(*bytes, ElementsAre(0x0f, 0x1f, 0x44, 0x00, 0x00));
  auto vm = client->Verify(0xffffc90000000000ull, 8);
  ASSERT_THAT(vm, IsOk());
  EXPECT_EQ(std::string(vm->begin(), vm->end()), "VMALLOC!");
}

TEST_F(AgentBinaryTest, VerifyRefusesUnmappedAndOversizedRanges) {
  auto client = Connect();
  ASSERT_TRUE(client);
  EXPECT_THAT(client->Verify(0xffff888000000000ull, 5),
              StatusIs(Code::kNotFound, HasSubstr("is not mapped")));
  // A range that starts inside a segment but runs past its end.
  EXPECT_THAT(client->Verify(0xffffc90000000ffcull, 8),
              StatusIs(Code::kNotFound, HasSubstr("0xffffc90000000ffc+8")));
  EXPECT_THAT(client->Verify(kCmdlineProcShow, 5000),
              StatusIs(Code::kInvalidArgument, HasSubstr("length 5000")));
  // The connection survives errors.
  EXPECT_THAT(client->Verify(kCmdlineProcShow, 1), IsOk());
}

TEST_F(AgentBinaryTest, VerifyWithoutKcoreIsAnIoError) {
  fs::remove(guest_.proc() + "/kcore");
  auto client = Connect();
  ASSERT_TRUE(client);
  EXPECT_THAT(client->Verify(kCmdlineProcShow, 5),
              StatusIs(Code::kIo, HasSubstr("kcore")));
}

LivepatchPatch MeminfoPatch(std::string name = "hvp_sample") {
  LivepatchPatch p;
  p.name = std::move(name);
  p.enabled = true;
  p.stack_order = 1;
  p.objects.push_back({"vmlinux", true, {{"meminfo_proc_show", 1}}});
  return p;
}

TEST_F(AgentBinaryTest, PublishStateMaterializesTheSysfsTreeAndRevertRemovesIt) {
  auto client = Connect();
  ASSERT_TRUE(client);
  auto published = client->PublishState({MeminfoPatch()});
  ASSERT_THAT(published, IsOk());
  EXPECT_EQ(published->root, guest_.state());
  EXPECT_EQ(published->sysfs_abi, "6.1");

  const std::string dir = guest_.state() + "/hvp_sample";
  EXPECT_EQ(ReadFile(dir + "/enabled"), "1\n");
  EXPECT_EQ(ReadFile(dir + "/transition"), "0\n");
  EXPECT_EQ(ReadFile(dir + "/vmlinux/patched"), "1\n");
  EXPECT_TRUE(fs::is_directory(dir + "/vmlinux/meminfo_proc_show,1"));
  struct stat st;
  ASSERT_EQ(stat((dir + "/force").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0200u);
  ASSERT_EQ(stat((dir + "/transition").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0444u);
  // 6.1 has neither replace nor stack_order.
  EXPECT_FALSE(fs::exists(dir + "/replace"));
  EXPECT_FALSE(fs::exists(dir + "/stack_order"));

  // A second patch, then the first one reverted: its directory disappears.
  LivepatchPatch second = MeminfoPatch("hvp_other");
  second.objects[0].functions[0].name = "cmdline_proc_show";
  ASSERT_THAT(client->PublishState({MeminfoPatch(), second}), IsOk());
  EXPECT_TRUE(fs::is_directory(guest_.state() + "/hvp_other/vmlinux/cmdline_proc_show,1"));
  ASSERT_THAT(client->PublishState({second}), IsOk());
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fs::exists(guest_.state() + "/hvp_other/enabled"));
  ASSERT_THAT(client->PublishState({}), IsOk());
  EXPECT_TRUE(fs::is_empty(guest_.state()));
}

TEST_F(AgentBinaryTest, PublishStateRewritesAChangedPatch) {
  auto client = Connect();
  ASSERT_TRUE(client);
  ASSERT_THAT(client->PublishState({MeminfoPatch()}), IsOk());
  LivepatchPatch disabled = MeminfoPatch();
  disabled.enabled = false;
  disabled.objects[0].patched = false;
  disabled.objects[0].functions[0].name = "cmdline_proc_show";
  ASSERT_THAT(client->PublishState({disabled}), IsOk());
  const std::string dir = guest_.state() + "/hvp_sample";
  EXPECT_EQ(ReadFile(dir + "/enabled"), "0\n");
  EXPECT_EQ(ReadFile(dir + "/vmlinux/patched"), "0\n");
  EXPECT_FALSE(fs::exists(dir + "/vmlinux/meminfo_proc_show,1"));
  EXPECT_TRUE(fs::exists(dir + "/vmlinux/cmdline_proc_show,1"));
}

TEST_F(AgentBinaryTest, PublishStateRefusesHostileNamesAndChangesNothing) {
  auto client = Connect();
  ASSERT_TRUE(client);
  ASSERT_THAT(client->PublishState({MeminfoPatch()}), IsOk());
  EXPECT_THAT(client->PublishState({MeminfoPatch("../../etc")}),
              StatusIs(Code::kInvalidArgument, HasSubstr("patch name '../../etc' starts with '.'")));
  EXPECT_THAT(client->PublishState({MeminfoPatch("a/b")}),
              StatusIs(Code::kInvalidArgument, HasSubstr("not allowed")));
  LivepatchPatch bad_fn = MeminfoPatch();
  bad_fn.objects[0].functions[0].name = "x/../../y";
  EXPECT_THAT(client->PublishState({bad_fn}),
              StatusIs(Code::kInvalidArgument, HasSubstr("function name 'x/../../y'")));
  EXPECT_THAT(client->PublishState({MeminfoPatch(), MeminfoPatch()}),
              StatusIs(Code::kInvalidArgument, HasSubstr("listed twice")));
  EXPECT_TRUE(fs::exists(guest_.state() + "/hvp_sample/enabled"));
}

class AgentBinaryNewAbiTest : public AgentBinaryTest {
  std::string Release() const override { return "6.13.2-arch1"; }
};

TEST_F(AgentBinaryNewAbiTest, NewerKernelsGetReplaceAndStackOrder) {
  auto client = Connect();
  ASSERT_TRUE(client);
  LivepatchPatch p = MeminfoPatch();
  p.replace = true;
  p.stack_order = 3;
  auto published = client->PublishState({p});
  ASSERT_THAT(published, IsOk());
  EXPECT_EQ(published->sysfs_abi, "6.13");
  EXPECT_EQ(ReadFile(guest_.state() + "/hvp_sample/replace"), "1\n");
  EXPECT_EQ(ReadFile(guest_.state() + "/hvp_sample/stack_order"), "3\n");
}

// ---- framing edge cases against the real binary, over a raw socket ----

std::string SyncFrame(uint64_t nonce, uint64_t id = 77) {
  hvpatch::agent::Request r;
  r.set_id(id);
  r.mutable_sync()->set_nonce(nonce);
  return EncodeDelimitedFrame(r.SerializeAsString());
}

// Reads until a delimited sync reply with `nonce` arrives; false on timeout/EOF.
bool AwaitSync(int fd, uint64_t nonce, std::string* skipped = nullptr) {
  FrameDecoder d(kMaxResponsePayload);
  char buf[4096];
  for (;;) {
    const bool found = d.FindSync(kMaxSyncPayload, [&](std::string_view c) {
      hvpatch::agent::Response r;
      return r.ParseFromArray(c.data(), static_cast<int>(c.size())) && r.sync().nonce() == nonce;
    });
    if (found) return true;
    const ssize_t n = read(fd, buf, sizeof(buf));  // SO_RCVTIMEO bounds this
    if (n <= 0) return false;
    if (skipped) skipped->append(buf, static_cast<size_t>(n));
    d.Append(buf, static_cast<size_t>(n));
  }
}

void SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    ASSERT_GT(n, 0);
    data.remove_prefix(static_cast<size_t>(n));
  }
}

TEST_F(AgentBinaryTest, GarbageBeforeTheSyncIsSkipped) {
  const int fd = ConnectRaw(socket_);
  ASSERT_GE(fd, 0);
  SendAll(fd, "GET / HTTP/1.0\r\n\r\n\x7f\x01\x02 random garbage");
  SendAll(fd, SyncFrame(0x1234567890abcdefull));
  EXPECT_TRUE(AwaitSync(fd, 0x1234567890abcdefull)) << agent_.Log();
  close(fd);
}

TEST_F(AgentBinaryTest, OversizedLengthIsDroppedAndSyncRecovers) {
  const int fd = ConnectRaw(socket_);
  ASSERT_GE(fd, 0);
  // A header announcing 15 MiB: over the request limit, so the agent must not wait for it.
  SendAll(fd, std::string("\x00\xf0\x00\x00", 4));
  SendAll(fd, SyncFrame(42));
  EXPECT_TRUE(AwaitSync(fd, 42)) << agent_.Log();
  EXPECT_THAT(agent_.Log(), HasSubstr("exceeds the limit"));
  close(fd);
}

TEST_F(AgentBinaryTest, AStalePartialFrameIsDroppedAndSyncRecovers) {
  const int fd = ConnectRaw(socket_);
  ASSERT_GE(fd, 0);
  // A frame that promises 100 bytes and delivers 10: the host "timed out mid-write".
  SendAll(fd, std::string("\x00\x00\x00\x64", 4) + std::string(10, 'x'));
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  SendAll(fd, SyncFrame(43));
  EXPECT_TRUE(AwaitSync(fd, 43)) << agent_.Log();
  close(fd);
}

TEST_F(AgentBinaryTest, APartialFrameSwallowingTheSyncStillResyncs) {
  const int fd = ConnectRaw(socket_);
  ASSERT_GE(fd, 0);
  // A header promising 30 bytes, 4 of them sent: the following sync is swallowed into that frame,
  // which completes with the next sync's first bytes. The agent must find the first sync inside the
  // rejected frame and still see the second one.
  SendAll(fd, std::string("\x00\x00\x00\x1e", 4) + std::string(4, 'x'));
  SendAll(fd, SyncFrame(44));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  SendAll(fd, SyncFrame(45));
  std::string skipped;
  EXPECT_TRUE(AwaitSync(fd, 45, &skipped)) << agent_.Log();
  // The first sync was answered too, from inside the rejected frame.
  hvpatch::agent::Response r44;
  r44.set_id(77);
  r44.mutable_sync()->set_nonce(44);
  EXPECT_THAT(skipped, HasSubstr(EncodeDelimitedFrame(r44.SerializeAsString())));
  close(fd);
}

TEST_F(AgentBinaryTest, ShortReadsByteByByteAreReassembled) {
  const int fd = ConnectRaw(socket_);
  ASSERT_GE(fd, 0);
  const std::string sync = SyncFrame(46);
  for (char c : sync) {
    SendAll(fd, std::string_view(&c, 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_TRUE(AwaitSync(fd, 46));
  hvpatch::agent::Request hello;
  hello.set_id(9);
  hello.mutable_hello();
  for (char c : EncodeFrame(hello.SerializeAsString())) SendAll(fd, std::string_view(&c, 1));
  FrameDecoder d(kMaxResponsePayload);
  std::string payload;
  char buf[4096];
  while (d.Next(&payload, nullptr) != FrameDecoder::Outcome::kFrame) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    ASSERT_GT(n, 0);
    d.Append(buf, static_cast<size_t>(n));
  }
  hvpatch::agent::Response r;
  ASSERT_TRUE(r.ParseFromString(payload));
  EXPECT_EQ(r.id(), 9u);
  EXPECT_EQ(r.hello().release(), "6.1.0-18-cloud-amd64");
  close(fd);
}

TEST_F(AgentBinaryTest, AStaleReplyBeforeTheSyncIsDiscardedByTheClient) {
  // A raw host asks for Hello and disconnects without reading; the agent's answer is lost with the
  // connection. A request sent just before a sync on the same connection, though, is answered
  // before the sync reply: the client's sync must skip it.
  const int fd = ConnectRaw(socket_);
  ASSERT_GE(fd, 0);
  hvpatch::agent::Request hello;
  hello.set_id(5);
  hello.mutable_hello();
  SendAll(fd, EncodeFrame(hello.SerializeAsString()) + SyncFrame(47));
  std::string skipped;
  EXPECT_TRUE(AwaitSync(fd, 47, &skipped));
  EXPECT_THAT(skipped, HasSubstr("6.1.0-18-cloud-amd64"));
  close(fd);
}

TEST_F(AgentBinaryTest, TheAgentServesOneHostAfterAnother) {
  for (int i = 0; i < 3; ++i) {
    auto client = Connect();
    ASSERT_TRUE(client);
    EXPECT_THAT(client->Hello(), IsOk());
  }
}

TEST_F(AgentBinaryTest, AKilledAgentGivesAClearErrorAndARestartedOneServes) {
  auto client = Connect();
  ASSERT_TRUE(client);
  ASSERT_THAT(client->Hello(), IsOk());
  agent_.Stop();
  EXPECT_THAT(client->Hello(), StatusIs(Code::kUnavailable, HasSubstr("hello")));
  ASSERT_TRUE(agent_.Start(guest_, socket_));
  EXPECT_THAT(client->Hello(), IsOk());
}

}  // namespace
}  // namespace hv::agent
