// Atomic replace (klp_patch.replace, docs/atomic-replace.md) on a real TCG guest, through the
// real hvpatch binary: hvp_replace (cmdline_proc_show only) over hvp_two (cmdline_proc_show and
// version_proc_show) leaves /proc/cmdline to hvp_replace and gives /proc/version the kernel's
// own code back, in one apply; `list` shows hvp_replace alone; its revert gives the original
// kernel. The guest's module structures are read back from the host. The same two modules
// loaded with insmod under the guest's own livepatch are the oracle.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "patcher/commit.h"
#include "patcher/guest_kernel.h"
#include "patcher/shadow_module.h"
#include "status_matchers.h"
#include "tests/harness/guest_output.h"
#include "tests/harness/module_structures.h"
#include "tests/harness/test_vm.h"
#include "tests/integration/patch/hvpatch_process.h"
#include "vmm/vm.h"

namespace hv {
namespace {

using ::hv::testing::HvpatchProcess;
using ::hv::testing::HvpatchRun;
using ::hv::testing::TestVm;
using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

std::string Describe(const HvpatchRun& r) {
  return "exit " + std::to_string(r.exit_code) + " signal " + std::to_string(r.signal) +
         (r.timed_out ? " (timed out)" : "") + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

// hvp_replace's /proc/cmdline: %ps of its own function, found through the module tree.
const std::string kReplaceCmdline = "hvp_replace: cmdline hvp_replace_cmdline_show [hvp_replace]\n";

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

class ReplaceIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(fs::exists(testing::HvpatchBinary())) << "hvpatch not found at '" << testing::HvpatchBinary() << "'";
    auto g = TestVm::Start({});
    ASSERT_THAT(g, IsOk());
    guest_ = g->release();
    auto cmdline = guest_->Check("cat /proc/cmdline");
    ASSERT_THAT(cmdline, IsOk());
    boot_cmdline_ = *cmdline;
    auto version = guest_->Check("cat /proc/version");
    ASSERT_THAT(version, IsOk());
    boot_version_ = *version;
    char tmpl[] = "/tmp/hvpatch-replace-state-XXXXXX";
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
    ASSERT_NE(guest_, nullptr);
    char tmpl[] = "/tmp/hvpatch-replace-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    scratch_ = tmpl;
    Guest("dmesg -c > /dev/null");
  }
  void TearDown() override {
    if (guest_) {
      // Leave the guest unpatched for the next test, whatever failed.
      for (const char* name : {"hvp_replace", "hvp_two", "hvp_sleep"}) (void)Hv({"revert", Domain(), name});
    }
    std::error_code ec;
    if (!scratch_.empty()) fs::remove_all(scratch_, ec);
  }

  static std::string Domain() { return guest_->qmp_target(); }

  HvpatchRun Hv(const std::vector<std::string>& args, int timeout_s = 300) {
    std::vector<std::string> full = {"--state-dir", state_dir_};
    full.insert(full.end(), args.begin(), args.end());
    HvpatchProcess p(full, {}, scratch_ + "/hv" + std::to_string(runs_++));
    return p.Wait(timeout_s);
  }

  static std::string Guest(const std::string& script, int timeout_s = 60) {
    return testing::OutputOrFailure(guest_->Check(script, timeout_s));
  }

  static std::string Oopses() {
    return Trim(Guest("dmesg | grep -E 'Oops|BUG:|general protection|Call Trace|WARNING:' || true"));
  }

  // The guest's module structures, read from the host in a pause of our own.
  static patcher::ModuleStructures Structures() {
    auto read = testing::ReadGuestModuleStructures(Domain());
    if (!read.ok()) {
      ADD_FAILURE() << read.status().message();
      return {};
    }
    return *read;
  }

