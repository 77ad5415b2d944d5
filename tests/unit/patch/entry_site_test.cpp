#include "patcher/entry_site.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "patcher/trampoline.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr std::uint64_t kFn = 0xffffffff81300000;  // cmdline_proc_show
const AddressRange kArena{0xffffffff96600000, 0xffffffff96800000};

std::vector<std::uint8_t> Entry(std::vector<std::uint8_t> head) {
  head.resize(kEntryReadSize, 0x90);
  return head;
}

TEST(ClassifyEntry, FtraceNopIsPatchable) {
  // cmdline_proc_show in the test guest: nop5, push rbp... (lab notes)
  auto s = ClassifyEntry(Entry({0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55}), kFn, kArena);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->kind, EntryKind::kFtraceNop);
  EXPECT_FALSE(s->endbr64);
  EXPECT_EQ(s->site_va, kFn);
  EXPECT_THAT(s->current, ElementsAre(0x0f, 0x1f, 0x44, 0x00, 0x00));
  EXPECT_EQ(s->instruction, "nop dword ptr [rax + rax]");
  EXPECT_THAT(CheckPatchable(*s, "cmdline_proc_show"), IsOk());
}

TEST(ClassifyEntry, Endbr64MovesTheSiteByFour) {
  auto s = ClassifyEntry(Entry({0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x44, 0x00, 0x00}), kFn, kArena);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->kind, EntryKind::kFtraceNop);
  EXPECT_TRUE(s->endbr64);
  EXPECT_EQ(s->site_va, kFn + 4);
}

TEST(ClassifyEntry, FtraceCallMeansFtraceOwnsIt) {
  // call rel32 to ftrace_caller, 0x2000 past the call.
  auto s = ClassifyEntry(Entry({0xe8, 0xfb, 0x1f, 0x00, 0x00}), kFn, kArena);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->kind, EntryKind::kCall);
  EXPECT_EQ(s->target, kFn + 0x2000);
  EXPECT_THAT(CheckPatchable(*s, "cmdline_proc_show"),
              StatusIs(Code::kFailedPrecondition,
                       "function 'cmdline_proc_show' at 0xffffffff81300000 starts with 'call "
                       "0xffffffff81302000', not the ftrace nop: ftrace owns it (traced in the guest, or "
                       "patched by an in-guest livepatch)"));
}

TEST(ClassifyEntry, OurOwnJumpIsAStackedPatch) {
  auto jmp = JmpRel32(kFn, kArena.begin + 0x1030);
  ASSERT_THAT(jmp, IsOk());
  auto s = ClassifyEntry(Entry({jmp->begin(), jmp->end()}), kFn, kArena);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->kind, EntryKind::kArenaJump);
  EXPECT_EQ(s->target, kArena.begin + 0x1030);
  EXPECT_THAT(CheckPatchable(*s, "cmdline_proc_show"), IsOk());
}

TEST(ClassifyEntry, ForeignJumpIsRefused) {
  auto jmp = JmpRel32(kFn, 0xffffffffc0001000);
  ASSERT_THAT(jmp, IsOk());
  auto s = ClassifyEntry(Entry({jmp->begin(), jmp->end()}), kFn, kArena);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->kind, EntryKind::kOtherJump);
  EXPECT_THAT(CheckPatchable(*s, "f"),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("starts with 'jmp 0xffffffffc0001000', not the ftrace nop: a jump outside "
                                 "hvpatch's arena")));
}

TEST(ClassifyEntry, PlainCodeIsNamedAndNeedsItsOwnProof) {
  // ucs2_strnlen in Debian's 6.1.170-3 (lib/ is built without ftrace): mov rax, rsi; xor edx, edx
  auto s = ClassifyEntry(Entry({0x48, 0x89, 0xf0, 0x31, 0xd2, 0x48, 0x85, 0xf6}), kFn, kArena);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->kind, EntryKind::kPlainCode);
  EXPECT_EQ(s->covered, "mov rax, rsi; xor edx, edx");
  EXPECT_EQ(s->covered_size, 5u);
  EXPECT_THAT(CheckPatchable(*s, "ucs2_strnlen"),
              StatusIs(Code::kFailedPrecondition, HasSubstr("plain code, which only the plain-entry proof may allow")));
  // push rbp; mov rbp, rsp: 4 bytes, so the instruction after them is under the jump too.
  auto p = ClassifyEntry(Entry({0x55, 0x48, 0x89, 0xe5, 0x41, 0x57}), kFn, kArena);
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->kind, EntryKind::kPlainCode);
  EXPECT_EQ(p->covered, "push rbp; mov rbp, rsp; push r15");
  EXPECT_EQ(p->covered_size, 6u);
}

