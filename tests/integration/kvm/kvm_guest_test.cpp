// The KVM suite's checks (issue 13), run INSIDE the nested lab's L1 guest against an L2 guest
// that the project's own harness starts under `qemu-system-x86_64 -accel kvm -cpu host`, with
// the arena and the agent port exactly as the TCG suites have them. The host side
// (kvm_lab_test.cpp) boots L1, puts this binary and hvpatch there, runs it and reads its
// results. Run on a host with /dev/kvm it tests the same things there.
//
// Every check goes through the real `hvpatch` binary, as an operator runs it, and what the L2
// guest prints is the proof (each test patch replaces a function whose output the guest shows).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "status_matchers.h"
#include "tests/harness/guest_output.h"
#include "tests/harness/kernel_text.h"
#include "tests/harness/test_vm.h"
#include "tests/integration/patch/hvpatch_process.h"
#include "vmm/page_walk.h"
#include "vmm/qemu_vm.h"
#include "vmm/vm.h"

namespace hv {
namespace {

using ::hv::testing::HvpatchProcess;
using ::hv::testing::HvpatchRun;
using ::hv::testing::TestVm;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;
namespace fs = std::filesystem;

const std::vector<std::uint8_t> kFtraceNop = {0x0f, 0x1f, 0x44, 0x00, 0x00};
constexpr char kSampleText[] = "hvpatch: this kernel was live-patched\n";
constexpr char kTwoText[] = "hvp_two: cmdline\nhvp_two: version\n";
constexpr char kResumedNote[] = "resumed the VM that an interrupted hvpatch left paused";

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string Describe(const HvpatchRun& r) {
  return "exit " + std::to_string(r.exit_code) + " signal " + std::to_string(r.signal) +
         (r.timed_out ? " (timed out)" : "") + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

std::uint64_t ParseHex(const json& v) {
  return v.is_string() ? std::strtoull(v.get<std::string>().c_str(), nullptr, 16) : 0;
}

void Figure(const std::string& what) {
  std::printf("[figure] %s\n", what.c_str());
  std::fflush(stdout);
}

class KvmGuestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(fs::exists(testing::HvpatchBinary())) << "hvpatch not found at '" << testing::HvpatchBinary() << "'";
    ASSERT_TRUE(fs::exists("/dev/kvm")) << "no /dev/kvm: this suite runs where KVM works (the lab's L1)";
    testing::TestVmOptions o;
    o.accel = "kvm";
    o.mem_mib = 256;
    o.boot_timeout_s = 300;
    const auto t0 = std::chrono::steady_clock::now();
    auto g = TestVm::Start(o);
    ASSERT_THAT(g, IsOk());
    guest_ = g->release();
    Figure("L2 boot under KVM to ready: " +
           std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()) + " s");
    auto cmdline = guest_->Check("cat /proc/cmdline");
    ASSERT_THAT(cmdline, IsOk());
    boot_cmdline_ = *cmdline;
    auto version = guest_->Check("cat /proc/version");
    ASSERT_THAT(version, IsOk());
    boot_version_ = *version;
    char tmpl[] = "/tmp/hvpatch-kvm-state-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    state_dir_ = tmpl;
  }
  static void TearDownTestSuite() {
    if (guest_) {
      EXPECT_THAT(guest_->Stop(), IsOk());
    }
    delete guest_;
    guest_ = nullptr;
    std::error_code ec;
    if (!state_dir_.empty()) fs::remove_all(state_dir_, ec);
  }

  void SetUp() override {
    ASSERT_NE(guest_, nullptr) << "the L2 guest did not boot";
    char tmpl[] = "/tmp/hvpatch-kvm-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    scratch_dir_ = tmpl;
  }