  static TestVm* guest_;
  static std::string boot_cmdline_, boot_version_, state_dir_;
  std::string scratch_;
  int runs_ = 0;
};

TestVm* ReplaceIntegrationTest::guest_ = nullptr;
std::string ReplaceIntegrationTest::boot_cmdline_;
std::string ReplaceIntegrationTest::boot_version_;
std::string ReplaceIntegrationTest::state_dir_;

TEST_F(ReplaceIntegrationTest, ReplaceTakesOverEveryFunctionAndItsRevertGivesTheOriginalKernel) {
  const patcher::ModuleStructures before = Structures();
  ASSERT_FALSE(before.modules.empty());

  HvpatchRun a = Hv({"apply", Domain(), testing::PatchModule("hvp_two")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), "hvp_two: cmdline\nhvp_two: version\n");

  HvpatchRun b = Hv({"apply", Domain(), testing::PatchModule("hvp_replace")});
  ASSERT_EQ(b.exit_code, 0) << Describe(b);
  EXPECT_THAT(b.out, HasSubstr("replaced 'hvp_two' (atomic replace); original code again: version_proc_show"));
  // hvp_replace's function runs hvp_replace's code, hvp_two's other function the kernel's own.
  const std::string replaced_view = Guest("cat /proc/cmdline /proc/version");
  EXPECT_EQ(replaced_view, kReplaceCmdline + boot_version_);
  // Only the replacing patch's module is linked, hvp_two's went in the same pause.
  EXPECT_THAT(Guest("cat /proc/modules"), HasSubstr("hvp_replace "));
  EXPECT_THAT(Guest("cat /proc/modules"), Not(HasSubstr("hvp_two ")));
  const patcher::ModuleStructures replaced = Structures();
  EXPECT_EQ(replaced.modules.size(), before.modules.size() + 1);
  EXPECT_EQ(replaced.tree[0].size(), before.tree[0].size() + 1);
  EXPECT_EQ(replaced.tree[1].size(), before.tree[1].size() + 1);
  EXPECT_EQ(replaced.bug_modules.size(), before.bug_modules.size() + 1);

  // `list` shows hvp_replace alone, with what it replaced.
  HvpatchRun list = Hv({"--json", "list", Domain()});
  ASSERT_EQ(list.exit_code, 0) << Describe(list);
  const auto j = nlohmann::json::parse(list.out);
  ASSERT_EQ(j.at("patches").size(), 1u) << list.out;
  const auto& p = j.at("patches")[0];
  EXPECT_EQ(p.at("name"), "hvp_replace");
  EXPECT_EQ(p.at("state"), "applied");
  EXPECT_EQ(p.at("replace"), true);
  EXPECT_EQ(p.at("replaces"), nlohmann::json::array({"hvp_two"}));
  EXPECT_EQ(p.at("consistent"), true);
  // The new code lies inside mod_tree's bounds, where __module_address() looks first.
  const std::uint64_t new_code = std::stoull(p.at("functions")[0].at("new_addr").get<std::string>(), nullptr, 16);
  EXPECT_LE(replaced.addr_min, new_code);
  EXPECT_GT(replaced.addr_max, new_code);
  if (!j.at("agent").is_null()) {
    // The agent's sysfs-like tree was republished without the replaced patch.
    EXPECT_EQ(j.at("agent").at("in_sync"), true) << list.out;
  }
  HvpatchRun text = Hv({"list", Domain()});

  EXPECT_THAT(text.out, HasSubstr("replaced (atomic replace): hvp_two")) << text.out;

  // hvp_two is gone: its revert says who took it over, and changes nothing.
  HvpatchRun gone = Hv({"revert", Domain(), "hvp_two"});
  EXPECT_EQ(gone.exit_code, 1) << Describe(gone);
  EXPECT_THAT(gone.err, HasSubstr("patch 'hvp_two' was replaced by 'hvp_replace' (atomic replace)"));
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), replaced_view);

  HvpatchRun revert = Hv({"revert", Domain(), "hvp_replace"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), boot_cmdline_ + boot_version_);
  EXPECT_EQ(Structures(), before);
  HvpatchRun empty = Hv({"list", Domain()});
  EXPECT_THAT(empty.out, HasSubstr("no hvpatch patches")) << empty.out;
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");

  // The oracle: the same two modules under the guest's own livepatch show the same.
  // A patch cannot be enabled while another is in transition (klp_enable_patch: -EBUSY).
  const std::string settle =
      "for i in $(seq 100); do grep -q 1 /sys/kernel/livepatch/*/transition 2>/dev/null || break; sleep 0.2; done; ";
  EXPECT_EQ(Trim(Guest("insmod /patches/hvp_two.ko; " + settle + "insmod /patches/hvp_replace.ko; echo rc=$?; " + settle +
                       "for i in $(seq 100); do [ -e /sys/kernel/livepatch/hvp_two ] || break; sleep 0.2; done")),
            "rc=0");
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), replaced_view);
  EXPECT_EQ(Trim(Guest("ls /sys/kernel/livepatch")), "hvp_replace") << "livepatch discards the replaced patch";
  Guest("echo 0 > /sys/kernel/livepatch/hvp_replace/enabled; "
        "for i in $(seq 100); do [ -e /sys/kernel/livepatch/hvp_replace ] || break; sleep 0.2; done; "
        "rmmod hvp_replace; rmmod hvp_two");
  EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), boot_cmdline_ + boot_version_);
  EXPECT_THAT(Guest("cat /proc/modules"), Not(HasSubstr("hvp_")));
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

