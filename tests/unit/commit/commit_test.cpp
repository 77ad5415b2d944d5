#include "patcher/commit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fake_vm.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using hv::testing::FakeVm;

constexpr std::uint64_t kText = 0xffffffff81000000ull;
constexpr std::uint64_t kOld = kText + 0x1000;      // the function being replaced, 0x80 bytes
constexpr std::uint64_t kStack = 0xffffc90000010000ull;  // a 16 KiB task stack
const std::vector<std::uint8_t> kNop5 = {0x0f, 0x1f, 0x44, 0x00, 0x00};
const std::vector<std::uint8_t> kJmp = {0xe9, 0x11, 0x22, 0x33, 0x44};

class ListedStacks : public StackSource {
 public:
  explicit ListedStacks(FakeVm* vm = nullptr) : vm_(vm) {}
  void Prepare() override {
    // Before each pause, with the guest running.
    prepared_while_running.push_back(vm_ != nullptr && *vm_->Running());
  }
  Result<std::vector<StackRegion>> Collect(std::span<const vmm::VcpuState>) override {
    ++calls;
    if (calls_until_idle > 0 && --calls_until_idle == 0) busy_word_at = 0;
    return regions;
  }
  std::vector<StackRegion> regions;
  int calls = 0;
  int calls_until_idle = 0;
  std::uint64_t busy_word_at = 0;
  std::vector<bool> prepared_while_running;

 private:
  FakeVm* vm_;
};

class CommitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vm_.MapRange(kText, 0x4000);
    vm_.MapRange(kStack, 0x4000);
    vm_.PokeVirt(kOld, kNop5);
    stacks_.regions = {{42, 42, "sleep", kStack + 0x3f00, kStack + 0x4000, "task"}};
    plan_.busy = {{kOld, kOld + 0x80, "do_nanosleep"}};
    plan_.code_writes = {{kOld, kNop5, kJmp, "trampoline of 'do_nanosleep'"}};
  }
  void PlantReturnAddress() {
    std::vector<std::uint8_t> w(8);
    const std::uint64_t ra = kOld + 0x40;
    std::memcpy(w.data(), &ra, 8);
    vm_.PokeVirt(kStack + 0x3f80, w);
  }
  FakeVm vm_;
  ListedStacks stacks_{&vm_};
  CommitPlan plan_;
};

TEST_F(CommitTest, WritesTrampolineInOnePauseAndRestoresRunState) {
  Committer c(vm_, stacks_, {5, std::chrono::milliseconds(0)});
  auto r = c.Commit(plan_);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->tries, 1);
  EXPECT_EQ(vm_.pauses_, 1);
  EXPECT_TRUE(*vm_.Running());
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kJmp);
  EXPECT_EQ(r->threads_scanned, 1u);
  EXPECT_EQ(r->bytes_scanned, 0x100u);
}

TEST_F(CommitTest, BusyStackRetriesThenNamesTheTaskAndLeavesGuestUntouched) {
  PlantReturnAddress();
  std::vector<std::string> steps;
  Committer c(vm_, stacks_, {3, std::chrono::milliseconds(1)},
              [&](std::string_view s) { steps.emplace_back(s); });
  auto r = c.Commit(plan_);
  EXPECT_THAT(r, StatusIs(Code::kBusy, "code busy after 3 tries: pid 42 (sleep) in do_nanosleep"));
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kNop5);
  EXPECT_EQ(stacks_.calls, 3);
  EXPECT_TRUE(*vm_.Running());
  EXPECT_THAT(steps, ElementsAre("paused", "paused", "paused"));
  EXPECT_TRUE(vm_.log.empty());
  // Each try let the source warm up first, outside its pause.
  EXPECT_THAT(stacks_.prepared_while_running, ElementsAre(true, true, true));
}

TEST_F(CommitTest, VcpuExecutingTheOldFunctionIsBusy) {
  vm_.rips = {0, kOld + 3};
  Committer c(vm_, stacks_, {1, std::chrono::milliseconds(0)});
  EXPECT_THAT(c.Commit(plan_), StatusIs(Code::kBusy, HasSubstr("vCPU 1 RIP in do_nanosleep")));
}

TEST_F(CommitTest, RunPreMismatchFailsBeforeAnyWrite) {
  vm_.PokeVirt(kOld, {0xe8, 0, 0, 0, 0});  // ftrace took the function meanwhile
  plan_.phys_writes = {{0x100000, {1, 2, 3}, "arena"}};
  Committer c(vm_, stacks_, {5, std::chrono::milliseconds(0)});
  EXPECT_THAT(c.Commit(plan_),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("expected 0f 1f 44 00 00, found e8 00 00 00 00")));
  EXPECT_TRUE(vm_.log.empty());
  EXPECT_TRUE(*vm_.Running());
}

TEST_F(CommitTest, OperatorPausedVmStaysPaused) {
  ASSERT_THAT(vm_.Pause(), IsOk());  // the operator's pause
  Committer c(vm_, stacks_, {1, std::chrono::milliseconds(0)});
  ASSERT_THAT(c.Commit(plan_), IsOk());
  EXPECT_FALSE(*vm_.Running());
}

