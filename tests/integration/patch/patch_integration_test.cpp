// Issue 5's acceptance checks 1-10 on a real TCG guest: the real `hvpatch` binary, run as an
// operator runs it, applies, reverts and recovers livepatch modules built by kbuild
// (images/patches) in one guest booted for the whole suite (with its agent).
//
// The ledger belongs to the VM, so the suite keeps one state directory (ledger and locks) for its
// one guest: a second ledger for a VM whose arena is mapped is refused (see
// SecondLedgerRefusedWhileTheArenaIsMapped). Each test has its own scratch directory and leaves
// the guest as it found it: TearDown reverts whatever the ledger still holds, top patch first,
// and checks that /proc/cmdline and /proc/version print what they printed at boot. What the guest prints is the
// proof: each test patch replaces a function whose output the guest shows (see the .c files).
//
// "Untouched" is checked from the host, independently of hvpatch: the entry bytes of the target
// function (address from the guest's /proc/kallsyms), read through our own connection to QEMU,
// must still be the 5-byte ftrace nop the kernel put there at boot.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
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
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::size_t Lines(const std::string& s) { return static_cast<std::size_t>(std::count(s.begin(), s.end(), '\n')); }

std::string Describe(const HvpatchRun& r) {
  return "exit " + std::to_string(r.exit_code) + " signal " + std::to_string(r.signal) +
         (r.timed_out ? " (timed out)" : "") + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

json ParseJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  return j;
}

std::uint64_t ParseHex(const json& v) {
  if (!v.is_string()) return 0;
  return std::strtoull(v.get<std::string>().c_str(), nullptr, 16);
}

class PatchIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(fs::exists(testing::HvpatchBinary())) << "hvpatch not found at '" << testing::HvpatchBinary()
                                                      << "' (set HVPATCH_BIN)";
    auto g = TestVm::Start({});
    ASSERT_THAT(g, IsOk());
    guest_ = g->release();
    auto cmdline = guest_->Check("cat /proc/cmdline");
    ASSERT_THAT(cmdline, IsOk());
    boot_cmdline_ = *cmdline;
    auto version = guest_->Check("cat /proc/version");
    ASSERT_THAT(version, IsOk());
    boot_version_ = *version;
    ASSERT_THAT(boot_cmdline_, HasSubstr("console="));
    ASSERT_THAT(boot_version_, StartsWith("Linux version "));
    char tmpl[] = "/tmp/hvpatch-patch-state-XXXXXX";
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
    ASSERT_NE(guest_, nullptr) << "the guest did not boot";
    char tmpl[] = "/tmp/hvpatch-patch-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    scratch_dir_ = tmpl;
  }

  void TearDown() override {
    if (!guest_) return;
    processes_.clear();  // kills (SIGKILL) any hvpatch a failed test left running or stopped
    // Revert what is left, top first (the ledger lists patches in stack order). A `list` also
    // recovers a transaction a killed process left behind.
    HvpatchRun l = Hv({"--json", "list", Domain()});
    json j = ParseJson(l.out);
    if (l.exit_code == 0 && j.is_object() && j["patches"].is_array()) {
      for (auto it = j["patches"].rbegin(); it != j["patches"].rend(); ++it) {
        const std::string name = (*it)["name"].get<std::string>();
        HvpatchRun r = Hv({"revert", Domain(), name});
        EXPECT_EQ(r.exit_code, 0) << "cleanup: reverting '" << name << "': " << Describe(r);
      }
    } else {
      ADD_FAILURE() << "cleanup: list failed: " << Describe(l);
    }
    EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_) << "the guest was left patched";
    EXPECT_EQ(Guest("cat /proc/version"), boot_version_) << "the guest was left patched";
    std::error_code ec;
    fs::remove_all(scratch_dir_, ec);
  }

  static std::string Domain() { return guest_->qmp_target(); }
  static std::string Patch(const std::string& name) { return testing::PatchModule(name); }

  static std::vector<std::string> WithState(const std::vector<std::string>& args) {
    std::vector<std::string> a = {"--state-dir", state_dir_};
    a.insert(a.end(), args.begin(), args.end());
    return a;
  }

  // Starts hvpatch in the background (global options first, as on the command line), with the
  // suite's state directory unless `args` names one.
  HvpatchProcess& Start(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    const std::string log = scratch_dir_ + "/run-" + std::to_string(++runs_);
    const bool own_state = std::find(args.begin(), args.end(), "--state-dir") != args.end();
    processes_.push_back(std::make_unique<HvpatchProcess>(own_state ? args : WithState(args), env, log));
    return *processes_.back();
  }

  // Runs hvpatch to its end.
  HvpatchRun Hv(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                int timeout_s = 300) {
    HvpatchProcess& p = Start(args, env);
    return p.Wait(timeout_s);
  }

  // A guest shell command's output; a failure is recorded and yields a marker string.
  static std::string Guest(const std::string& script, int timeout_s = 60) {
    return testing::OutputOrFailure(guest_->Check(script, timeout_s));
  }

  static std::uint64_t KallsymsAddress(const std::string& name) {
    // Module symbols carry a "\t[module]" column: match the name column exactly.
    const std::string line = Guest("awk '$3 == \"" + name + "\" { print $1; exit }' /proc/kallsyms");
    return std::strtoull(line.c_str(), nullptr, 16);
  }

  // Kernel text read from the host through our own connection to QEMU (no hvpatch involved),
  // with the page tables of a vCPU in kernel mode (a user-mode vCPU may be on a PTI table).
  static std::vector<std::uint8_t> KernelBytes(std::uint64_t va, std::size_t n) {
    auto bytes = ::hv::testing::ReadKernelText(Domain(), va, n);
    if (!bytes.ok()) {
      ADD_FAILURE() << "reading kernel text: " << bytes.status().message();
      return {};
    }
    return std::move(*bytes);
  }

  // A QMP command on our own connection, as an operator would send it (e.g. "stop").
  static void Qmp(const std::string& command) {
    auto vm = vmm::Open(Domain());
    ASSERT_THAT(vm, IsOk());
    auto* qemu = dynamic_cast<vmm::QemuVm*>(vm->get());
    ASSERT_NE(qemu, nullptr);
    ASSERT_THAT(qemu->qmp().Execute(command), IsOk());
  }

  // QMP's run state, through `hvpatch info` (no agent: a paused guest cannot answer it).
  bool Running() {
    HvpatchRun info = Hv({"--json", "--no-agent", "info", Domain()});
    EXPECT_EQ(info.exit_code, 0) << Describe(info);
    json j = ParseJson(info.out);
    EXPECT_TRUE(j.is_object() && j["running"].is_boolean()) << info.out;
    return j.is_object() && j["running"] == true;
  }

  json ListJson() {
    HvpatchRun l = Hv({"--json", "list", Domain()});
    EXPECT_EQ(l.exit_code, 0) << Describe(l);
    json j = ParseJson(l.out);
    EXPECT_TRUE(j.is_object() && j["patches"].is_array()) << l.out;
    return j;
  }

  std::vector<std::string> ListedNames() {
    std::vector<std::string> names;
    json j = ListJson();
    if (!j.is_object() || !j["patches"].is_array()) return names;
    for (const auto& p : j["patches"]) names.push_back(p["name"].get<std::string>());
    return names;
  }

  // The guest's task `pid` has gone to sleep (state S), e.g. inside nanosleep.
  static void WaitSleeping(const std::string& pid) {
    Guest("for i in $(seq 50); do grep -q '^State:.*S' /proc/" + pid + "/status && exit 0; "
          "usleep 100000; done; exit 1");
  }

  // For the crash tests (9): what the next runs find after a kill -9 at `step`.
  struct Outcome {
    bool stopped = false;          // the hook was reached (else the run ended normally)
    int exit_code = -1;            // when not stopped
    bool left_paused = false;      // the VM was paused after the kill
    std::vector<std::string> recovered;
    std::vector<std::string> patches;
    std::string guest;             // /proc/cmdline and /proc/version after recovery
  };

  Outcome KillAt(const std::vector<std::string>& args, const std::string& step) {
    Outcome o;
    HvpatchProcess& p = Start(args, {"HVPATCH_TEST_STOP_AT=" + step});
    o.stopped = p.WaitStopped(120);
    if (!o.stopped) {
      EXPECT_FALSE(p.Result().timed_out) << "step " << step;
      o.exit_code = p.Result().exit_code;
      return o;
    }
    p.Kill9();
    EXPECT_EQ(p.Result().signal, SIGKILL);
    HvpatchRun info = Hv({"--json", "--no-agent", "info", Domain()});
    EXPECT_EQ(info.exit_code, 0) << Describe(info);
    json ij = ParseJson(info.out);
    o.left_paused = ij.is_object() && ij["running"] == false;
    HvpatchRun l = Hv({"--json", "list", Domain()});
    EXPECT_EQ(l.exit_code, 0) << Describe(l);
    json j = ParseJson(l.out);
    if (j.is_object() && j["recovered"].is_array()) {
      for (const auto& n : j["recovered"]) o.recovered.push_back(n.get<std::string>());
      for (const auto& pj : j["patches"]) {
        o.patches.push_back(pj["name"].get<std::string>() + ":" + pj["state"].get<std::string>() +
                            (pj["consistent"] == true ? "" : ":INCONSISTENT"));
      }
    }
    o.guest = Guest("cat /proc/cmdline /proc/version");
    return o;
  }

  static void Figure(const std::string& what) {
    std::printf("[figure] %s\n", what.c_str());
    std::fflush(stdout);
  }

  static TestVm* guest_;
  static std::string boot_cmdline_, boot_version_;
  static std::string state_dir_;  // the VM's ledger and locks, for the whole suite
  std::string scratch_dir_;       // this test's files and hvpatch output
  int runs_ = 0;
  std::vector<std::unique_ptr<HvpatchProcess>> processes_;
};

TestVm* PatchIntegrationTest::guest_ = nullptr;
std::string PatchIntegrationTest::boot_cmdline_;
std::string PatchIntegrationTest::boot_version_;
std::string PatchIntegrationTest::state_dir_;