  // Leaves L2 as it was: reverts whatever the ledger holds (a `list` first recovers what a
  // killed run left), then checks the guest prints its boot texts again.
  void TearDown() override {
    if (!guest_) return;
    processes_.clear();
    HvpatchRun l = Hv({"--json", "list", Domain()});
    json j = json::parse(l.out, nullptr, false);
    if (l.exit_code == 0 && j.is_object() && j["patches"].is_array()) {
      for (auto it = j["patches"].rbegin(); it != j["patches"].rend(); ++it) {
        HvpatchRun r = Hv({"revert", Domain(), (*it)["name"].get<std::string>()});
        EXPECT_EQ(r.exit_code, 0) << "cleanup: " << Describe(r);
      }
    } else {
      ADD_FAILURE() << "cleanup: list failed: " << Describe(l);
    }
    EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), boot_cmdline_ + boot_version_) << "L2 was left patched";
    std::error_code ec;
    fs::remove_all(scratch_dir_, ec);
  }

  static std::string Domain() { return guest_->qmp_target(); }
  static std::string Patch(const std::string& name) { return testing::PatchModule(name); }

  HvpatchProcess& Start(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    std::vector<std::string> a = {"--state-dir", state_dir_};
    a.insert(a.end(), args.begin(), args.end());
    processes_.push_back(
        std::make_unique<HvpatchProcess>(a, env, scratch_dir_ + "/run-" + std::to_string(++runs_)));
    return *processes_.back();
  }
  HvpatchRun Hv(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    return Start(args, env).Wait(600);
  }

  static std::string Guest(const std::string& script, int timeout_s = 120) {
    auto r = guest_->Check(script, timeout_s);
    if (!r.ok()) {
      ADD_FAILURE() << "L2 command failed: " << r.status().message();
      return "<L2 command failed>";
    }
    return *r;
  }

  static std::uint64_t KallsymsAddress(const std::string& name) {
    return std::strtoull(Guest("awk '$3 == \"" + name + "\" { print $1; exit }' /proc/kallsyms").c_str(), nullptr, 16);
  }

  // Kernel text read from the host side through our own QEMU connection (not through hvpatch).
  static std::vector<std::uint8_t> KernelBytes(std::uint64_t va, std::size_t n) {
    auto bytes = ::hv::testing::ReadKernelText(Domain(), va, n);
    if (!bytes.ok()) {
      ADD_FAILURE() << "reading L2 kernel text: " << bytes.status().message();
      return {};
    }
    return std::move(*bytes);
  }

  static void WaitSleeping(const std::string& pid) {
    Guest("for i in $(seq 100); do grep -q '^State:.*S' /proc/" + pid + "/status && exit 0; usleep 100000; done; exit 1");
  }

  static TestVm* guest_;
  static std::string boot_cmdline_, boot_version_, state_dir_;
  std::string scratch_dir_;
  int runs_ = 0;
  std::vector<std::unique_ptr<HvpatchProcess>> processes_;
};

TestVm* KvmGuestTest::guest_ = nullptr;
std::string KvmGuestTest::boot_cmdline_;
std::string KvmGuestTest::boot_version_;
std::string KvmGuestTest::state_dir_;

// L2 really runs under KVM: QEMU says so, and so does the guest kernel. Both lines go to the log.
TEST_F(KvmGuestTest, GuestRunsUnderKvm) {
  auto vm = vmm::QemuVm::Connect(guest_->qmp_path());
  ASSERT_THAT(vm, IsOk());
  auto kvm = (*vm)->qmp().Execute("query-kvm");
  ASSERT_THAT(kvm, IsOk());
  std::printf("L2 QEMU query-kvm: %s\n", kvm->dump().c_str());
  EXPECT_EQ((*kvm)["enabled"], true);
  EXPECT_EQ((*kvm)["present"], true);
  const std::string dmesg = Guest("dmesg | grep 'Hypervisor detected'");
  std::printf("L2 dmesg: %s", dmesg.c_str());
  std::fflush(stdout);
  EXPECT_THAT(dmesg, HasSubstr("Hypervisor detected: KVM"));
}

// What KVM allows: a code write straight into guest RAM (no gdbstub) while the vCPUs are
// stopped is what the vCPUs execute once they run again, even for code they ran just before.
// (Under TCG the same write is not seen: QEMU keeps running its stale translation, lab notes.)
TEST_F(KvmGuestTest, CodeWrittenStraightIntoRamRunsAtOnce) {
  const std::uint64_t site = KallsymsAddress("cmdline_proc_show");
  const std::uint64_t target = KallsymsAddress("version_proc_show");
  ASSERT_NE(site, 0u);
  ASSERT_NE(target, 0u);
  {
  // QEMU serves one QMP client at a time: this connection ends before KernelBytes opens its own.
  auto vm = vmm::QemuVm::Connect(guest_->qmp_path());
  ASSERT_THAT(vm, IsOk());
  EXPECT_TRUE((*vm)->kvm());
  ASSERT_STREQ((*vm)->code_write_path(), "direct");
  std::uint8_t jmp[5] = {0xe9};
  const std::int32_t rel = static_cast<std::int32_t>(target - (site + 5));
  std::memcpy(jmp + 1, &rel, 4);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    // The old code runs right before the pause, so any cached decode of it is fresh.
    ASSERT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
    ASSERT_THAT((*vm)->Pause(), IsOk());
    Status w = (*vm)->WriteCode(site, jmp);
    ASSERT_THAT((*vm)->Resume(), IsOk());
    ASSERT_THAT(w, IsOk());
    EXPECT_EQ(Guest("cat /proc/cmdline"), boot_version_) << "the vCPU ran the old bytes";
    ASSERT_THAT((*vm)->Pause(), IsOk());
    w = (*vm)->WriteCode(site, kFtraceNop);
    ASSERT_THAT((*vm)->Resume(), IsOk());
    ASSERT_THAT(w, IsOk());
  }
  }
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(KernelBytes(site, 5), kFtraceNop);
}

