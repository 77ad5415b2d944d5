// The harness itself, on a real TCG guest: boot, the command channel, exit codes, and the facts
// every later test relies on (/proc/cmdline and the guest's own kallsyms).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include "status_matchers.h"
#include "tests/harness/test_vm.h"

namespace hv::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

class HarnessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TestVmOptions o;
    o.agent = false;  // the harness alone; the agent has its own tests
    auto vm = TestVm::Start(o);
    ASSERT_THAT(vm, IsOk());
    vm_ = std::move(*vm).release();
  }
  static void TearDownTestSuite() {
    delete vm_;
    vm_ = nullptr;
  }
  static TestVm* vm_;
};
TestVm* HarnessTest::vm_ = nullptr;

TEST_F(HarnessTest, ReadsProcCmdline) {
  ASSERT_NE(vm_, nullptr);
  auto out = vm_->Check("cat /proc/cmdline");
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(*out, HasSubstr("console=ttyS0"));
  EXPECT_THAT(*out, HasSubstr("panic=-1"));
}

TEST_F(HarnessTest, ReadsKallsymsAddressOfCmdlineProcShow) {
  ASSERT_NE(vm_, nullptr);
  auto out = vm_->Check("grep ' cmdline_proc_show$' /proc/kallsyms");
  ASSERT_THAT(out, IsOk());
  // Root reads real addresses (kptr_restrict is 0 in the test image), in the kernel text range.
  EXPECT_THAT(*out, MatchesRegex("ffffffff[89a-f][0-9a-f]{7} [tT] cmdline_proc_show\n"));
}

TEST_F(HarnessTest, ReportsExitCodesAndBinaryOutput) {
  ASSERT_NE(vm_, nullptr);
  auto r = vm_->Run("printf 'a\\000b\\n'; echo err >&2; exit 7");
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->exit_code, 7);
  EXPECT_EQ(r->output, std::string("a\0b\nerr\n", 8));
  EXPECT_THAT(vm_->Check("false"), StatusIs(Code::kInternal, HasSubstr("exited 1")));
}

TEST_F(HarnessTest, HasTheArenaDeviceAndAgentPort) {
  ASSERT_NE(vm_, nullptr);
  auto out = vm_->Check(
      "for d in /sys/bus/pci/devices/*; do echo $(cat $d/vendor):$(cat $d/device); done;"
      "cat /sys/class/virtio-ports/*/name");
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(*out, HasSubstr("0x1af4:0x1110"));  // ivshmem-plain
  EXPECT_THAT(*out, HasSubstr("org.hvpatch.agent.0"));
  EXPECT_THAT(*out, HasSubstr("org.hvpatch.test.0"));
}

TEST(HarnessStop, StopsItsOwnQemuByPid) {
  TestVmOptions o;
  o.agent = false;
  auto vm = TestVm::Start(o);
  ASSERT_THAT(vm, IsOk());
  const pid_t pid = (*vm)->qemu_pid();
  ASSERT_GT(pid, 0);
  EXPECT_EQ(kill(pid, 0), 0);
  EXPECT_THAT((*vm)->Stop(), IsOk());
  EXPECT_NE(kill(pid, 0), 0);
}

}  // namespace
}  // namespace hv::testing