// 1. The sample patch applies, the guest shows its text, revert restores the command line.
TEST_F(PatchIntegrationTest, SampleAppliesAndRevertRestores) {
  const std::uint64_t entry = KallsymsAddress("cmdline_proc_show");
  ASSERT_NE(entry, 0u);
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop);

  // This guest's RAM is QEMU's default anonymous memory: `info` says how it is read, and why
  // that matters.
  HvpatchRun info = Hv({"--no-agent", "info", Domain()});
  ASSERT_EQ(info.exit_code, 0) << Describe(info);
  EXPECT_THAT(info.out, HasSubstr("guest RAM       process_vm_readv (memory backend 'pc.ram' is anonymous"));
  EXPECT_THAT(info.out, HasSubstr("shared guest RAM is mapped instead"));

  // The dry run passes every check and writes nothing.
  HvpatchRun c = Hv({"check", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(c.exit_code, 0) << Describe(c);
  EXPECT_THAT(c.out, StartsWith("check passed for patch 'hvp_sample': 1 function(s)"));
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_TRUE(ListedNames().empty());

  HvpatchRun r = Hv({"--json", "apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  json j = ParseJson(r.out);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["name"], "hvp_sample");
  ASSERT_TRUE(j["functions"].is_array());
  ASSERT_EQ(j["functions"].size(), 1u) << r.out;
  EXPECT_EQ(j["functions"][0]["name"], "cmdline_proc_show");
  EXPECT_EQ(j["functions"][0]["object"], "vmlinux");
  EXPECT_EQ(j["functions"][0]["entry"], "ftrace_nop");
  EXPECT_EQ(ParseHex(j["functions"][0]["site"]), entry);
  ASSERT_TRUE(j["pause_us"].is_number_unsigned()) << r.out;
  EXPECT_GT(j["pause_us"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(j["tries"], 1);
  ASSERT_TRUE(j["confirmed"].is_boolean()) << r.out;
  EXPECT_EQ(j["confirmed"], true) << "confirmation: " << j["confirmation"];
  EXPECT_GT(j["threads_scanned"].get<std::uint64_t>(), 20u);
  Figure("hvp_sample apply: pause_us=" + j["pause_us"].dump() + " threads_scanned=" +
         j["threads_scanned"].dump() + " bytes_scanned=" + j["bytes_scanned"].dump() + " wall_s=" +
         std::to_string(r.seconds) + " confirmation=" + j["confirmation"].dump());

  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  // The trampoline, read independently: jmp rel32 to the new function.
  const std::vector<std::uint8_t> site = KernelBytes(entry, 5);
  ASSERT_EQ(site.size(), 5u);
  EXPECT_EQ(site[0], 0xe9);
  std::int32_t rel = 0;
  std::memcpy(&rel, site.data() + 1, 4);
  EXPECT_EQ(entry + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel)),
            ParseHex(j["functions"][0]["new_addr"]));

  HvpatchRun l = Hv({"list", Domain()});
  EXPECT_EQ(l.exit_code, 0) << Describe(l);
  EXPECT_THAT(l.out, HasSubstr("hvp_sample  applied"));
  EXPECT_THAT(l.out, HasSubstr("vmlinux cmdline_proc_show"));

  HvpatchRun v = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(v.exit_code, 0) << Describe(v);
  EXPECT_THAT(v.out, HasSubstr("reverted patch 'hvp_sample': 1 function(s)"));
  Figure("hvp_sample revert: " + Trim(v.out) + " wall_s=" + std::to_string(v.seconds));
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop);
  EXPECT_TRUE(ListedNames().empty());

  HvpatchRun again = Hv({"revert", Domain(), "hvp_sample"});
  EXPECT_EQ(again.exit_code, 1) << Describe(again);
  EXPECT_THAT(again.err, HasSubstr("patch 'hvp_sample' is not applied to "));
}

// 2. Two functions switch in one pause: one try, both listed, both changed right after.
TEST_F(PatchIntegrationTest, TwoFunctionsSwitchInOnePause) {
  HvpatchRun r = Hv({"--json", "apply", Domain(), Patch("hvp_two")});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  json j = ParseJson(r.out);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["name"], "hvp_two");
  EXPECT_EQ(j["tries"], 1);
  std::set<std::string> names;
  for (const auto& f : j["functions"]) names.insert(f["name"].get<std::string>());
  EXPECT_EQ(names, (std::set<std::string>{"cmdline_proc_show", "version_proc_show"}));
  Figure("hvp_two apply (2 functions, one pause): pause_us=" + j["pause_us"].dump());
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), kTwoText);

  HvpatchRun v = Hv({"revert", Domain(), "hvp_two"});
  ASSERT_EQ(v.exit_code, 0) << Describe(v);
  EXPECT_THAT(v.out, HasSubstr("reverted patch 'hvp_two': 2 function(s)"));
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), boot_cmdline_ + boot_version_);
}

// 3. New code that reads the non-exported nr_threads and calls the non-exported nr_processes()
// prints what the guest itself reports. The reads are shell builtins (`read`, a glob), so no
// process starts or ends between the patched /proc/cmdline and the guest's own counts.
TEST_F(PatchIntegrationTest, NonExportedSymbolsPrintCorrectValues) {
  HvpatchRun r = Hv({"apply", Domain(), Patch("hvp_nonexported")});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const std::string out = Guest(
      "read -r c < /proc/cmdline; read -r a < /proc/loadavg; set -- /proc/[0-9]*; "
      "echo \"$c\"; echo \"$a\"; echo \"processes $#\"");
  std::smatch m;
  const std::regex re(
      "hvp_nonexported: nr_threads=(\\d+) nr_processes=(\\d+)\n[0-9.]+ [0-9.]+ [0-9.]+ \\d+/(\\d+) \\d+\n"
      "processes (\\d+)\n");
  ASSERT_TRUE(std::regex_match(out, m, re)) << out;
  EXPECT_EQ(m[1].str(), m[3].str()) << "nr_threads against /proc/loadavg: " << out;
  EXPECT_EQ(m[2].str(), m[4].str()) << "nr_processes() against the /proc/<pid> count: " << out;
  EXPECT_GT(std::stoi(m[1].str()), 20);
  Figure("hvp_nonexported: " + Trim(out.substr(0, out.find('\n'))));

  HvpatchRun v = Hv({"revert", Domain(), "hvp_nonexported"});
  EXPECT_EQ(v.exit_code, 0) << Describe(v);
}

