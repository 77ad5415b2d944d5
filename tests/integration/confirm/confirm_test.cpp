// Issue 6 on a real TCG guest with the real agent: hvpatch confirms from inside the guest,
// publishes livepatch-sysfs parity, refuses what an in-guest livepatch owns, and survives a
// silent agent.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "status_matchers.h"
#include "tests/harness/run_program.h"
#include "tests/harness/test_vm.h"

namespace hv::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ConfirmTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto vm = TestVm::Start({});
    ASSERT_THAT(vm, IsOk());
    vm_ = std::move(*vm).release();
    char t[] = "/tmp/hvpatch-confirm-XXXXXX";
    ASSERT_NE(mkdtemp(t), nullptr);
    state_ = t;
  }
  static void TearDownTestSuite() {
    delete vm_;
    vm_ = nullptr;
    std::filesystem::remove_all(state_);
  }
  void TearDown() override {
    // Leave the guest clean for the next test whatever happened.
    for (const char* p : {"hvp_meminfo", "hvp_two"}) (void)Hvpatch({"revert", vm_->qmp_target(), p});
  }

  static ProgramResult Hvpatch(std::vector<std::string> args) {
    const char* bin = std::getenv("HVPATCH_BIN");
    std::vector<std::string> argv = {bin ? bin : "hvpatch", "--state-dir", state_, "--retry-delay-ms", "200"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunProgram(argv, {}, 300);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : ProgramResult{};
  }
  static nlohmann::json Json(const ProgramResult& r) {
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << r.out << r.err;
    return j;
  }
  static std::string Guest(std::string_view script) {
    auto r = vm_->Check(script);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : "";
  }

  static TestVm* vm_;
  static std::string state_;
};
TestVm* ConfirmTest::vm_ = nullptr;
std::string ConfirmTest::state_;

TEST_F(ConfirmTest, ApplyIsConfirmedAndShownLikeLivepatchSysfs) {
  auto a = Hvpatch({"--json", "apply", vm_->qmp_target(), PatchModule("hvp_meminfo")});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto j = Json(a);
  EXPECT_EQ(j["confirmed"], true);  // the agent read the trampoline back through /proc/kcore
  EXPECT_EQ(j["confirmation"], "agent");
  EXPECT_THAT(Guest("head -1 /proc/meminfo"), "HvpatchLivePatched: 1\n");
  const std::string d = "/run/hvpatch/livepatch/hvp_meminfo";
  EXPECT_EQ(Guest("cat " + d + "/enabled"), "1\n");
  EXPECT_EQ(Guest("cat " + d + "/transition"), "0\n");
  EXPECT_EQ(Guest("cat " + d + "/vmlinux/patched"), "1\n");
  EXPECT_EQ(Guest("test -d " + d + "/vmlinux/meminfo_proc_show,1 && echo dir"), "dir\n");
  // 6.1's ABI has no replace/stack_order files.
  EXPECT_EQ(Guest("ls " + d), "enabled\nforce\ntransition\nvmlinux\n");

  auto l = Hvpatch({"--json", "list", vm_->qmp_target()});
  ASSERT_EQ(l.exit_code, 0) << l.err;
  EXPECT_EQ(Json(l)["agent"]["in_sync"], true);

  auto r = Hvpatch({"revert", vm_->qmp_target(), "hvp_meminfo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Guest("test -e " + d + " || echo gone"), "gone\n");
  EXPECT_THAT(Guest("head -1 /proc/meminfo"), HasSubstr("MemTotal:"));
}

TEST_F(ConfirmTest, ListFlagsATreeThatDisagreesWithTheLedger) {
  ASSERT_EQ(Hvpatch({"apply", vm_->qmp_target(), PatchModule("hvp_meminfo")}).exit_code, 0);
  Guest("rm -rf /run/hvpatch/livepatch/hvp_meminfo");
  auto l = Hvpatch({"--json", "list", vm_->qmp_target()});
  ASSERT_EQ(l.exit_code, 0) << l.err;
  auto j = Json(l);
  EXPECT_EQ(j["agent"]["in_sync"], false);
  EXPECT_THAT(j["agent"]["differences"].dump(),
              HasSubstr("patch 'hvp_meminfo' is in the ledger but not in the guest's tree"));
  auto text = Hvpatch({"list", vm_->qmp_target()});
  EXPECT_THAT(text.out, HasSubstr("MISMATCH (guest agent's tree)"));
}

TEST_F(ConfirmTest, FunctionOwnedByAnInGuestLivepatchIsRefusedNamingIt) {
  // The same .ko, loaded the upstream way inside the guest.
  Guest("insmod /patches/hvp_sample.ko");
  Guest("for i in $(seq 50); do [ \"$(cat /sys/kernel/livepatch/hvp_sample/transition)\" = 0 ] && break; sleep 0.2; done");
  auto a = Hvpatch({"apply", vm_->qmp_target(), PatchModule("hvp_two")});
  EXPECT_EQ(a.exit_code, 1);
  EXPECT_THAT(a.err, HasSubstr("function 'cmdline_proc_show' is already patched in the guest by "
                               "livepatch module 'hvp_sample'"));
  EXPECT_EQ(Guest("cat /proc/version | cut -c1-13"), "Linux version\n");  // untouched
  Guest("echo 0 > /sys/kernel/livepatch/hvp_sample/enabled;"
        "for i in $(seq 100); do [ -d /sys/kernel/livepatch/hvp_sample ] || break; sleep 0.2; done;"
        "rmmod hvp_sample");
  EXPECT_THAT(Guest("cat /proc/cmdline"), HasSubstr("console=ttyS0"));
}

TEST_F(ConfirmTest, SilentAgentLeavesConfirmedFalseAndTheGuestConsistent) {
  const std::string pid = Guest("pidof hvpatch-agent");
  ASSERT_FALSE(pid.empty());
  Guest("kill -STOP " + pid);
  auto a = Hvpatch({"--json", "--agent-timeout-ms", "1000", "apply", vm_->qmp_target(),
                    PatchModule("hvp_meminfo")});
  Guest("kill -CONT " + pid);
  ASSERT_EQ(a.exit_code, 0) << a.out << a.err;
  auto j = Json(a);
  EXPECT_EQ(j["confirmed"], false);
  EXPECT_THAT(j["confirmation"].get<std::string>(), HasSubstr("no agent"));
  EXPECT_EQ(Guest("head -1 /proc/meminfo"), "HvpatchLivePatched: 1\n");
  auto l = Hvpatch({"--json", "list", vm_->qmp_target()});
  ASSERT_EQ(l.exit_code, 0) << l.err;
  EXPECT_EQ(Json(l)["patches"][0]["consistent"], true);
}

TEST_F(ConfirmTest, NoAgentStillApplies) {
  auto a = Hvpatch({"--json", "--no-agent", "apply", vm_->qmp_target(), PatchModule("hvp_meminfo")});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(Json(a)["confirmed"], false);
  EXPECT_EQ(Json(a)["confirmation"], "agent not used (--no-agent)");
}

}  // namespace
}  // namespace hv::testing