// `info` reads the guest kernel from L2's memory alone (no agent): release and build-id as the
// guest reports them, kallsyms decoded from memory.
TEST_F(KvmGuestTest, InfoReadsTheGuestKernel) {
  HvpatchRun r = Hv({"--json", "--no-agent", "info", Domain()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  json j = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["release"], Trim(Guest("uname -r")));
  EXPECT_EQ(j["symbol_source"], "guest memory (kallsyms)");
  EXPECT_GT(j["vmlinux_symbols"].get<std::uint64_t>(), 50000u);
  EXPECT_EQ(j["cpus"], 2);
  EXPECT_EQ(j["running"], true);
  EXPECT_TRUE(j["arena"].is_object()) << r.out;
  // The build-id the guest publishes in /sys/kernel/notes (a GNU note of type 3).
  const std::string notes = Guest("od -An -tx1 -v /sys/kernel/notes | tr -d ' \\n'");
  EXPECT_THAT(notes, HasSubstr(j["build_id"].get<std::string>())) << r.out;
  Figure("info under KVM: release=" + j["release"].get<std::string>() + " build_id=" +
         j["build_id"].get<std::string>() + " symbols=" + j["symbols"].dump() + " wall_s=" + std::to_string(r.seconds));
}

// The sample patch applies, the guest shows it, it lists, it reverts.
TEST_F(KvmGuestTest, SampleAppliesListsReverts) {
  const std::uint64_t entry = KallsymsAddress("cmdline_proc_show");
  ASSERT_NE(entry, 0u);
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop);
  // Run the old function first, so the code a write replaces is code the vCPU has executed.
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);

  HvpatchRun r = Hv({"--json", "apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  json j = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["name"], "hvp_sample");
  ASSERT_EQ(j["functions"].size(), 1u) << r.out;
  EXPECT_EQ(j["functions"][0]["name"], "cmdline_proc_show");
  EXPECT_EQ(ParseHex(j["functions"][0]["site"]), entry);
  EXPECT_EQ(j["confirmed"], true) << "confirmation: " << j["confirmation"];
  Figure("hvp_sample apply under KVM: pause_us=" + j["pause_us"].dump() + " threads_scanned=" +
         j["threads_scanned"].dump() + " wall_s=" + std::to_string(r.seconds));
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  const std::vector<std::uint8_t> site = KernelBytes(entry, 5);
  ASSERT_EQ(site.size(), 5u);
  EXPECT_EQ(site[0], 0xe9);
  std::int32_t rel = 0;
  std::memcpy(&rel, site.data() + 1, 4);
  EXPECT_EQ(entry + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel)),
            ParseHex(j["functions"][0]["new_addr"]));
  // The agent's livepatch-style tree in L2 shows it too.
  EXPECT_EQ(Guest("cat /run/hvpatch/livepatch/hvp_sample/enabled"), "1\n");

  HvpatchRun l = Hv({"list", Domain()});
  EXPECT_EQ(l.exit_code, 0) << Describe(l);
  EXPECT_THAT(l.out, HasSubstr("hvp_sample  applied"));
  EXPECT_THAT(l.out, HasSubstr("vmlinux cmdline_proc_show"));

  HvpatchRun v = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(v.exit_code, 0) << Describe(v);
  EXPECT_THAT(v.out, HasSubstr("reverted patch 'hvp_sample': 1 function(s)"));
  Figure("hvp_sample revert under KVM: " + Trim(v.out));
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop);
}

// Two functions switch in one pause: one try, both listed, both changed at once.
TEST_F(KvmGuestTest, TwoFunctionsSwitchInOnePause) {
  HvpatchRun r = Hv({"--json", "apply", Domain(), Patch("hvp_two")});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  json j = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["tries"], 1);
  std::set<std::string> names;
  for (const auto& f : j["functions"]) names.insert(f["name"].get<std::string>());
  EXPECT_EQ(names, (std::set<std::string>{"cmdline_proc_show", "version_proc_show"}));
  Figure("hvp_two apply under KVM (2 functions, one pause): pause_us=" + j["pause_us"].dump());
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), kTwoText);
  HvpatchRun v = Hv({"revert", Domain(), "hvp_two"});
  ASSERT_EQ(v.exit_code, 0) << Describe(v);
  EXPECT_THAT(v.out, HasSubstr("reverted patch 'hvp_two': 2 function(s)"));
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), boot_cmdline_ + boot_version_);
}