// 4. A task asleep in do_nanosleep makes apply fail with exit 3 naming it, and the guest is
// untouched; once the task is gone, apply succeeds and `sleep` still works.
TEST_F(PatchIntegrationTest, BusyFunctionRefusedThenAppliedWhenIdle) {
  const std::uint64_t entry = KallsymsAddress("do_nanosleep");
  ASSERT_NE(entry, 0u);
  ASSERT_EQ(KernelBytes(entry, 5), kFtraceNop);

  const std::string pid = Trim(Guest("sleep 30 >/dev/null 2>&1 & echo $!"));
  ASSERT_FALSE(pid.empty());
  WaitSleeping(pid);
  HvpatchRun busy = Hv({"--tries", "2", "--retry-delay-ms", "200", "apply", Domain(), Patch("hvp_sleep")});
  EXPECT_EQ(busy.exit_code, 3) << Describe(busy);
  EXPECT_THAT(busy.err, HasSubstr("code busy after 2 tries"));
  EXPECT_THAT(busy.err, HasSubstr("pid " + pid + " (sleep) in do_nanosleep"));
  EXPECT_EQ(Lines(busy.err), 1u) << busy.err;
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop) << "the guest was touched";
  EXPECT_TRUE(ListedNames().empty());
  Figure("busy: " + Trim(busy.err) + " wall_s=" + std::to_string(busy.seconds));

  Guest("kill " + pid + "; for i in $(seq 50); do grep -q '^State:.*S' /proc/" + pid +
        "/status 2>/dev/null || exit 0; usleep 100000; done; exit 1");
  HvpatchRun ok = Hv({"--json", "apply", Domain(), Patch("hvp_sleep")});
  ASSERT_EQ(ok.exit_code, 0) << Describe(ok);
  json j = ParseJson(ok.out);
  Figure("hvp_sleep apply once idle: tries=" + j["tries"].dump() + " pause_us=" + j["pause_us"].dump());
  const std::vector<std::uint8_t> site = KernelBytes(entry, 5);
  ASSERT_EQ(site.size(), 5u);
  EXPECT_EQ(site[0], 0xe9) << "do_nanosleep does not jump to the new code";

  // The replacement sleeps as long as the original.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(Guest("sleep 1 && echo slept"), "slept\n");
  const double slept = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(slept, 1.0);
  EXPECT_LT(slept, 20.0);
  const std::string cs = Guest(testing::kSleep2sCentiseconds);
  EXPECT_GE(std::atoi(cs.c_str()), 200) << cs;
  EXPECT_LT(std::atoi(cs.c_str()), 400) << cs;

  // Revert checks the code being removed: a task asleep in the new do_nanosleep blocks it.
  const std::string pid2 = Trim(Guest("sleep 30 >/dev/null 2>&1 & echo $!"));
  WaitSleeping(pid2);
  HvpatchRun busy_revert = Hv({"--tries", "2", "--retry-delay-ms", "200", "revert", Domain(), "hvp_sleep"});
  EXPECT_EQ(busy_revert.exit_code, 3) << Describe(busy_revert);
  EXPECT_THAT(busy_revert.err, HasSubstr("code busy after 2 tries"));
  EXPECT_THAT(busy_revert.err, HasSubstr("pid " + pid2 + " (sleep) in code of 'hvp_sleep'"));
  EXPECT_EQ(KernelBytes(entry, 1), std::vector<std::uint8_t>{0xe9}) << "the revert was not refused";
  EXPECT_EQ(ListedNames(), std::vector<std::string>{"hvp_sleep"});
  Guest("kill " + pid2 + "; for i in $(seq 50); do grep -q '^State:.*S' /proc/" + pid2 +
        "/status 2>/dev/null || exit 0; usleep 100000; done; exit 1");

  HvpatchRun v = Hv({"revert", Domain(), "hvp_sleep"});
  EXPECT_EQ(v.exit_code, 0) << Describe(v);
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop);
}

// 5. Code that needs kernel help hvpatch does not give yet (module per-cpu data; user access
// works through the shadow module since issue 11): refused by section name, exit 1, nothing
// written.
TEST_F(PatchIntegrationTest, PerCpuDataPatchRefusedNamingTheSection) {
  const std::uint64_t entry = KallsymsAddress("cmdline_proc_show");
  ASSERT_EQ(KernelBytes(entry, 5), kFtraceNop);
  for (const char* command : {"apply", "check"}) {
    SCOPED_TRACE(command);
    HvpatchRun r = Hv({command, Domain(), Patch("hvp_percpu")});
    EXPECT_EQ(r.exit_code, 1) << Describe(r);
    EXPECT_THAT(r.err, HasSubstr("function 'hvp_percpu_cmdline_show' needs section '.data..percpu' (module per-cpu data)"));
    EXPECT_THAT(r.err, StartsWith("hvpatch: planning patch 'hvp_percpu': "));
    EXPECT_EQ(Lines(r.err), 1u) << r.err;
    EXPECT_EQ(r.out, "");
  }
  EXPECT_EQ(KernelBytes(entry, 5), kFtraceNop) << "the guest was touched";
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_TRUE(ListedNames().empty());
}

