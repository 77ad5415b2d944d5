#include "patcher/plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "fake_code_reader.h"
#include "fake_resolver.h"
#include "patch_files.h"
#include "patcher/trampoline.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::FakeResolver;
using testing::GuestSymbols;
using testing::ReadPatchFile;

constexpr std::uint64_t kArenaVa = 0xffffffff96600000;
constexpr std::uint64_t kArenaGpa = 0xfe000000;
constexpr std::uint64_t kCmdline = 0xffffffff81300000;
constexpr std::uint64_t kVersion = 0xffffffff81300100;

// Guest kernel text as a few byte runs, with the ftrace nop at each function entry.
class FakeKernelText : public testing::FakeCodeReader {
 public:
  FakeKernelText() {
    for (std::uint64_t fn : std::initializer_list<std::uint64_t>{kCmdline, kVersion, 0xffffffff81e00000, 0xffffffffc0201000}) {
      std::vector<std::uint8_t> b(64, 0x90);
      const std::uint8_t nop5[] = {0x0f, 0x1f, 0x44, 0x00, 0x00};
      std::memcpy(b.data(), nop5, 5);
      Put(fn, b);
    }
  }
};

class PlanTest : public ::testing::Test {
 protected:
  Result<PatchModule> Load(const std::string& name) {
    std::vector<std::uint8_t> bytes;
    if (!ReadPatchFile(name + ".ko", &bytes)) return NotFound("missing " + name);
    return PatchModule::Load(bytes, name + ".ko");
  }
  ArenaLayout Arena() { return *ArenaLayout::Create(kArenaVa, kArenaGpa, kArenaSlotSize); }
  // What the commit would do, enough for the next plan to see it.
  void Commit(const PatchPlan& plan) {
    for (const auto& f : plan.functions) text_.Write(f.entry.site_va, f.trampoline);
  }

  FakeResolver guest_ = GuestSymbols();
  FakeKernelText text_;
};

TEST_F(PlanTest, SamplePlan) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  auto plan = BuildPlan(*m, guest_, text_, Arena());
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->name, "hvp_sample");
  EXPECT_EQ(plan->fentry_nops, 1u);
  ASSERT_EQ(plan->allocations.size(), 2u);  // code and rodata, no data
  EXPECT_EQ(plan->allocations[0], (ArenaAllocation{"hvp_sample", 1, 1, MemoryClass::kCode, false}));
  EXPECT_EQ(plan->allocations[1], (ArenaAllocation{"hvp_sample", 2, 1, MemoryClass::kRodata, false}));
  ASSERT_EQ(plan->arena_writes.size(), 2u);
  const ArenaWrite& code = plan->arena_writes[0];
  EXPECT_EQ(code.va, kArenaVa + 0x1000);
  EXPECT_EQ(code.gpa, kArenaGpa + 0x1000);
  ASSERT_EQ(code.bytes.size(), 4096u);
  EXPECT_THAT(std::vector<std::uint8_t>(code.bytes.begin() + 0x30, code.bytes.begin() + 0x35),
              ElementsAre(0x0f, 0x1f, 0x44, 0x00, 0x00));
  EXPECT_EQ(code.bytes[0x4f], 0xcc);  // padding
  EXPECT_EQ(code.bytes[4095], 0xcc);
  ASSERT_EQ(plan->pte_writes.size(), 2u);
  EXPECT_EQ(plan->pte_writes[0].gpa, kArenaGpa + 8);
  EXPECT_EQ(plan->pte_writes[0].value, kArenaGpa + 0x1000 + 0x121);
  EXPECT_EQ(plan->pte_writes[1].gpa, kArenaGpa + 16);
  EXPECT_EQ(plan->pte_writes[1].value, (kArenaGpa + 0x2000 + 0x121) | (1ull << 63));

  ASSERT_EQ(plan->functions.size(), 1u);
  const FunctionPlan& f = plan->functions[0];
  EXPECT_EQ(f.old_va, kCmdline);
  EXPECT_EQ(f.new_va, kArenaVa + 0x1030);
  EXPECT_EQ(f.entry.kind, EntryKind::kFtraceNop);
  EXPECT_EQ(f.entry.site_va, kCmdline);
  EXPECT_THAT(f.entry.current, ElementsAre(0x0f, 0x1f, 0x44, 0x00, 0x00));
  EXPECT_EQ(f.trampoline, *JmpRel32(kCmdline, kArenaVa + 0x1030));
  EXPECT_FALSE(f.stacked);
  ASSERT_EQ(plan->busy.size(), 1u);
  EXPECT_EQ(plan->busy[0].begin, kCmdline);
  EXPECT_EQ(plan->busy[0].end, kCmdline + 0x40);
  EXPECT_EQ(plan->arena_after.allocations().size(), 2u);
}