TEST_F(CommitTest, WriteFailureStillResumes) {
  vm_.fail_code_writes = true;
  Committer c(vm_, stacks_, {1, std::chrono::milliseconds(0)});
  EXPECT_THAT(c.Commit(plan_), StatusIs(Code::kInternal, HasSubstr("writing trampoline of 'do_nanosleep'")));
  EXPECT_TRUE(*vm_.Running());
}

TEST_F(CommitTest, FailedSecondWriteRollsBackTheFirst) {
  constexpr std::uint64_t kOther = kOld + 0x100;
  vm_.PokeVirt(kOther, kNop5);
  plan_.code_writes.push_back({kOther, kNop5, kJmp, "trampoline of 'other'"});
  vm_.fail_code_writes_after = 1;
  Committer c(vm_, stacks_, {1, std::chrono::milliseconds(0)});
  EXPECT_THAT(c.Commit(plan_), StatusIs(Code::kInternal, HasSubstr("writing trampoline of 'other'")));
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kNop5);
  EXPECT_EQ(vm_.PeekVirt(kOther, 5), kNop5);
  EXPECT_TRUE(*vm_.Running());
}

// Vm::PrepareToPause and Vm::AfterResume bracket each pause from outside (depth 0), and the
// second comes even when a write in the pause failed: what was written must still be checked
// against a migration that started meanwhile.
TEST_F(CommitTest, EveryPauseIsBracketedFromOutsideEvenWhenAWriteFails) {
  Committer ok(vm_, stacks_, {1, std::chrono::milliseconds(0)});
  ASSERT_THAT(ok.Commit(plan_), IsOk());
  EXPECT_THAT(vm_.bracket, ElementsAre("prepare at depth 0", "after at depth 0"));

  vm_.bracket.clear();
  constexpr std::uint64_t kOther = kOld + 0x100;
  vm_.PokeVirt(kOther, kNop5);
  CommitPlan two = plan_;
  two.code_writes = {{kOther, kNop5, kJmp, "trampoline of 'other'"}};
  vm_.fail_code_writes_after = 0;
  Committer failing(vm_, stacks_, {1, std::chrono::milliseconds(0)});
  EXPECT_THAT(failing.Commit(two), StatusIs(Code::kInternal, HasSubstr("writing trampoline of 'other'")));
  EXPECT_THAT(vm_.bracket, ElementsAre("prepare at depth 0", "after at depth 0"));
}

TEST_F(CommitTest, StepsAreReportedInOrder) {
  plan_.phys_writes = {{0x100000, {1}, "arena"}};
  std::vector<std::string> steps;
  Committer c(vm_, stacks_, {1, std::chrono::milliseconds(0)},
              [&](std::string_view s) { steps.emplace_back(s); });
  ASSERT_THAT(c.Commit(plan_), IsOk());
  EXPECT_THAT(steps, ElementsAre("paused", "checked", "phys_written", "code_written:1", "resumed"));
  EXPECT_THAT(vm_.log, ElementsAre("phys 0x100000", "code 0xffffffff81001000"));
}

TEST_F(CommitTest, PhasesOfThePauseAreNamedInOrderAndAddUpToThePauseWindow) {
  plan_.phys_writes = {{0x100000, {1}, "arena"}};
  Committer c(vm_, stacks_, {1, std::chrono::milliseconds(0)});
  auto r = c.Commit(plan_);
  ASSERT_THAT(r, IsOk());
  std::vector<std::string> names;
  std::uint64_t sum = 0;
  for (const PausePhase& p : r->phases) {
    names.push_back(p.name);
    sum += p.us;
  }
  EXPECT_THAT(names, ElementsAre("pause", "vcpus", "stacks", "stack_check", "run_pre", "phys_writes",
                                 "code_writes", "resume"));
  // Each phase is rounded down to a microsecond on its own.
  EXPECT_LE(sum, r->pause_us);
  EXPECT_GE(sum + r->phases.size(), r->pause_us);
}

TEST(StackCheckTest, RejectsAbsurdRegionsAndUnreadableStacks) {
  FakeVm vm;
  std::vector<vmm::VcpuState> vcpus;
  std::vector<CodeRange> ranges = {{kOld, kOld + 16, "f"}};
  std::vector<StackRegion> huge = {{1, 1, "x", kStack, kStack + (1 << 20), "task"}};
  EXPECT_THAT(CheckStacks(vm, vm.Mode(), vcpus, huge, ranges),
              StatusIs(Code::kInvalidArgument, HasSubstr("bad range")));
  std::vector<StackRegion> unmapped = {{7, 8, "kworker", kStack, kStack + 64, "task"}};
  EXPECT_THAT(CheckStacks(vm, vm.Mode(), vcpus, unmapped, ranges),
              StatusIs(Code::kFailedPrecondition, HasSubstr("stack of pid 8 ('kworker')")));
  std::vector<StackRegion> dead = {{9, 9, "zombie", 0, 0, "task"}};
  auto r = CheckStacks(vm, vm.Mode(), vcpus, dead, ranges);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->safe());
  EXPECT_EQ(r->threads_scanned, 0u);
}

