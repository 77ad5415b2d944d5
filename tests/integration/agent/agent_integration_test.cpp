// hvpatch-agent in the real guest: the harness appends the freshly built binary to the initramfs,
// the guest's /init starts it with no arguments, and the host talks to it through QEMU's chardev
// socket behind the virtio-serial port org.hvpatch.agent.0.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "base/hex.h"
#include "guest-agent/agent_client.h"
#include "status_matchers.h"
#include "tests/harness/test_vm.h"

namespace hv::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using hv::testing::TestVm;
using hv::testing::TestVmOptions;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

class AgentIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TestVmOptions o;
    o.agent = true;
    o.extra_append = "loglevel=6";  // show the agent's kmsg notice on the console
    auto vm = TestVm::Start(o);
    ASSERT_THAT(vm, IsOk());
    vm_ = std::move(*vm).release();
  }
  static void TearDownTestSuite() {
    delete vm_;
    vm_ = nullptr;
  }

  // The agent may still be finding its port right after boot, or restarting: retry the connect
  // for a bounded time.
  static std::unique_ptr<AgentClient> ConnectWithin(int seconds, AgentClientOptions options = {}) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    Status last;
    while (std::chrono::steady_clock::now() < until) {
      auto c = AgentClient::Connect(vm_->agent_path(), options);
      if (c.ok()) return std::move(*c);
      last = c.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    ADD_FAILURE() << "no agent within " << seconds << " s: " << last.message() << "\nguest log: "
                  << vm_->Run("cat /run/hvpatch-agent.log").value().output;
    return nullptr;
  }

  static TestVm* vm_;
};
TestVm* AgentIntegrationTest::vm_ = nullptr;

TEST_F(AgentIntegrationTest, TheInitramfsStartsTheAgent) {
  ASSERT_NE(vm_, nullptr);
  auto client = ConnectWithin(60);  // wait for it, so its console line is out
  ASSERT_TRUE(client);
  const std::string console = vm_->Console();
  EXPECT_THAT(console, HasSubstr("hvpatch-init: agent pid"));
  EXPECT_THAT(console, HasSubstr("hvpatch-agent 0.1.0: started, serving virtio-serial port 'org.hvpatch.agent.0'"));
  auto log = vm_->Check("cat /run/hvpatch-agent.log");
  ASSERT_THAT(log, IsOk());
  EXPECT_THAT(*log, HasSubstr("serving virtio-serial port"));
}

TEST_F(AgentIntegrationTest, HelloMatchesUnameAndTheKernelNotes) {
  ASSERT_NE(vm_, nullptr);
  auto client = ConnectWithin(60);
  ASSERT_TRUE(client);
  auto hello = client->Hello();
  ASSERT_THAT(hello, IsOk());
  auto uname = vm_->Check("uname -r");
  ASSERT_THAT(uname, IsOk());
  EXPECT_EQ(hello->release, Trim(*uname));
  EXPECT_TRUE(hello->HasCapability("sysfs_abi=6.1"));

  // The GNU build-id note as the guest's own tools show it: header (namesz 4, descsz 20, type 3),
  // "GNU\0", then the 20 bytes.
  auto hex = vm_->Check("od -An -v -tx1 /sys/kernel/notes | tr -d ' \\n'");
  ASSERT_THAT(hex, IsOk());
  const std::string marker = "040000001400000003000000474e5500";
  const size_t at = hex->find(marker);
  ASSERT_NE(at, std::string::npos) << *hex;
  EXPECT_EQ(HexString(hello->build_id), hex->substr(at + marker.size(), 40));
}

