// Issue 10, acceptance 4: the fault matrix. Each test produces one fault for real on a TCG guest
// (or, where noted, the closest honest equivalent) and checks the outcome its name states: the
// guest consistent (fully applied or fully reverted, as `list` says), the VM running, and, for
// faults before the commit, not one byte written into the guest.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "base/unix_socket.h"
#include "cli/ledger_file.h"
#include "status_matchers.h"
#include "tests/integration/lifecycle/lifecycle_support.h"

namespace hv {
namespace {

using ::hv::testing::Describe;
using ::hv::testing::HvpatchProcess;
using ::hv::testing::HvpatchRun;
using ::hv::testing::kFtraceNop;
using ::hv::testing::kSampleText;
using ::hv::testing::TestVmOptions;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using json = nlohmann::json;
namespace fs = std::filesystem;

// A unix-socket relay between hvpatch and QEMU's QMP socket. Armed, it forwards the next client
// message that holds `"execute":"cont"` to QEMU and then closes both sides before QEMU's reply
// is relayed: to hvpatch, QEMU closed the connection in the middle of the command.
class QmpRelay {
 public:
  QmpRelay(std::string listen_path, std::string upstream) : path_(std::move(listen_path)), upstream_(std::move(upstream)) {
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    unlink(path_.c_str());
    ok_ = listen_fd_ >= 0 && bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && listen(listen_fd_, 4) == 0;
    thread_ = std::thread([this] { Loop(); });
  }
  ~QmpRelay() {
    stop_ = true;
    thread_.join();
    if (listen_fd_ >= 0) close(listen_fd_);
    unlink(path_.c_str());
  }
  bool ok() const { return ok_; }
  void ArmCutAtCont() { armed_ = true; }
  bool cut() const { return cut_; }

 private:
  void Loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      auto up = ConnectUnixSocket(upstream_, 5000);
      if (!up.ok()) {
        close(client);
        continue;
      }
      Relay(client, *up);  // one client at a time, as QEMU's QMP serves them
      close(client);
      close(*up);
    }
  }
  void Relay(int client, int up) {
    char buf[65536];
    while (!stop_) {
      pollfd p[2] = {{client, POLLIN, 0}, {up, POLLIN, 0}};
      if (poll(p, 2, 100) <= 0) continue;
      if (p[0].revents) {
        ssize_t n = read(client, buf, sizeof buf);
        if (n <= 0) return;
        const std::string chunk(buf, static_cast<size_t>(n));
        if (write(up, buf, static_cast<size_t>(n)) != n) return;
        if (armed_ && chunk.find("\"cont\"") != std::string::npos) {
          armed_ = false;
          cut_ = true;
          // Let QEMU read (and run) the command, then drop both ends before its reply.
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          return;
        }
      }
      if (p[1].revents) {
        ssize_t n = read(up, buf, sizeof buf);
        if (n <= 0) return;
        if (write(client, buf, static_cast<size_t>(n)) != n) return;
      }
    }
  }

  std::string path_, upstream_;
  int listen_fd_ = -1;
  bool ok_ = false;
  std::atomic<bool> stop_{false}, armed_{false}, cut_{false};
  std::thread thread_;
};