// A task asleep in do_nanosleep: exit 3 naming it, L2 untouched; applies once it is gone.
TEST_F(KvmGuestTest, BusyFunctionRefusedThenAppliedWhenIdle) {
  const std::uint64_t entry = KallsymsAddress("do_nanosleep");
  ASSERT_NE(entry, 0u);
  ASSERT_EQ(KernelBytes(entry, 5), kFtraceNop);
  const std::string pid = Trim(Guest("sleep 300 >/dev/null 2>&1 & echo $!"));
  ASSERT_FALSE(pid.empty());
  WaitSleeping(pid);
  HvpatchRun busy = Hv({"--tries", "2", "--retry-delay-ms", "200", "apply", Domain(), Patch("hvp_sleep")});
  EXPECT_EQ(busy.exit_code, 3) << Describe(busy);
  EXPECT_THAT(busy.err, HasSubstr("code busy after 2 tries"));
  EXPECT_THAT(busy.err, HasSubstr("pid " + pid + " (sleep) in do_nanosleep"));
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop) << "L2 was touched";
  Figure("busy under KVM: " + Trim(busy.err));

  Guest("kill " + pid + "; for i in $(seq 100); do grep -q '^State:.*S' /proc/" + pid +
        "/status 2>/dev/null || exit 0; usleep 100000; done; exit 1");
  HvpatchRun ok = Hv({"--json", "apply", Domain(), Patch("hvp_sleep")});
  ASSERT_EQ(ok.exit_code, 0) << Describe(ok);
  const std::vector<std::uint8_t> site = KernelBytes(entry, 5);
  ASSERT_EQ(site.size(), 5u);
  EXPECT_EQ(site[0], 0xe9) << "do_nanosleep does not jump to the new code";
  // The replacement sleeps as long as the original.
  const std::string cs = Guest(testing::kSleep2sCentiseconds);
  EXPECT_GE(std::atoi(cs.c_str()), 200) << cs;
  EXPECT_LT(std::atoi(cs.c_str()), 400) << cs;
  HvpatchRun v = Hv({"revert", Domain(), "hvp_sleep"});
  EXPECT_EQ(v.exit_code, 0) << Describe(v);
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop);
}

// kill -9 of hvpatch inside the pause (the HVPATCH_TEST_STOP_AT hook stops it there), then
// recovery: the next run resumes L2 and brings the patch to fully reverted or fully applied.
TEST_F(KvmGuestTest, KillDuringThePauseThenRecovery) {
  struct Case {
    const char* step;
    const char* recovered;
    std::string guest;
  };
  const std::vector<Case> cases = {
      {"checked", "recovered patch 'hvp_two' interrupted while applying: fully reverted", boot_cmdline_ + boot_version_},
      {"code_written:1", "recovered patch 'hvp_two' interrupted while applying: fully reverted",
       boot_cmdline_ + boot_version_},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.step);
    HvpatchProcess& p = Start({"apply", Domain(), Patch("hvp_two")}, {std::string("HVPATCH_TEST_STOP_AT=") + c.step});
    ASSERT_TRUE(p.WaitStopped(300)) << Describe(p.Result());
    p.Kill9();
    EXPECT_EQ(p.Result().signal, SIGKILL);
    HvpatchRun info = Hv({"--json", "--no-agent", "info", Domain()});
    json ij = json::parse(info.out, nullptr, false);
    ASSERT_TRUE(ij.is_object()) << Describe(info);
    EXPECT_EQ(ij["running"], false) << "the kill inside the pause should leave L2 paused";
    HvpatchRun l = Hv({"--json", "list", Domain()});
    ASSERT_EQ(l.exit_code, 0) << Describe(l);
    json j = json::parse(l.out, nullptr, false);
    ASSERT_TRUE(j.is_object()) << l.out;
    EXPECT_EQ(j["recovered"], json::array({c.recovered, kResumedNote})) << l.out;
    EXPECT_TRUE(j["patches"].empty()) << l.out;
    EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), c.guest);
    Figure(std::string("kill -9 at ") + c.step + " under KVM: " + j["recovered"].dump());
  }
  // Killed after the pause: the patch stays, and the next run records it as applied.
  HvpatchProcess& p = Start({"apply", Domain(), Patch("hvp_two")}, {"HVPATCH_TEST_STOP_AT=resumed"});
  ASSERT_TRUE(p.WaitStopped(300)) << Describe(p.Result());
  p.Kill9();
  HvpatchRun l = Hv({"--json", "list", Domain()});
  json j = json::parse(l.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << Describe(l);
  EXPECT_EQ(j["recovered"], json::array({"recovered patch 'hvp_two' interrupted while applying: fully applied"}));
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), kTwoText);
}

}  // namespace
}  // namespace hv