TEST_F(PlanTest, TwoFunctionsInOnePlan) {
  auto m = Load("hvp_two");
  ASSERT_THAT(m, IsOk());
  auto plan = BuildPlan(*m, guest_, text_, Arena());
  ASSERT_THAT(plan, IsOk());
  ASSERT_EQ(plan->functions.size(), 2u);
  EXPECT_EQ(plan->functions[0].old_va, kCmdline);
  EXPECT_EQ(plan->functions[1].old_va, kVersion);
  EXPECT_EQ(plan->busy.size(), 2u);
}

TEST_F(PlanTest, SecondPatchStacksOnTheFirst) {
  auto a = Load("hvp_stack_a");
  auto b = Load("hvp_stack_b");
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  auto pa = BuildPlan(*a, guest_, text_, Arena());
  ASSERT_THAT(pa, IsOk());
  Commit(*pa);
  auto pb = BuildPlan(*b, guest_, text_, pa->arena_after);
  ASSERT_THAT(pb, IsOk());
  const FunctionPlan& f = pb->functions[0];
  EXPECT_EQ(f.entry.kind, EntryKind::kArenaJump);
  EXPECT_TRUE(f.stacked);
  EXPECT_EQ(f.entry.target, pa->functions[0].new_va);
  EXPECT_EQ(f.entry.current, pa->functions[0].trampoline);  // run-pre and revert bytes
  EXPECT_EQ(pb->allocations[0].first_page, 3u);             // after A's code and rodata
  EXPECT_EQ(f.new_va, kArenaVa + 0x3000 + b->functions()[0].new_offset);
}

TEST_F(PlanTest, FtraceOwnedEntryIsRefused) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  const std::uint8_t call[] = {0xe8, 0xfb, 0x1f, 0x00, 0x00};
  text_.Write(kCmdline, call);
  EXPECT_THAT(BuildPlan(*m, guest_, text_, Arena()),
              StatusIs(Code::kFailedPrecondition,
                       "planning patch 'hvp_sample': function 'cmdline_proc_show' at 0xffffffff81300000 "
                       "starts with 'call 0xffffffff81302000', not the ftrace nop: ftrace owns it (traced "
                       "in the guest, or patched by an in-guest livepatch)"));
}

// A function without an ftrace site (plain instructions at its entry): the jump overwrites them
// once vmlinux's runtime-rewritten sites are shown not to be under it, and its .cold part counts
// as busy; in a module it is refused.
TEST_F(PlanTest, PlainEntryIsPatchedOnlyWhenProvenSafe) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  const std::uint8_t plain[] = {0x48, 0x89, 0xf0, 0x31, 0xd2};  // mov rax, rsi; xor edx, edx
  text_.Write(kCmdline, plain);
  // No table bounds in kallsyms: nothing to be under the jump.
  guest_.Add("cmdline_proc_show.cold", 0xffffffff81f80000, 0x30);
  auto plan = BuildPlan(*m, guest_, text_, Arena());
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->functions[0].entry.kind, EntryKind::kPlainCode);
  EXPECT_THAT(plan->functions[0].entry.current, ElementsAre(0x48, 0x89, 0xf0, 0x31, 0xd2));
  bool cold_busy = false;
  for (const auto& r : plan->busy) cold_busy |= r.begin == 0xffffffff81f80000 && r.end == 0xffffffff81f80030;
  EXPECT_TRUE(cold_busy);

  // A jump-label site at +2 (self-relative s32 in a one-entry __jump_table).
  FakeResolver guest = GuestSymbols();
  constexpr std::uint64_t kTable = 0xffffffff82000000;
  guest.Add("__start___jump_table", kTable).Add("__stop___jump_table", kTable + 16);
  class WithTable : public GuestCodeReader {
   public:
    explicit WithTable(const GuestCodeReader& text) : text_(text) {}
    Result<std::vector<std::uint8_t>> Read(std::uint64_t va, std::size_t size) const override {
      if (va != kTable) return text_.Read(va, size);
      std::vector<std::uint8_t> e(16, 0);
      const auto rel = static_cast<std::int32_t>(static_cast<std::int64_t>(kCmdline + 2 - kTable));
      std::memcpy(e.data(), &rel, 4);
      return e;
    }
   private:
    const GuestCodeReader& text_;
  } with_table(text_);
  EXPECT_THAT(BuildPlan(*m, guest, with_table, Arena()),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("function 'cmdline_proc_show' at 0xffffffff81300000 has no ftrace site, and its "
                                 "first instructions (mov rax, rsi; xor edx, edx) hold a jump-label site at "
                                 "0xffffffff81300002")));
}