// 6. A function of a loaded module (virtio_console's port_debugfs_show) is patched and reverted.
TEST_F(PatchIntegrationTest, ModuleFunctionPatchedAndReverted) {
  Guest("grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs none /sys/kernel/debug");
  const std::string port = Trim(Guest("grep -l 'name: org.hvpatch.test.0' /sys/kernel/debug/virtio-ports/*"));
  ASSERT_THAT(port, StartsWith("/sys/kernel/debug/virtio-ports/vport"));
  EXPECT_THAT(Guest("cat " + port), HasSubstr("name: org.hvpatch.test.0\n"));

  HvpatchRun r = Hv({"--json", "apply", Domain(), Patch("hvp_virtio")});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  json j = ParseJson(r.out);
  ASSERT_TRUE(j.is_object() && j["functions"].size() == 1) << r.out;
  EXPECT_EQ(j["functions"][0]["name"], "port_debugfs_show");
  EXPECT_EQ(j["functions"][0]["object"], "virtio_console");
  // Module text lives in the module area, above the kernel image.
  EXPECT_GE(ParseHex(j["functions"][0]["site"]), 0xffffffffc0000000ull) << r.out;
  EXPECT_EQ(Guest("cat " + port), "hvp_virtio: port_debugfs_show is patched\n");

  HvpatchRun v = Hv({"revert", Domain(), "hvp_virtio"});
  ASSERT_EQ(v.exit_code, 0) << Describe(v);
  EXPECT_THAT(Guest("cat " + port), HasSubstr("name: org.hvpatch.test.0\n"));
}

// 7. Stacking: B on top of A; reverting A first is refused naming B; B then A come off in order.
TEST_F(PatchIntegrationTest, StackedPatchesRevertInOrder) {
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_stack_a")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline"), "hvp_stack_a\n");
  HvpatchRun b = Hv({"--json", "apply", Domain(), Patch("hvp_stack_b")});
  ASSERT_EQ(b.exit_code, 0) << Describe(b);
  json j = ParseJson(b.out);
  ASSERT_TRUE(j.is_object() && j["functions"].size() == 1) << b.out;
  EXPECT_EQ(j["functions"][0]["stacked_on"], "hvp_stack_a");
  EXPECT_EQ(j["functions"][0]["entry"], "hvpatch_jump") << b.out;
  EXPECT_EQ(Guest("cat /proc/cmdline"), "hvp_stack_b\n");
  EXPECT_EQ(ListedNames(), (std::vector<std::string>{"hvp_stack_a", "hvp_stack_b"}));

  HvpatchRun refused = Hv({"revert", Domain(), "hvp_stack_a"});
  EXPECT_EQ(refused.exit_code, 1) << Describe(refused);
  EXPECT_THAT(refused.err, HasSubstr("patch 'hvp_stack_b' is stacked on 'hvp_stack_a' (function "
                                     "'cmdline_proc_show'): revert 'hvp_stack_b' first"));
  EXPECT_EQ(Guest("cat /proc/cmdline"), "hvp_stack_b\n");

  HvpatchRun rb = Hv({"revert", Domain(), "hvp_stack_b"});
  ASSERT_EQ(rb.exit_code, 0) << Describe(rb);
  EXPECT_EQ(Guest("cat /proc/cmdline"), "hvp_stack_a\n");
  HvpatchRun ra = Hv({"revert", Domain(), "hvp_stack_a"});
  ASSERT_EQ(ra.exit_code, 0) << Describe(ra);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
}

// 8. Malformed .ko files: one clear line each, exit 1 (not a signal), the guest untouched.
TEST_F(PatchIntegrationTest, MalformedModulesGetOneLineAndExit1) {
  std::ifstream in(Patch("hvp_sample"), std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(good.size(), 4096u);
  auto write = [&](const std::string& name, const std::string& bytes) {
    const std::string path = scratch_dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  };
  auto put64 = [](std::string& s, std::size_t at, std::uint64_t v) { std::memcpy(s.data() + at, &v, 8); };
  auto put16 = [](std::string& s, std::size_t at, std::uint16_t v) { std::memcpy(s.data() + at, &v, 2); };
  std::uint64_t shoff = 0;
  std::memcpy(&shoff, good.data() + 0x28, 8);
  std::uint16_t shnum = 0;
  std::memcpy(&shnum, good.data() + 0x3c, 2);
  ASSERT_LT(shoff + shnum * 64ull, good.size() + 1);

  std::string random(20000, '\0');
  std::mt19937 rng(5);
  for (auto& c : random) c = static_cast<char>(rng());
  std::string past_end = good;
  put64(past_end, 0x28, good.size() + 4096);  // e_shoff beyond the file
  std::string bad_offsets = good;
  for (std::uint16_t i = 1; i < shnum; ++i) put64(bad_offsets, shoff + i * 64ull + 0x18, 0xfffffffffff0ull);
  std::string bad_shstrndx = good;
  put16(bad_shstrndx, 0x3e, 0xfff0);  // e_shstrndx: no such section
  std::string bad_entsize = good;
  put16(bad_entsize, 0x3a, 12);  // e_shentsize: not an Elf64_Shdr
  std::ifstream t("/bin/true", std::ios::binary);
  const std::string exec((std::istreambuf_iterator<char>(t)), std::istreambuf_iterator<char>());
  ASSERT_GT(exec.size(), 64u);

  struct Case {
    std::string file, bytes, expect;
  };
  const std::vector<Case> cases = {
      {"empty.ko", "", "file is too short for an ELF header (0 bytes)"},
      {"truncated.ko", good.substr(0, 1000), "runs past the end of the 1000-byte file"},
      {"random.ko", random, "not an ELF file (bad magic)"},
      {"true.ko", exec, "is not ET_REL (a kernel module is a relocatable object)"},
      {"shoff-past-end.ko", past_end, "section header table at "},
      {"section-offsets.ko", bad_offsets, "section 1 (offset 0xfffffffffff0"},
      {"shstrndx.ko", bad_shstrndx, ""},
      {"shentsize.ko", bad_entsize, ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string path = write(c.file, c.bytes);
    HvpatchRun r = Hv({"apply", Domain(), path});
    EXPECT_EQ(r.signal, 0) << Describe(r);
    EXPECT_EQ(r.exit_code, 1) << Describe(r);
    EXPECT_THAT(r.err, StartsWith("hvpatch: loading patch '" + path + "': ")) << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.expect));
    EXPECT_EQ(Lines(r.err), 1u) << r.err;
    EXPECT_EQ(r.out, "");
    Figure("malformed " + c.file + ": " + Trim(r.err));
  }
  // --json: the same error as one object on stdout.
  HvpatchRun r = Hv({"--json", "apply", Domain(), scratch_dir_ + "/random.ko"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  json j = ParseJson(r.out);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["exit_code"], 1);
  EXPECT_THAT(j["error"]["message"].get<std::string>(), HasSubstr("not an ELF file (bad magic)"));

  EXPECT_TRUE(ListedNames().empty());
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
}

// A second ledger for one VM (another --state-dir, or a lost ledger) must not lay out the arena
// again: that would overwrite the live patches' code and page table. Refused, guest unchanged.
TEST_F(PatchIntegrationTest, SecondLedgerRefusedWhileTheArenaIsMapped) {
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  const std::string other = scratch_dir_ + "/other-state";
  const std::uint64_t entry = KallsymsAddress("port_debugfs_show");
  ASSERT_GE(entry, 0xffffffffc0000000ull);
  const std::vector<std::uint8_t> before = KernelBytes(entry, 5);
  HvpatchRun b = Hv({"--state-dir", other, "apply", Domain(), Patch("hvp_virtio")});
  EXPECT_EQ(b.exit_code, 1) << Describe(b);
  EXPECT_THAT(b.err, HasSubstr(") is already mapped at 0xffffffff"));
  EXPECT_THAT(b.err, HasSubstr("but the ledger '" + other + "/"));
  EXPECT_THAT(b.err, HasSubstr("hint: another hvpatch state directory holds this VM's patches"));
  EXPECT_EQ(KernelBytes(entry, 5), before);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText) << "the live patch was disturbed";
  EXPECT_EQ(ListedNames(), std::vector<std::string>{"hvp_sample"});
}