// Kernel edits (the shadow module's links) read the guest inside the pause, and their staged
// words land after the physical writes and before the trampolines.
TEST_F(CommitTest, KernelEditIsDecidedInThePauseAndWrittenBeforeTheTrampolines) {
  const std::uint64_t word = kText + 0x2000;
  vm_.PokeVirt(word, {41, 0, 0, 0, 0, 0, 0, 0});
  int calls = 0;
  plan_.kernel_edits.push_back([&](KernelWords& mem) -> Status {
    ++calls;
    EXPECT_EQ(vm_.PeekVirt(kOld, 5), kNop5) << "no trampoline before the edit";
    HV_ASSIGN_OR_RETURN(std::uint64_t v, mem.Read64(word));
    HV_RETURN_IF_ERROR(mem.Write64(word, v + 1));
    HV_ASSIGN_OR_RETURN(std::uint64_t staged, mem.Read64(word));
    EXPECT_EQ(staged, 42u) << "reads see the staged write";
    EXPECT_EQ(vm_.PeekVirt(word, 1)[0], 41) << "nothing written while staging";
    return Status::Ok();
  });
  Committer c(vm_, stacks_, {5, std::chrono::milliseconds(0)});
  auto r = c.Commit(plan_);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(vm_.PeekVirt(word, 1)[0], 42);
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kJmp);
  std::vector<std::string> names;
  for (const auto& p : r->phases) names.push_back(p.name);
  EXPECT_THAT(names, ::testing::Contains("kernel_edits"));
}

// An atomic replace unlinks the replaced patches' modules only once no trampoline leads to them.
TEST_F(CommitTest, FinalKernelEditSeesTheFirstEditsAndIsWrittenAfterTheCodeWrites) {
  const std::uint64_t word = kText + 0x2000;
  vm_.PokeVirt(word, {41, 0, 0, 0, 0, 0, 0, 0});
  plan_.kernel_edits.push_back([&](KernelWords& mem) -> Status { return mem.Write64(word, 42); });
  plan_.final_kernel_edits.push_back([&](KernelWords& mem) -> Status {
    HV_ASSIGN_OR_RETURN(std::uint64_t v, mem.Read64(word));
    EXPECT_EQ(v, 42u) << "the final edit reads what the first edits staged";
    return mem.Write64(word, v + 1);
  });
  std::vector<std::string> seen;
  Committer c(vm_, stacks_, {5, std::chrono::milliseconds(0)}, [&](std::string_view step) {
    if (step == "code_written:1") seen.push_back("at the trampoline: " + std::to_string(vm_.PeekVirt(word, 1)[0]));
  });
  auto r = c.Commit(plan_);
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(seen, ::testing::ElementsAre("at the trampoline: 42"));
  EXPECT_EQ(vm_.PeekVirt(word, 1)[0], 43);
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kJmp);
  std::vector<std::string> names;
  for (const auto& p : r->phases) names.push_back(p.name);
  EXPECT_THAT(names, ::testing::ElementsAre("pause", "vcpus", "stacks", "stack_check", "run_pre", "kernel_reads",
                                            "phys_writes", "kernel_edits", "code_writes", "final_kernel_edits",
                                            "resume"));
}

TEST_F(CommitTest, BusyKernelEditIsRetriedAndFinallyReportedUntouched) {
  int calls = 0;
  plan_.kernel_edits.push_back([&](KernelWords&) -> Status {
    return ++calls < 2 ? Busy("the guest holds module_mutex (owner 0x1)") : Status::Ok();
  });
  Committer c(vm_, stacks_, {3, std::chrono::milliseconds(1)});
  auto r = c.Commit(plan_);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->tries, 2);
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kJmp);

  vm_.PokeVirt(kOld, kNop5);
  plan_.kernel_edits = {[](KernelWords&) -> Status { return Busy("the guest holds module_mutex (owner 0x1)"); }};
  Committer always(vm_, stacks_, {3, std::chrono::milliseconds(1)});
  EXPECT_THAT(always.Commit(plan_), StatusIs(Code::kBusy, HasSubstr("module_mutex")));
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kNop5);
  EXPECT_TRUE(*vm_.Running());
}

TEST_F(CommitTest, FailedKernelEditAbortsBeforeAnyWrite) {
  plan_.phys_writes.push_back({0x1000, {1, 2, 3}, "arena page"});
  plan_.kernel_edits.push_back([](KernelWords&) -> Status { return FailedPrecondition("the module list is corrupt"); });
  Committer c(vm_, stacks_, {3, std::chrono::milliseconds(0)});
  EXPECT_THAT(c.Commit(plan_), StatusIs(Code::kFailedPrecondition, HasSubstr("corrupt")));
  EXPECT_EQ(vm_.PeekVirt(kOld, 5), kNop5);
  EXPECT_TRUE(vm_.log.empty());
  EXPECT_TRUE(*vm_.Running());
}

}  // namespace
}  // namespace hv::patcher