class FaultTest : public testing::LifecycleFixture {
 protected:
  // The guest's device node of the agent's virtio-serial port.
  std::string AgentPortInGuest() {
    std::string p = Guest(
        "for d in /sys/class/virtio-ports/*; do [ \"$(cat $d/name)\" = org.hvpatch.agent.0 ] && echo /dev/${d##*/}; done; true");
    while (!p.empty() && p.back() == '\n') p.pop_back();
    return p;
  }
  // The entry bytes of cmdline_proc_show are the ftrace nop: the guest holds no trampoline.
  void ExpectEntryUntouched() {
    const auto bytes = KernelBytes(KallsymsAddress("cmdline_proc_show"), 5);
    EXPECT_EQ(bytes, kFtraceNop) << "cmdline_proc_show's entry was written";
  }
  // Connects to the host end of the agent's port, sends a few bytes, and counts what comes back
  // within `ms` (at most 4 MiB).
  std::size_t BytesFromAgentPort(int ms) {
    auto fd = ConnectUnixSocket(vm_dir_ + "/agent.sock", 2000);
    if (!fd.ok()) {
      ADD_FAILURE() << fd.status().message();
      return 0;
    }
    if (write(*fd, "hello\n", 6) != 6) ADD_FAILURE() << "writing to the agent port";
    std::size_t total = 0;
    char buf[65536];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < deadline && total < (4u << 20)) {
      pollfd p{*fd, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const ssize_t n = read(*fd, buf, sizeof buf);
      if (n <= 0) break;
      total += static_cast<std::size_t>(n);
    }
    close(*fd);
    return total;
  }
  bool VmRunning() {
    HvpatchRun info = Hv({"--json", "--no-agent", "info", Domain()});
    EXPECT_EQ(info.exit_code, 0) << Describe(info);
    json j = json::parse(info.out, nullptr, false);
    return j.is_object() && j["running"] == true;
  }
  // The largest VmHWM (peak RSS, KiB) seen while `p` runs, and its end.
  HvpatchRun WaitMeasuringMemory(HvpatchProcess& p, int timeout_s, long* peak_kib) {
    *peak_kib = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (p.Alive() && std::chrono::steady_clock::now() < deadline) {
      std::ifstream status("/proc/" + std::to_string(p.pid()) + "/status");
      std::string line;
      while (std::getline(status, line)) {
        if (line.rfind("VmHWM:", 0) == 0) *peak_kib = std::max(*peak_kib, std::atol(line.c_str() + 6));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return p.Wait(1);
  }
  // The ledger file hvpatch uses for this VM (cli::StateFileStem of QemuVm::Identity).
  std::string LedgerPath() {
    char real[PATH_MAX];
    const std::string qmp = vm_dir_ + "/qmp.sock";
    const std::string path = realpath(qmp.c_str(), real) ? std::string(real) : qmp;
    return state_dir_ + "/" + cli::StateFileStem("qemu-qmp:" + path) + ".json";
  }
};

// QEMU SIGKILLed while an apply holds the VM paused: hvpatch ends with an error (never hangs).
// A new QEMU at the same path is a new boot: the ledger (patch 'applying', VM paused) is
// archived, nothing is resumed or written on its behalf, and apply then works.
TEST_F(FaultTest, QemuKilledInApplyPauseThenNewQemuIsUnpatchedAndApplyWorks) {
  ASSERT_NO_FATAL_FAILURE(Boot({}));
  const std::string original = Guest("cat /proc/cmdline");
  HvpatchProcess& p = Start({"apply", Domain(), Patch("hvp_sample")}, {"HVPATCH_TEST_STOP_AT=code_written:1"});
  ASSERT_TRUE(p.WaitStopped(180)) << Describe(p.Result());
  ASSERT_EQ(kill(vm_->qemu_pid(), SIGKILL), 0);
  p.Continue();
  HvpatchRun dead = p.Wait(120);
  EXPECT_FALSE(dead.timed_out) << "hvpatch hung after QEMU died";
  EXPECT_EQ(dead.exit_code, 1) << Describe(dead);

  ASSERT_NO_FATAL_FAILURE(Restart({}));
  HvpatchRun l = Hv({"--json", "list", Domain()});
  ASSERT_EQ(l.exit_code, 0) << Describe(l);
  json j = json::parse(l.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << l.out;
  EXPECT_TRUE(j["patches"].empty()) << l.out;
  ASSERT_EQ(j["recovered"].size(), 1u) << l.out;
  EXPECT_THAT(j["recovered"][0].get<std::string>(), HasSubstr("its patches (hvp_sample) went with that boot"));
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
  EXPECT_TRUE(VmRunning());

  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

// QMP closed by QEMU in the middle of `cont`, the resume that ends the apply's pause (every
// trampoline already written). Produced with a relay in front of the real QMP socket that drops
// both ends after forwarding the command: QEMU runs it, hvpatch never gets the reply. hvpatch
// fails, keeps the patch as 'applying', and the next `list` finds it fully applied.
TEST_F(FaultTest, QmpClosedMidCommandEndsFullyAppliedAfterRecovery) {
  ASSERT_NO_FATAL_FAILURE(Boot({}));
  const std::string original = Guest("cat /proc/cmdline");
  const std::string relay_path = vm_dir_ + "/relay.sock";
  QmpRelay relay(relay_path, vm_dir_ + "/qmp.sock");
  ASSERT_TRUE(relay.ok());
  const std::string domain = "qmp:" + relay_path;
  HvpatchProcess& p = Start({"apply", domain, Patch("hvp_sample")}, {"HVPATCH_TEST_STOP_AT=code_written:1"});
  ASSERT_TRUE(p.WaitStopped(180)) << Describe(p.Result());
  relay.ArmCutAtCont();
  p.Continue();
  HvpatchRun cut = p.Wait(120);
  EXPECT_TRUE(relay.cut()) << "the relay never saw the resume";
  EXPECT_FALSE(cut.timed_out);
  EXPECT_EQ(cut.exit_code, 1) << Describe(cut);
  EXPECT_THAT(cut.err, HasSubstr("the ledger keeps patch 'hvp_sample' as applying")) << Describe(cut);

  HvpatchRun l = Hv({"--json", "list", domain});
  ASSERT_EQ(l.exit_code, 0) << Describe(l);
  json j = json::parse(l.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << l.out;
  ASSERT_EQ(j["patches"].size(), 1u) << l.out;
  EXPECT_EQ(j["patches"][0]["state"], "applied");
  EXPECT_EQ(j["patches"][0]["consistent"], true);
  EXPECT_THAT(j["recovered"].dump(), HasSubstr("recovered patch 'hvp_sample' interrupted while applying: fully applied"));
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  EXPECT_TRUE(VmRunning());
  HvpatchRun r = Hv({"revert", domain, "hvp_sample"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
}

// QEMU started with its own gdbstub (`-gdb unix:...`) and a client attached to it. QEMU has one
// gdbstub: hvpatch replaces it (HMP gdbserver, in a private directory, so its socket path can
// never be taken by another), the other client is disconnected, and the apply succeeds.
// A socket path that is "taken" cannot happen to hvpatch's own gdbstub (a fresh mkdtemp
// directory per connection); the QEMU-owned socket here is the closest real case.
TEST_F(FaultTest, GdbstubAlreadyAttachedIsDisplacedAndApplySucceeds) {
  TestVmOptions o;
  const std::string gdb_path = vm_dir_ + "/operator-gdb.sock";
  o.extra_qemu_args = {"-gdb", "unix:" + gdb_path + ",server=on,wait=off"};
  ASSERT_NO_FATAL_FAILURE(Boot(o));
  const std::string original = Guest("cat /proc/cmdline");
  auto other = ConnectUnixSocket(gdb_path, 5000);
  ASSERT_THAT(other, IsOk());
  // The attach stopped the VM; the other client lets it run on (QMP cont works while attached).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_NO_FATAL_FAILURE(Qmp("cont"));
  EXPECT_TRUE(VmRunning());

  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  EXPECT_TRUE(VmRunning());
  // The other client's connection was closed by QEMU (read drains the stop reply, then EOF).
  char buf[4096];
  ssize_t n = 1;
  for (int i = 0; i < 50 && n > 0; ++i) {
    pollfd p{*other, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    n = read(*other, buf, sizeof buf);
  }
  EXPECT_EQ(n, 0) << "the other gdbstub client is still connected";
  close(*other);
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
}

// The state directory is full: the ledger's write-ahead fails with ENOSPC before the pause, so
// apply is refused and the guest is not touched. A full file system is produced for real by
// making the ledger's temporary file a link to /dev/full (its writes fail with ENOSPC exactly
// as on a full disk); filling a real file system would need a dedicated mount.
TEST_F(FaultTest, StateDirFullRefusesApplyBeforeAnyGuestWrite) {
  ASSERT_NO_FATAL_FAILURE(Boot({}));
  const std::string original = Guest("cat /proc/cmdline");
  const std::string arena_before = ArenaBytes();
  fs::create_directories(state_dir_);
  ASSERT_EQ(symlink("/dev/full", (LedgerPath() + ".tmp").c_str()), 0) << strerror(errno);
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  EXPECT_EQ(a.exit_code, 1) << Describe(a);
  EXPECT_THAT(a.err, HasSubstr("No space left on device")) << Describe(a);
  EXPECT_EQ(ArenaBytes(), arena_before) << "the arena was written";
  ExpectEntryUntouched();
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
  EXPECT_TRUE(VmRunning());
  // Space again: apply works.
  fs::remove(LedgerPath() + ".tmp");
  HvpatchRun ok = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(ok.exit_code, 0) << Describe(ok);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

// The state directory is on a read-only file system (a read-only bind mount in a private mount
// namespace, so nothing outside the test sees it): refused before connecting to the VM.
TEST_F(FaultTest, StateDirReadOnlyRefusesApplyBeforeAnyGuestWrite) {
  ASSERT_NO_FATAL_FAILURE(Boot({}));
  const std::string original = Guest("cat /proc/cmdline");
  const std::string arena_before = ArenaBytes();
  const std::string wrapper = scratch_dir_ + "/hvpatch-ro-state";
  {
    std::ofstream w(wrapper);
    w << "#!/bin/sh\n"
         "# Runs hvpatch with the state directory mounted read-only, in its own mount namespace.\n"
         "exec unshare -m sh -c 'mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"' "
         "sh '" << state_dir_ << "' '" << testing::HvpatchBinary() << "' \"$@\"\n";
  }
  ASSERT_EQ(chmod(wrapper.c_str(), 0755), 0);
  const std::string real_bin = testing::HvpatchBinary();
  setenv("HVPATCH_BIN", wrapper.c_str(), 1);
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  setenv("HVPATCH_BIN", real_bin.c_str(), 1);
  EXPECT_EQ(a.exit_code, 1) << Describe(a);
  EXPECT_THAT(a.err, HasSubstr("Read-only file system")) << Describe(a);
  EXPECT_EQ(ArenaBytes(), arena_before) << "the arena was written";
  ExpectEntryUntouched();
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
  EXPECT_TRUE(VmRunning());
}

// The agent's port spews random bytes without end (a hostile guest). The host stays bounded
// (time and memory) and the apply finishes, unconfirmed, saying why.
TEST_F(FaultTest, AgentFloodingGarbageLeavesApplyUnconfirmedWithReasonAndBounded) {
  TestVmOptions o;
  o.agent = false;  // the port is the hostile guest's
  ASSERT_NO_FATAL_FAILURE(Boot(o));
  const std::string port = AgentPortInGuest();
  ASSERT_THAT(port, ::testing::StartsWith("/dev/vport"));
  Guest("(while :; do cat /dev/urandom; done) > " + port + " 2>/dev/null &\necho started");
  // The flood is real: the host end of the port receives it.
  EXPECT_GE(BytesFromAgentPort(3000), 64u * 1024) << "the guest's garbage does not reach the host";
  long peak_kib = 0;
  HvpatchProcess& p = Start({"--json", "apply", Domain(), Patch("hvp_sample")});
  HvpatchRun a = WaitMeasuringMemory(p, 300, &peak_kib);
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  json j = json::parse(a.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << a.out;
  EXPECT_EQ(j["confirmed"], false);
  EXPECT_THAT(j["confirmation"].get<std::string>(), HasSubstr("no agent")) << a.out;
  std::printf("[figure] agent flooding garbage: apply %.1f s, hvpatch peak RSS %ld KiB, confirmation: %s\n", a.seconds,
              peak_kib, j["confirmation"].get<std::string>().c_str());
  EXPECT_LT(a.seconds, 120.0);
  EXPECT_LT(peak_kib, 256 * 1024);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  HvpatchRun r = Hv({"--no-agent", "revert", Domain(), "hvp_sample"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

// The agent's port is read but never answered (an agent stuck past every timeout): the sync
// times out, and the apply finishes unconfirmed, saying why, within the sync timeout.
TEST_F(FaultTest, AgentNeverAnsweringLeavesApplyUnconfirmedWithReasonAndBounded) {
  TestVmOptions o;
  o.agent = false;
  ASSERT_NO_FATAL_FAILURE(Boot(o));
  const std::string port = AgentPortInGuest();
  ASSERT_THAT(port, ::testing::StartsWith("/dev/vport"));
  Guest("cat " + port + " > /dev/null 2>&1 &\necho started");
  EXPECT_EQ(BytesFromAgentPort(1000), 0u) << "the port answers";
  long peak_kib = 0;
  HvpatchProcess& p = Start({"--json", "apply", Domain(), Patch("hvp_sample")});
  HvpatchRun a = WaitMeasuringMemory(p, 300, &peak_kib);
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  json j = json::parse(a.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << a.out;
  EXPECT_EQ(j["confirmed"], false);
  EXPECT_THAT(j["confirmation"].get<std::string>(), HasSubstr("no agent")) << a.out;
  std::printf("[figure] agent never answering: apply %.1f s, hvpatch peak RSS %ld KiB, confirmation: %s\n", a.seconds,
              peak_kib, j["confirmation"].get<std::string>().c_str());
  EXPECT_LT(a.seconds, 120.0);
  EXPECT_LT(peak_kib, 256 * 1024);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  HvpatchRun r = Hv({"--no-agent", "revert", Domain(), "hvp_sample"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

// The real agent answers the sync, then stops answering (SIGSTOP in the guest) before the
// confirmation: the confirmation times out and the patch stays, unconfirmed, with the reason.
TEST_F(FaultTest, AgentStoppedBeforeConfirmLeavesApplyUnconfirmedWithReason) {
  ASSERT_NO_FATAL_FAILURE(Boot({}));
  HvpatchProcess& p = Start({"--json", "apply", Domain(), Patch("hvp_sample")}, {"HVPATCH_TEST_STOP_AT=applied"});
  ASSERT_TRUE(p.WaitStopped(180)) << Describe(p.Result());
  Guest("kill -STOP $(pidof hvpatch-agent)");
  p.Continue();
  HvpatchRun a = p.Wait(300);
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  json j = json::parse(a.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << a.out;
  EXPECT_EQ(j["confirmed"], false);
  EXPECT_THAT(j["confirmation"].get<std::string>(), AnyOf(HasSubstr("deadline"), HasSubstr("timed out"), HasSubstr("no reply")))
      << a.out;
  std::printf("[figure] agent stopped before confirm: apply %.1f s after the stop, confirmation: %s\n", a.seconds,
              j["confirmation"].get<std::string>().c_str());
  EXPECT_LT(a.seconds, 200.0);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  Guest("kill -CONT $(pidof hvpatch-agent)");
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

}  // namespace
}  // namespace hv