// A function the guest traces with ftrace has a call at its entry: refused, saying so.
TEST_F(PatchIntegrationTest, FunctionTracedInTheGuestIsRefused) {
  const std::uint64_t entry = KallsymsAddress("cmdline_proc_show");
  ASSERT_EQ(KernelBytes(entry, 5), kFtraceNop);
  Guest("cd /sys/kernel/tracing && echo cmdline_proc_show > set_ftrace_filter && echo function > current_tracer");
  struct Untrace {
    ~Untrace() { Guest("cd /sys/kernel/tracing && echo nop > current_tracer && echo > set_ftrace_filter"); }
  } untrace;
  const std::vector<std::uint8_t> traced = KernelBytes(entry, 5);
  ASSERT_EQ(traced.size(), 5u);
  EXPECT_EQ(traced[0], 0xe8) << "ftrace did not put its call at the entry";
  HvpatchRun r = Hv({"apply", Domain(), Patch("hvp_sample")});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("cmdline_proc_show"));
  EXPECT_THAT(r.err, HasSubstr("ftrace"));
  Figure("traced: " + Trim(r.err));
  EXPECT_EQ(KernelBytes(entry, 5), traced) << "the guest was touched";
  EXPECT_TRUE(ListedNames().empty());
}

// The operator's pause belongs to the operator: hvpatch works on a paused VM and leaves it
// paused, and the recovery after a kill -9 does not resume it either.
TEST_F(PatchIntegrationTest, OperatorPausedVmStaysPaused) {
  Qmp("stop");
  struct Cont {
    ~Cont() { Qmp("cont"); }
  } cont;
  ASSERT_FALSE(Running());
  HvpatchRun a = Hv({"--no-agent", "apply", Domain(), Patch("hvp_sample")});
  EXPECT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_FALSE(Running()) << "apply resumed a VM the operator had paused";

  HvpatchProcess& p = Start({"--no-agent", "apply", Domain(), Patch("hvp_two")}, {"HVPATCH_TEST_STOP_AT=checked"});
  ASSERT_TRUE(p.WaitStopped(120)) << Describe(p.Result());
  p.Kill9();
  HvpatchRun l = Hv({"--no-agent", "--json", "list", Domain()});
  EXPECT_EQ(l.exit_code, 0) << Describe(l);
  json j = ParseJson(l.out);
  ASSERT_TRUE(j.is_object()) << l.out;
  EXPECT_EQ(j["recovered"], json::array({"recovered patch 'hvp_two' interrupted while applying: fully reverted"}));
  ASSERT_EQ(j["patches"].size(), 1u);
  EXPECT_EQ(j["patches"][0]["name"], "hvp_sample");
  EXPECT_FALSE(Running()) << "recovery resumed a VM the operator had paused";

  Qmp("cont");
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), kSampleText + boot_version_);
}

