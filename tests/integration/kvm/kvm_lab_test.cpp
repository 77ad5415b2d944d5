// The KVM suite (issue 13), host side. These machines have no /dev/kvm, so the suite boots the
// nested lab's L1 guest (KvmLab, kvm_lab.h) with the binaries under test on its build disk, and
// runs kvm_guest_test inside it, over L1's command channel: that binary starts L2 with the
// project's harness under `-accel kvm -cpu host` and runs hvpatch against it. Its output goes
// to this test's log, and each test here passes when its namesake passed inside L1.
//
// Processes: L1's QEMU is ours (a TestVm: under `timeout`, stopped by PID on every path, also
// when this process dies). Inside L1, the guest suite stops L2 by PID; L1's end ends it all.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "status_matchers.h"
#include "tests/integration/kvm/kvm_lab.h"

#ifndef HVPATCH_KVM_LAB_SCRIPT
#define HVPATCH_KVM_LAB_SCRIPT ""
#endif
#ifndef HVPATCH_KVM_LAB_BINARIES
#define HVPATCH_KVM_LAB_BINARIES ""
#endif

namespace hv {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

class KvmLabTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    testing::KvmLabOptions o;
    o.lab_script = HVPATCH_KVM_LAB_SCRIPT;
    std::string list = HVPATCH_KVM_LAB_BINARIES;
    for (std::size_t at = 0; at <= list.size();) {
      const std::size_t end = std::min(list.find(':', at), list.size());
      if (end > at) o.binaries.push_back(list.substr(at, end - at));
      at = end + 1;
    }
    auto lab = testing::KvmLab::Start(o);
    ASSERT_THAT(lab, IsOk());
    lab_ = lab->release();
    std::printf("[figure] L1 (TCG, -cpu max, 2 GiB) booted and prepared in %.1f s\n%s", lab_->boot_seconds(),
                lab_->prepare_output().c_str());

    const auto t0 = std::chrono::steady_clock::now();
    auto run = lab_->Run("kvm_guest_test --gtest_output=json:/tmp/kvm-suite.json", 2400);
    ASSERT_THAT(run, IsOk());
    suite_seconds_ = Since(t0);
    suite_exit_ = run->exit_code;
    log_ = run->output;
    std::printf("---- kvm_guest_test inside L1 (exit %d, %.1f s) ----\n%s---- end of kvm_guest_test ----\n",
                suite_exit_, suite_seconds_, log_.c_str());
    std::fflush(stdout);
    auto results = lab_->Run("cat /tmp/kvm-suite.json", 60);
    ASSERT_THAT(results, IsOk());
    json j = json::parse(results->output, nullptr, false);
    ASSERT_TRUE(j.is_object() && j["testsuites"].is_array()) << results->output;
    for (const json& suite : j["testsuites"]) {
      for (const json& t : suite["testsuite"]) results_[t["name"].get<std::string>()] = t;
    }
  }

  static void TearDownTestSuite() {
    if (lab_) {
      EXPECT_THAT(lab_->Stop(), IsOk());
    }
    delete lab_;
    lab_ = nullptr;
  }

  // Passes when the test `name` of the guest suite ran inside L1 and passed.
  static void ExpectPassedInL1(const std::string& name) {
    ASSERT_NE(lab_, nullptr) << "L1 did not come up";
    auto it = results_.find(name);
    ASSERT_NE(it, results_.end()) << "KvmGuestTest." << name << " did not run inside L1; log:\n" << log_;
    const json& t = it->second;
    EXPECT_EQ(t["status"], "RUN");
    EXPECT_EQ(t["result"], "COMPLETED");
    std::string failures;
    if (t.contains("failures")) {
      for (const json& f : t["failures"]) failures += f["failure"].get<std::string>() + "\n";
    }
    EXPECT_TRUE(failures.empty()) << "KvmGuestTest." << name << " failed inside L1:\n" << failures;
  }

  static testing::KvmLab* lab_;
  static std::string log_;
  static int suite_exit_;
  static double suite_seconds_;
  static std::map<std::string, json> results_;
};

testing::KvmLab* KvmLabTest::lab_ = nullptr;
std::string KvmLabTest::log_;
int KvmLabTest::suite_exit_ = -1;
double KvmLabTest::suite_seconds_ = 0;
std::map<std::string, json> KvmLabTest::results_;

TEST_F(KvmLabTest, GuestRunsUnderKvm) {
  ExpectPassedInL1("GuestRunsUnderKvm");
  // Both proofs are in the log, as the guest suite printed them.
  EXPECT_THAT(log_, HasSubstr("\"enabled\":true"));
  EXPECT_THAT(log_, HasSubstr("L2 dmesg: "));
  EXPECT_THAT(log_, HasSubstr("Hypervisor detected: KVM"));
}
TEST_F(KvmLabTest, CodeWrittenStraightIntoRamRunsAtOnce) { ExpectPassedInL1("CodeWrittenStraightIntoRamRunsAtOnce"); }
TEST_F(KvmLabTest, InfoReadsTheGuestKernel) { ExpectPassedInL1("InfoReadsTheGuestKernel"); }
TEST_F(KvmLabTest, SampleAppliesListsReverts) { ExpectPassedInL1("SampleAppliesListsReverts"); }
TEST_F(KvmLabTest, TwoFunctionsSwitchInOnePause) { ExpectPassedInL1("TwoFunctionsSwitchInOnePause"); }
TEST_F(KvmLabTest, BusyFunctionRefusedThenAppliedWhenIdle) { ExpectPassedInL1("BusyFunctionRefusedThenAppliedWhenIdle"); }
TEST_F(KvmLabTest, KillDuringThePauseThenRecovery) { ExpectPassedInL1("KillDuringThePauseThenRecovery"); }

// Nothing ran inside L1 that is not checked here, and the guest suite as a whole passed.
TEST_F(KvmLabTest, WholeGuestSuitePassed) {
  ASSERT_NE(lab_, nullptr);
  EXPECT_EQ(suite_exit_, 0) << log_;
  EXPECT_EQ(results_.size(), 7u);
  std::printf("[figure] guest suite inside L1: %.1f s\n", suite_seconds_);
}

}  // namespace
}  // namespace hv