TEST(ClassifyEntry, BreakpointsAndShortFunctionsAreNotPlainCode) {
  auto bp = ClassifyEntry(Entry({0xcc, 0x1f, 0x44, 0x00, 0x00}), kFn, kArena);
  ASSERT_THAT(bp, IsOk());
  EXPECT_EQ(bp->kind, EntryKind::kOther);
  EXPECT_THAT(CheckPatchable(*bp, "f"),
              StatusIs(Code::kFailedPrecondition, HasSubstr("'int3', not the ftrace nop: a breakpoint")));
  // A kprobe on the second instruction: the int3 is under the jump.
  auto kp = ClassifyEntry(Entry({0x55, 0xcc, 0x89, 0xe5, 0x41, 0x57}), kFn, kArena);
  ASSERT_THAT(kp, IsOk());
  EXPECT_EQ(kp->kind, EntryKind::kOther);
  EXPECT_THAT(CheckPatchable(*kp, "notrace_fn"),
              StatusIs(Code::kFailedPrecondition,
                       "function 'notrace_fn' at 0xffffffff81300000 starts with 'push rbp', not the ftrace nop "
                       "(0f 1f 44 00 00): not an ftrace-patchable entry, nor plain code ('int3' at +1 under "
                       "the jump)"));
  // xor eax, eax; ret: the function ends under the jump.
  auto ret = ClassifyEntry(Entry({0x31, 0xc0, 0xc3}), kFn, kArena);
  ASSERT_THAT(ret, IsOk());
  EXPECT_EQ(ret->kind, EntryKind::kOther);
  // An optprobe's jump after the first instruction.
  auto opt = ClassifyEntry(Entry({0x55, 0xe9, 0x00, 0x10, 0x00, 0x00}), kFn, kArena);
  ASSERT_THAT(opt, IsOk());
  EXPECT_EQ(opt->kind, EntryKind::kOther);
}

TEST(ClassifyEntry, NeedsNineBytes) {
  std::vector<std::uint8_t> b = {0x0f, 0x1f, 0x44, 0x00, 0x00};
  EXPECT_THAT(ClassifyEntry(b, kFn, kArena),
              StatusIs(Code::kInvalidArgument,
                       "entry of the function at 0xffffffff81300000: 5 bytes given, at least 9 needed"));
}

TEST(Trampoline, JmpRel32EncodesAndChecksReach) {
  auto j = JmpRel32(0xffffffff81300000, 0xffffffff96601030);
  ASSERT_THAT(j, IsOk());
  // 0xffffffff96601030 - 0xffffffff81300005 = 0x1530102b
  EXPECT_THAT(*j, ElementsAre(0xe9, 0x2b, 0x10, 0x30, 0x15));
  auto back = JmpRel32(0xffffffff96601030, 0xffffffff81300000);
  ASSERT_THAT(back, IsOk());
  EXPECT_THAT(*back, ElementsAre(0xe9, 0xcb, 0xef, 0xcf, 0xea));  // -0x15301035
  EXPECT_THAT(JmpRel32(0xffffffff81300000, 0xffff888000000000),
              StatusIs(Code::kInvalidArgument,
                       "jump from 0xffffffff81300000 to 0xffff888000000000 is out of rel32 reach"));
}

TEST(Trampoline, RunPreCheck) {
  const std::vector<std::uint8_t> nop = {0x0f, 0x1f, 0x44, 0x00, 0x00};
  EXPECT_THAT(CheckRunPre(nop, nop, 0x1000, "function 'f'"), IsOk());
  const std::vector<std::uint8_t> call = {0xe8, 0xfb, 0x1f, 0x00, 0x00};
  EXPECT_THAT(CheckRunPre(nop, call, 0xffffffff81300000, "function 'cmdline_proc_show'"),
              StatusIs(Code::kFailedPrecondition,
                       "function 'cmdline_proc_show': bytes at 0xffffffff81300000 changed since the plan "
                       "(expected 0f 1f 44 00 00, found e8 fb 1f 00 00)"));
}

}  // namespace
}  // namespace hv::patcher