// 9. kill -9 at each step of an apply (the HVPATCH_TEST_STOP_AT hook stops hvpatch there): the
// next run recovers to fully applied or fully reverted and says which, resumes a VM the dead
// process left paused, and the guest matches the ledger.
TEST_F(PatchIntegrationTest, KillDuringApplyAtEveryStep) {
  const std::string reverted = "recovered patch 'hvp_two' interrupted while applying: fully reverted";
  const std::string applied = "recovered patch 'hvp_two' interrupted while applying: fully applied";
  const std::vector<std::string> apply = {"apply", Domain(), Patch("hvp_two")};
  auto expect_reverted = [&](const Outcome& o) {
    EXPECT_TRUE(o.patches.empty());
    EXPECT_EQ(o.guest, boot_cmdline_ + boot_version_);
  };
  auto expect_applied = [&](const Outcome& o) {
    EXPECT_EQ(o.patches, std::vector<std::string>{"hvp_two:applied"});
    EXPECT_EQ(o.guest, kTwoText);
    HvpatchRun v = Hv({"revert", Domain(), "hvp_two"});
    EXPECT_EQ(v.exit_code, 0) << Describe(v);
  };

  {
    SCOPED_TRACE("ledger_written");
    Outcome o = KillAt(apply, "ledger_written");
    ASSERT_TRUE(o.stopped);
    EXPECT_FALSE(o.left_paused);
    EXPECT_EQ(o.recovered, std::vector<std::string>{reverted});
    expect_reverted(o);
  }
  for (const char* step : {"paused", "checked", "phys_written"}) {
    SCOPED_TRACE(step);
    Outcome o = KillAt(apply, step);
    ASSERT_TRUE(o.stopped);
    EXPECT_TRUE(o.left_paused);
    EXPECT_EQ(o.recovered, (std::vector<std::string>{reverted, kResumedNote}));
    expect_reverted(o);
  }
  // Code writes: arena pages that held code before (if any), then the two trampolines. Only a
  // kill after the last one leaves the patch fully applied; the first run that never reaches
  // its step is an apply that went through.
  int last = 0;
  std::vector<Outcome> outcomes;
  for (int k = 1; k <= 64; ++k) {
    Outcome o = KillAt(apply, "code_written:" + std::to_string(k));
    if (!o.stopped) {
      EXPECT_EQ(o.exit_code, 0) << "the apply that reached no code_written:" << k;
      last = k - 1;
      break;
    }
    outcomes.push_back(o);
    if (o.patches.size() == 1) {
      HvpatchRun v = Hv({"revert", Domain(), "hvp_two"});
      EXPECT_EQ(v.exit_code, 0) << Describe(v);
    }
  }
  ASSERT_GE(last, 2) << "expected at least the two trampoline writes";
  {
    // The run that went through: undo it.
    HvpatchRun v = Hv({"revert", Domain(), "hvp_two"});
    EXPECT_EQ(v.exit_code, 0) << Describe(v);
  }
  for (int k = 1; k <= last; ++k) {
    SCOPED_TRACE("code_written:" + std::to_string(k));
    const Outcome& o = outcomes[static_cast<std::size_t>(k - 1)];
    EXPECT_TRUE(o.left_paused);
    if (k < last) {
      EXPECT_EQ(o.recovered, (std::vector<std::string>{reverted, kResumedNote}));
      EXPECT_TRUE(o.patches.empty());
      EXPECT_EQ(o.guest, boot_cmdline_ + boot_version_);
    } else {
      EXPECT_EQ(o.recovered, (std::vector<std::string>{applied, kResumedNote}));
      EXPECT_EQ(o.patches, std::vector<std::string>{"hvp_two:applied"});
      EXPECT_EQ(o.guest, kTwoText);
    }
  }
  Figure("crash recovery: " + std::to_string(last) + " code writes in the hvp_two apply");
  {
    SCOPED_TRACE("resumed");
    Outcome o = KillAt(apply, "resumed");
    ASSERT_TRUE(o.stopped);
    EXPECT_FALSE(o.left_paused);
    EXPECT_EQ(o.recovered, std::vector<std::string>{applied});
    expect_applied(o);
  }
  {
    SCOPED_TRACE("applied");
    Outcome o = KillAt(apply, "applied");
    ASSERT_TRUE(o.stopped);
    EXPECT_FALSE(o.left_paused);
    EXPECT_TRUE(o.recovered.empty());  // the ledger already said applied: nothing to recover
    expect_applied(o);
  }
}

TEST_F(PatchIntegrationTest, KillDuringRevert) {
  const std::vector<std::string> revert = {"revert", Domain(), "hvp_two"};
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_two")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  {
    // Paused, nothing restored yet: the patch stays.
    SCOPED_TRACE("paused");
    Outcome o = KillAt(revert, "paused");
    ASSERT_TRUE(o.stopped);
    EXPECT_TRUE(o.left_paused);
    EXPECT_EQ(o.recovered, (std::vector<std::string>{
                               "recovered patch 'hvp_two' interrupted while reverting: still fully applied",
                               kResumedNote}));
    EXPECT_EQ(o.patches, std::vector<std::string>{"hvp_two:applied"});
    EXPECT_EQ(o.guest, kTwoText);
  }
  {
    // One of two entries restored: recovery finishes the revert.
    SCOPED_TRACE("code_written:1");
    Outcome o = KillAt(revert, "code_written:1");
    ASSERT_TRUE(o.stopped);
    EXPECT_TRUE(o.left_paused);
    EXPECT_EQ(o.recovered, (std::vector<std::string>{
                               "recovered patch 'hvp_two' interrupted while reverting: fully reverted",
                               kResumedNote}));
    EXPECT_TRUE(o.patches.empty());
    EXPECT_EQ(o.guest, boot_cmdline_ + boot_version_);
  }
}