TEST_F(AgentIntegrationTest, VerifyReadsTheFtraceNopOfCmdlineProcShow) {
  ASSERT_NE(vm_, nullptr);
  auto client = ConnectWithin(60);
  ASSERT_TRUE(client);
  auto symbols = client->Kallsyms();
  ASSERT_THAT(symbols, IsOk());
  EXPECT_GT(symbols->size(), 50000u);
  uint64_t address = 0;
  for (const KernelSymbol& s : *symbols) {
    if (s.name == "cmdline_proc_show" && s.module.empty()) address = s.address;
  }
  ASSERT_NE(address, 0u);
  auto grep = vm_->Check("grep ' cmdline_proc_show$' /proc/kallsyms");
  ASSERT_THAT(grep, IsOk());
  EXPECT_EQ(grep->substr(0, 16), Hex(address).substr(2));

  auto bytes = client->Verify(address, 5);
  ASSERT_THAT(bytes, IsOk());
  EXPECT_THAT(*bytes, ElementsAre(0x0f, 0x1f, 0x44, 0x00, 0x00));
  EXPECT_THAT(client->Verify(0x10, 5), StatusIs(Code::kNotFound, HasSubstr("is not mapped")));
}

TEST_F(AgentIntegrationTest, LivepatchAndFtraceStateOfACleanGuest) {
  ASSERT_NE(vm_, nullptr);
  auto client = ConnectWithin(60);
  ASSERT_TRUE(client);
  auto lp = client->GetLivepatchState();
  ASSERT_THAT(lp, IsOk());
  EXPECT_TRUE(lp->available);  // CONFIG_LIVEPATCH=y
  EXPECT_TRUE(lp->patches.empty());
  auto ft = client->GetFtraceState();
  ASSERT_THAT(ft, IsOk());
  EXPECT_TRUE(ft->available);  // /init mounts tracefs
}

TEST_F(AgentIntegrationTest, PublishStateShowsInTheGuestAndRevertRemovesIt) {
  ASSERT_NE(vm_, nullptr);
  auto client = ConnectWithin(60);
  ASSERT_TRUE(client);
  LivepatchPatch p;
  p.name = "hvp_sample";
  p.enabled = true;
  p.stack_order = 1;
  p.objects.push_back({"vmlinux", true, {{"meminfo_proc_show", 1}}});
  auto published = client->PublishState({p});
  ASSERT_THAT(published, IsOk());
  EXPECT_EQ(published->root, "/run/hvpatch/livepatch");
  EXPECT_EQ(published->sysfs_abi, "6.1");
  auto out = vm_->Check(
      "d=/run/hvpatch/livepatch/hvp_sample; cat $d/enabled $d/transition $d/vmlinux/patched;"
      "test -d $d/vmlinux/meminfo_proc_show,1 && echo dir-ok; test -e $d/replace || echo no-replace");
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(*out, "1\n0\n1\ndir-ok\nno-replace\n");

  ASSERT_THAT(client->PublishState({}), IsOk());
  auto gone = vm_->Check("test ! -e /run/hvpatch/livepatch/hvp_sample && echo gone");
  ASSERT_THAT(gone, IsOk());
  EXPECT_EQ(*gone, "gone\n");
}

TEST_F(AgentIntegrationTest, TheAgentSurvivesHostReconnectsWithoutSpinning) {
  ASSERT_NE(vm_, nullptr);
  auto pid = vm_->Check("pidof hvpatch-agent");
  ASSERT_THAT(pid, IsOk());
  {
    auto client = ConnectWithin(60);
    ASSERT_TRUE(client);
    ASSERT_THAT(client->Hello(), IsOk());
  }  // disconnected: the port's reads now return 0
  // CPU ticks (utime + stime) the agent uses over 3 s with no host: a busy loop would use ~300.
  const std::string ticks = "awk '{print $14 + $15}' /proc/" + Trim(*pid) + "/stat";
  auto before = vm_->Check(ticks);
  ASSERT_THAT(before, IsOk());
  std::this_thread::sleep_for(std::chrono::seconds(3));
  auto after = vm_->Check(ticks);
  ASSERT_THAT(after, IsOk());
  EXPECT_LT(std::stol(*after) - std::stol(*before), 30);
  for (int i = 0; i < 3; ++i) {
    auto client = ConnectWithin(30);
    ASSERT_TRUE(client);
    EXPECT_THAT(client->Hello(), IsOk());
  }
  auto same = vm_->Check("pidof hvpatch-agent");
  ASSERT_THAT(same, IsOk());
  EXPECT_EQ(*same, *pid);
}