// The stack check covers the functions a replace un-patches: a task asleep in hvp_sleep's
// do_nanosleep keeps hvp_replace (which does not patch do_nanosleep) from applying.
TEST_F(ReplaceIntegrationTest, TaskInAReplacedPatchsCodeMakesTheReplaceBusy) {
  HvpatchRun a = Hv({"apply", Domain(), testing::PatchModule("hvp_sleep")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  const std::string pid = Trim(Guest("sleep 300 >/dev/null 2>&1 & echo $!"));
  ASSERT_FALSE(pid.empty());
  Guest("for i in $(seq 100); do grep -q '^State:.*S' /proc/" + pid + "/status && exit 0; usleep 100000; done; exit 1");

  HvpatchRun busy = Hv({"--tries", "2", "--retry-delay-ms", "200", "apply", Domain(), testing::PatchModule("hvp_replace")});
  EXPECT_EQ(busy.exit_code, 3) << Describe(busy);
  EXPECT_THAT(busy.err, HasSubstr("code busy after 2 tries"));
  EXPECT_THAT(busy.err, HasSubstr("pid " + pid + " (sleep) in code of 'hvp_sleep'"));
  // Nothing changed: hvp_sleep is still the only patch, /proc/cmdline the kernel's.
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  HvpatchRun list = Hv({"--json", "list", Domain()});
  ASSERT_EQ(list.exit_code, 0) << Describe(list);
  const auto j = nlohmann::json::parse(list.out);
  ASSERT_EQ(j.at("patches").size(), 1u) << list.out;
  EXPECT_EQ(j.at("patches")[0].at("name"), "hvp_sleep");

  Guest("kill " + pid + "; for i in $(seq 100); do [ -e /proc/" + pid + " ] || exit 0; usleep 100000; done; exit 1");
  HvpatchRun ok = Hv({"apply", Domain(), testing::PatchModule("hvp_replace")});
  ASSERT_EQ(ok.exit_code, 0) << Describe(ok);
  EXPECT_THAT(ok.out, HasSubstr("replaced 'hvp_sleep' (atomic replace); original code again: do_nanosleep"));
  EXPECT_EQ(Guest("cat /proc/cmdline"), kReplaceCmdline);
  const std::string cs = Guest(testing::kSleep2sCentiseconds);
  EXPECT_GE(std::atoi(cs.c_str()), 200) << cs;
  EXPECT_LT(std::atoi(cs.c_str()), 400) << cs;
  HvpatchRun revert = Hv({"revert", Domain(), "hvp_replace"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

// kill -9 inside the replace's pause, after each of its code writes in turn (the
// HVPATCH_TEST_STOP_AT hook stops hvpatch there): the next command's recovery undoes the replace
// (hvp_two live, its module linked, hvp_replace's not) until the last code write is done, and
// finishes it from then on (hvp_replace alone; hvp_two's module, which the pause unlinks only
// after the last code write, unlinked by the recovery). The guest always matches the ledger.
TEST_F(ReplaceIntegrationTest, KillDuringTheReplaceIsUndoneOrFinished) {
  const std::string two_view = "hvp_two: cmdline\nhvp_two: version\n";
  const std::string replaced_view = kReplaceCmdline + boot_version_;
  std::vector<std::string> outcomes;
  bool finished_normally = false;
  for (int n = 1; n <= 8 && !finished_normally; ++n) {
    SCOPED_TRACE("code_written:" + std::to_string(n));
    HvpatchRun a = Hv({"apply", Domain(), testing::PatchModule("hvp_two")});
    ASSERT_EQ(a.exit_code, 0) << Describe(a);
    {
      HvpatchProcess p({"--state-dir", state_dir_, "apply", Domain(), testing::PatchModule("hvp_replace")},
                       {"HVPATCH_TEST_STOP_AT=code_written:" + std::to_string(n)}, scratch_ + "/kill" + std::to_string(n));
      if (!p.WaitStopped(120)) {
        // Fewer code writes than n: the apply ran to its end.
        ASSERT_FALSE(p.Result().timed_out);
        ASSERT_EQ(p.Result().exit_code, 0) << Describe(p.Result());
        finished_normally = true;
      } else {
        p.Kill9();
      }
    }
    HvpatchRun l = Hv({"--json", "list", Domain()});
    ASSERT_EQ(l.exit_code, 0) << Describe(l);
    const auto j = nlohmann::json::parse(l.out);
    std::string recovered;
    for (const auto& r : j.at("recovered")) {
      if (r.get<std::string>().find("recovered patch") == 0) recovered = r.get<std::string>();
    }
    ASSERT_EQ(j.at("patches").size(), 1u) << l.out;
    const std::string name = j.at("patches")[0].at("name");
    EXPECT_EQ(j.at("patches")[0].at("consistent"), true) << l.out;
    const std::string view = Guest("cat /proc/cmdline /proc/version");
    const std::string modules = Guest("cat /proc/modules");
    if (name == "hvp_two") {
      EXPECT_FALSE(finished_normally);
      EXPECT_EQ(recovered, "recovered patch 'hvp_replace' interrupted while applying: fully reverted ('hvp_two' kept)");
      EXPECT_EQ(view, two_view);
      EXPECT_THAT(modules, HasSubstr("hvp_two "));
      EXPECT_THAT(modules, Not(HasSubstr("hvp_replace ")));
      outcomes.push_back("reverted");
      HvpatchRun v = Hv({"revert", Domain(), "hvp_two"});
      EXPECT_EQ(v.exit_code, 0) << Describe(v);
    } else {
      EXPECT_EQ(name, "hvp_replace");
      if (!finished_normally) {
        EXPECT_EQ(recovered, "recovered patch 'hvp_replace' interrupted while applying: fully applied (replaced 'hvp_two')");
      }
      EXPECT_EQ(view, replaced_view);
      EXPECT_THAT(modules, HasSubstr("hvp_replace "));
      EXPECT_THAT(modules, Not(HasSubstr("hvp_two ")));
      outcomes.push_back(finished_normally ? "ran to the end" : "applied");
      HvpatchRun v = Hv({"revert", Domain(), "hvp_replace"});
      EXPECT_EQ(v.exit_code, 0) << Describe(v);
    }
    EXPECT_EQ(Guest("cat /proc/cmdline /proc/version"), boot_cmdline_ + boot_version_);
  }
  // At least the new trampoline and the restore of version_proc_show: undone after the first,
  // finished after the last, and the apply ran to its end once n passed the last.
  ASSERT_GE(outcomes.size(), 3u);
  EXPECT_EQ(outcomes.front(), "reverted");
  EXPECT_EQ(outcomes[outcomes.size() - 2], "applied");
  EXPECT_EQ(outcomes.back(), "ran to the end");
  std::string all;
  for (const auto& o : outcomes) all += o + ", ";
  std::printf("kill after each code write of the replace: %s\n", all.c_str());
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

}  // namespace
}  // namespace hv