// An apply killed before its page-table writes leaves, after recovery, arena pages the ledger
// calls retired (mapped) that the guest never mapped. The next apply that gets them must map
// them. Five patches first push the allocation past any page an earlier test mapped.
TEST_F(PatchIntegrationTest, ApplyAfterRecoveredKillBeforePageTableWrites) {
  for (const char* name : {"hvp_virtio", "hvp_stack_a", "hvp_stack_b", "hvp_nonexported", "hvp_sample"}) {
    HvpatchRun r = Hv({"apply", Domain(), Patch(name)});
    ASSERT_EQ(r.exit_code, 0) << name << ": " << Describe(r);
  }
  Outcome o = KillAt({"apply", Domain(), Patch("hvp_two")}, "checked");
  ASSERT_TRUE(o.stopped);
  EXPECT_EQ(o.recovered, (std::vector<std::string>{
                             "recovered patch 'hvp_two' interrupted while applying: fully reverted", kResumedNote}));
  HvpatchRun two = Hv({"--json", "apply", Domain(), Patch("hvp_two")});
  EXPECT_EQ(two.exit_code, 0) << Describe(two);
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), kTwoText);
}

// 10. Concurrent runs on one VM never interleave: they go one after the other, or the second
// is refused naming the holder.
TEST_F(PatchIntegrationTest, ConcurrentAppliesOfDifferentPatchesBothEnd) {
  HvpatchProcess& a = Start({"apply", Domain(), Patch("hvp_sample")});
  HvpatchProcess& b = Start({"apply", Domain(), Patch("hvp_two")});
  HvpatchRun ra = a.Wait(300), rb = b.Wait(300);
  EXPECT_EQ(ra.exit_code, 0) << Describe(ra);
  EXPECT_EQ(rb.exit_code, 0) << Describe(rb);
  json j = ListJson();
  ASSERT_EQ(j["patches"].size(), 2u) << j.dump();
  for (const auto& p : j["patches"]) {
    EXPECT_EQ(p["state"], "applied");
    EXPECT_EQ(p["consistent"], true) << p.dump();
  }
  // The later one sits on top for cmdline_proc_show; version_proc_show is hvp_two's either way.
  const std::string top = j["patches"][1]["name"].get<std::string>();
  EXPECT_EQ(Guest("cat /proc/cmdline"), top == "hvp_two" ? "hvp_two: cmdline\n" : kSampleText);
  EXPECT_EQ(Guest("cat /proc/version"), "hvp_two: version\n");
}

TEST_F(PatchIntegrationTest, ConcurrentAppliesOfOnePatchApplyOnce) {
  HvpatchProcess& a = Start({"apply", Domain(), Patch("hvp_sample")});
  HvpatchProcess& b = Start({"apply", Domain(), Patch("hvp_sample")});
  HvpatchRun ra = a.Wait(300), rb = b.Wait(300);
  const HvpatchRun& loser = ra.exit_code == 0 ? rb : ra;
  EXPECT_TRUE((ra.exit_code == 0) != (rb.exit_code == 0)) << Describe(ra) << "\n" << Describe(rb);
  EXPECT_EQ(loser.exit_code, 1) << Describe(loser);
  EXPECT_THAT(loser.err, HasSubstr("patch 'hvp_sample' is already applied (state applied)"));
  EXPECT_EQ(ListedNames(), std::vector<std::string>{"hvp_sample"});
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
}

TEST_F(PatchIntegrationTest, SecondRunWaitsForTheLockOrIsRefusedNamingTheHolder) {
  // The first run holds the lock (stopped by the hook after its write-ahead ledger record).
  HvpatchProcess& first = Start({"apply", Domain(), Patch("hvp_sample")}, {"HVPATCH_TEST_STOP_AT=ledger_written"});
  ASSERT_TRUE(first.WaitStopped(120)) << Describe(first.Result());

  HvpatchRun refused = Hv({"--lock-wait-ms", "500", "apply", Domain(), Patch("hvp_two")});
  EXPECT_EQ(refused.exit_code, 3) << Describe(refused);
  EXPECT_THAT(refused.err, HasSubstr("VM '" + Domain() + "' is locked by hvpatch pid " +
                                     std::to_string(first.pid()) + "\n"));
  EXPECT_GE(refused.seconds, 0.5);
  EXPECT_LT(refused.seconds, 5.0) << "--lock-wait-ms was not honoured";
  Figure("lock refused after " + std::to_string(refused.seconds) + " s: " + Trim(refused.err));
  // Read-only commands wait for the same lock (QEMU serves one QMP client at a time).
  HvpatchRun info = Hv({"--lock-wait-ms", "300", "info", Domain()});
  EXPECT_EQ(info.exit_code, 3) << Describe(info);
  EXPECT_THAT(info.err, HasSubstr("is locked by hvpatch pid " + std::to_string(first.pid()) + "\n"));
  EXPECT_LT(info.seconds, 5.0);

  // A patient one waits, then runs once the first is done.
  HvpatchProcess& waiting = Start({"--lock-wait-ms", "60000", "apply", Domain(), Patch("hvp_two")});
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_TRUE(waiting.Alive()) << "the second run did not wait: " << Describe(waiting.Result());
  first.Continue();
  HvpatchRun r1 = first.Wait(300);
  HvpatchRun r2 = waiting.Wait(300);
  EXPECT_EQ(r1.exit_code, 0) << Describe(r1);
  EXPECT_EQ(r2.exit_code, 0) << Describe(r2);
  EXPECT_THAT(r2.out, HasSubstr("(stacked on 'hvp_sample')"));
  EXPECT_EQ(ListedNames(), (std::vector<std::string>{"hvp_sample", "hvp_two"}));
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), kTwoText);
}

}  // namespace
}  // namespace hv