TEST_F(PlanTest, PlainEntryInAModuleIsRefused) {
  auto m = Load("hvp_virtio");
  ASSERT_THAT(m, IsOk());
  const std::uint8_t plain[] = {0x55, 0x48, 0x89, 0xe5, 0x41, 0x57};
  text_.Write(0xffffffffc0201000, plain);
  EXPECT_THAT(BuildPlan(*m, guest_, text_, Arena()),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("its entry is plain code (push rbp; mov rbp, rsp; push r15), not the ftrace nop; "
                                 "hvpatch patches plain entries in vmlinux only")));
}

TEST_F(PlanTest, ModuleFunctionIsResolvedInItsObject) {
  auto m = Load("hvp_virtio");
  ASSERT_THAT(m, IsOk());
  auto plan = BuildPlan(*m, guest_, text_, Arena());
  ASSERT_THAT(plan, IsOk());
  EXPECT_EQ(plan->functions[0].old_va, 0xffffffffc0201000u);
  FakeResolver no_module = GuestSymbols();
  no_module = FakeResolver();
  no_module.Add("seq_puts", 0xffffffff81234700).Add("__x86_return_thunk", 0xffffffff82001234);
  EXPECT_THAT(BuildPlan(*m, no_module, text_, Arena()),
              StatusIs(Code::kNotFound,
                       "planning patch 'hvp_virtio': function 'port_debugfs_show' in 'virtio_console': "
                       "symbol 'port_debugfs_show' not found in 'virtio_console'"));
}

TEST_F(PlanTest, UnreadableEntryIsReported) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  FakeResolver guest = GuestSymbols();
  guest = FakeResolver();
  guest.Add("seq_printf", 0xffffffff81234560).Add("__x86_return_thunk", 0xffffffff82001234)
      .Add("cmdline_proc_show", 0xffffffff81700000);
  EXPECT_THAT(BuildPlan(*m, guest, text_, Arena()),
              StatusIs(Code::kUnavailable,
                       HasSubstr("function 'cmdline_proc_show' in 'vmlinux': reading its entry at "
                                 "0xffffffff81700000: address")));
}

TEST_F(PlanTest, TinyFunctionIsRefused) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  FakeResolver guest = FakeResolver();
  guest.Add("seq_printf", 0xffffffff81234560).Add("__x86_return_thunk", 0xffffffff82001234)
      .Add("cmdline_proc_show", kCmdline, 4);
  EXPECT_THAT(BuildPlan(*m, guest, text_, Arena()),
              StatusIs(Code::kInvalidArgument,
                       "planning patch 'hvp_sample': function 'cmdline_proc_show' in 'vmlinux': it is 4 "
                       "bytes, too small for a 5-byte jump"));
}

TEST_F(PlanTest, FullArenaIsUnavailable) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  auto small = ArenaLayout::Create(kArenaVa, kArenaGpa, 2 * kArenaPageSize);  // one usable page
  ASSERT_THAT(small, IsOk());
  EXPECT_THAT(BuildPlan(*m, guest_, text_, *small),
              StatusIs(Code::kUnavailable,
                       "planning patch 'hvp_sample': arena full: no free run of 1 rodata pages for "
                       "'hvp_sample'"));
}

TEST_F(PlanTest, UserAccessPatchIsRefusedBeforeAnyRead) {
  auto m = Load("hvp_uaccess");
  ASSERT_THAT(m, IsOk());
  EXPECT_THAT(BuildPlan(*m, guest_, text_, Arena()),
              StatusIs(Code::kUnimplemented,
                       HasSubstr("planning patch 'hvp_uaccess': linking patch 'hvp_uaccess': function "
                                 "'hvp_uaccess_cmdline_show' needs section '.altinstructions'")));
}

TEST_F(PlanTest, SleeperReplacementPlans) {
  auto m = Load("hvp_sleep");
  ASSERT_THAT(m, IsOk());
  auto plan = BuildPlan(*m, guest_, text_, Arena());
  ASSERT_THAT(plan, IsOk());
  ASSERT_EQ(plan->allocations.size(), 2u);  // code and data (.bss counter)
  EXPECT_EQ(plan->allocations[1].memory, MemoryClass::kData);
  EXPECT_EQ(plan->busy[0].begin, 0xffffffff81e00000u);
  EXPECT_EQ(plan->busy[0].end, 0xffffffff81e00180u);
}

}  // namespace
}  // namespace hv::patcher