// Every hvpatch command is one session: connect, sync, a few requests, close. Back-to-back
// sessions once lost a request sent right after a good sync (the agent closed and reopened its
// port on the old host's disconnect, and the driver discards a closing port's input): the host
// waited out its 10 s call timeout. No session may lose its sync or its request.
TEST_F(AgentIntegrationTest, BackToBackSessionsLoseNoRequest) {
  ASSERT_NE(vm_, nullptr);
  ASSERT_TRUE(ConnectWithin(60));  // the agent is up
  AgentClientOptions options;
  options.call_timeout_ms = 5000;
  constexpr int kSessions = 300;
  int failed = 0;
  std::string first_failure;
  for (int i = 0; i < kSessions; ++i) {
    LivepatchPatch p;
    p.name = "hvp_session_" + std::to_string(i);
    p.enabled = true;
    p.objects.push_back({"vmlinux", true, {{"meminfo_proc_show", 1}}});
    auto client = AgentClient::Connect(vm_->agent_path(), options);
    Status s = client.ok() ? (*client)->PublishState({p}).status() : client.status();
    if (!s.ok() && failed++ == 0) first_failure = "session " + std::to_string(i) + ": " + s.message();
  }
  EXPECT_EQ(failed, 0) << first_failure << "\nguest log: "
                       << vm_->Run("cat /run/hvpatch-agent.log").value().output;
  // The last session's state is what the guest shows.
  auto out = vm_->Check("ls /run/hvpatch/livepatch");
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(*out, "hvp_session_" + std::to_string(kSessions - 1) + "\n");
  auto client = ConnectWithin(30);
  ASSERT_TRUE(client);
  ASSERT_THAT(client->PublishState({}), IsOk());
}

TEST_F(AgentIntegrationTest, AnAgentKilledMidRequestGivesAClearErrorAndRestarts) {
  ASSERT_NE(vm_, nullptr);
  AgentClientOptions options;
  options.call_timeout_ms = 3000;
  auto client = ConnectWithin(60, options);
  ASSERT_TRUE(client);
  LivepatchPatch p;
  p.name = "hvp_kept";
  p.enabled = true;
  p.objects.push_back({"vmlinux", true, {{"meminfo_proc_show", 1}}});
  ASSERT_THAT(client->PublishState({p}), IsOk());

  // Freeze the agent so the request is in flight when it dies.
  ASSERT_THAT(vm_->Check("kill -STOP $(pidof hvpatch-agent)"), IsOk());
  EXPECT_THAT(client->Hello(), StatusIs(Code::kDeadlineExceeded, HasSubstr("hello: no reply within 3000 ms")));
  ASSERT_THAT(vm_->Check("kill -9 $(pidof hvpatch-agent); sleep 0.5; ! pidof hvpatch-agent"), IsOk());
  // No agent now: the next call fails the handshake, clearly.
  EXPECT_THAT(client->Hello(), StatusIs(Code::kUnavailable, HasSubstr("hello: sync: no sync reply")));
  // The guest side stays consistent: the parity tree outlives the agent process.
  auto kept = vm_->Check("cat /run/hvpatch/livepatch/hvp_kept/enabled");
  ASSERT_THAT(kept, IsOk());
  EXPECT_EQ(*kept, "1\n");

  ASSERT_THAT(vm_->Check("setsid /bin/hvpatch-agent > /run/hvpatch-agent.log 2>&1 < /dev/null & echo started"),
              IsOk());
  // The same client recovers: it reconnects and resynchronizes (QEMU's chardev serves one
  // connection at a time, so this is also how the patcher would see a restarted agent).
  Status last;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (;;) {
    auto hello = client->Hello();
    if (hello.ok()) break;
    last = hello.status();
    ASSERT_LT(std::chrono::steady_clock::now(), until) << "agent did not come back: " << last.message();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  auto kept_after = client->GetLivepatchState();
  EXPECT_THAT(kept_after, IsOk());
  ASSERT_THAT(client->PublishState({}), IsOk());
}

}  // namespace
}  // namespace hv::agent
