// Run-pre matching (patcher/run_pre.h, SelectByRunPre in plan.h): the record format, the kernel's
// boot-time rewrites counted as equal, the first differing offset, and the sympos choice among
// static functions of one name.
#include "patcher/run_pre.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "fake_resolver.h"
#include "patcher/plan.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using testing::FakeResolver;
using ::testing::HasSubstr;

// `call __fentry__; mov %edi,%eax; add $1,%eax; jmp __x86_return_thunk`, relocation fields zero.
RunPreFunction Record() {
  RunPreFunction f;
  f.name = "limit_check";
  f.code = {0xe8, 0, 0, 0, 0, 0x89, 0xf8, 0x83, 0xc0, 0x01, 0xe9, 0, 0, 0, 0};
  f.holes = {{1, 4, 4, -4, "__fentry__"}, {11, 4, 4, -4, "__x86_return_thunk"}};
  return f;
}

// The same code as the running kernel holds it: ftrace nop, relocated thunk jump.
std::vector<std::uint8_t> Guest() {
  return {0x0f, 0x1f, 0x44, 0x00, 0x00, 0x89, 0xf8, 0x83, 0xc0, 0x01, 0xe9, 0x12, 0x34, 0x56, 0x78};
}

TEST(RunPre, SerializeParseRoundTrip) {
  RunPreFunction f = Record();
  f.volatiles = {{7, 3, VolatileKind::kAlternative}};
  auto parsed = ParseRunPre(SerializeRunPre({f, Record()}));
  ASSERT_THAT(parsed, IsOk());
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ((*parsed)[0].name, "limit_check");
  EXPECT_EQ((*parsed)[0].object, "vmlinux");
  EXPECT_EQ((*parsed)[0].code, f.code);
  ASSERT_EQ((*parsed)[0].holes.size(), 2u);
  EXPECT_EQ((*parsed)[0].holes[1].target, "__x86_return_thunk");
  ASSERT_EQ((*parsed)[0].volatiles.size(), 1u);
  EXPECT_EQ((*parsed)[0].volatiles[0].length, 3);
}

TEST(RunPre, ParseRefusesTruncatedAndBadMagic) {
  auto bytes = SerializeRunPre({Record()});
  bytes.resize(bytes.size() - 3);
  EXPECT_THAT(ParseRunPre(bytes), StatusIs(Code::kInvalidArgument, HasSubstr("runs past the end")));
  EXPECT_THAT(ParseRunPre(std::vector<std::uint8_t>{1, 2, 3}),
              StatusIs(Code::kInvalidArgument, "reading section '.hvpatch.runpre': bad magic (not an hvpatch run-pre table)"));
}

TEST(RunPre, BootTimeRewritesAreEqual) {
  EXPECT_EQ(MatchRunPre(Record(), Guest()), std::nullopt);
  // apply_returns(): jmp __x86_return_thunk -> ret; int3 x4.
  auto g = Guest();
  g[10] = 0xc3;
  g[11] = g[12] = g[13] = g[14] = 0xcc;
  EXPECT_EQ(MatchRunPre(Record(), g), std::nullopt);
  // An alternative's range may hold anything.
  RunPreFunction f = Record();
  f.volatiles = {{5, 2, VolatileKind::kAlternative}};
  g = Guest();
  g[5] = 0x90;
  g[6] = 0x90;
  EXPECT_EQ(MatchRunPre(f, g), std::nullopt);
}

TEST(RunPre, NamesTheFirstDifferingOffset) {
  auto g = Guest();
  g[9] = 0x02;  // add $2 instead of add $1
  auto m = MatchRunPre(Record(), g);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->offset, 9u);
  EXPECT_EQ(m->detail, "guest has 0x2, the build 0x1");
  // A real instruction where ftrace's site should be is a difference, not a rewrite.
  g = Guest();
  g[0] = 0x55;
  ASSERT_TRUE(MatchRunPre(Record(), g).has_value());
  EXPECT_EQ(MatchRunPre(Record(), g)->offset, 0u);
}

TEST(RunPre, RelocationFieldsMustReferToTheSameSymbols) {
  // `call kfree` at offset 5 of a function at 0xffffffff81001000.
  RunPreFunction f;
  f.name = "drop";
  f.code = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0xe8, 0, 0, 0, 0, 0xc3};
  f.holes = {{6, 4, 4 /* R_X86_64_PLT32 */, -4, "kfree"}};
  const std::uint64_t va = 0xffffffff81001000;
  const std::uint64_t kfree = 0xffffffff81200000;
  const std::int32_t rel = static_cast<std::int32_t>(kfree - 4 - (va + 6));
  std::vector<std::uint8_t> g = f.code;
  std::memcpy(g.data() + 6, &rel, 4);
  auto resolve = [&](const std::string& n) -> std::optional<std::uint64_t> {
    if (n == "kfree") return kfree;
    return std::nullopt;
  };
  EXPECT_EQ(MatchRunPre(f, g), std::nullopt);
  EXPECT_EQ(MatchRunPreRelocations(f, g, va, resolve), std::nullopt);
  // The same bytes calling another function: a difference at the field.
  const std::int32_t other = rel + 0x40;
  std::memcpy(g.data() + 6, &other, 4);
  EXPECT_EQ(MatchRunPre(f, g), std::nullopt);
  auto m = MatchRunPreRelocations(f, g, va, resolve);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->offset, 6u);
  EXPECT_EQ(m->detail, "the guest's code refers elsewhere than 'kfree' + -4");
}

class Text : public GuestCodeReader {
 public:
  void Put(std::uint64_t va, std::vector<std::uint8_t> b) { runs_[va] = std::move(b); }
  Result<std::vector<std::uint8_t>> Read(std::uint64_t va, std::size_t size) const override {
    auto it = runs_.find(va);
    if (it == runs_.end() || it->second.size() < size) return Unavailable("unmapped");
    return std::vector<std::uint8_t>(it->second.begin(), it->second.begin() + size);
  }

 private:
  std::map<std::uint64_t, std::vector<std::uint8_t>> runs_;
};

TEST(SelectByRunPre, PicksTheMatchingOneOfSeveralStaticFunctions) {
  FakeResolver r;
  r.Add("limit_check", 0xffffffff81001000).Add("limit_check", 0xffffffff81002000).Add("limit_check", 0xffffffff81003000);
  Text t;
  auto other = Guest();
  other[8] = 0xe8;
  t.Put(0xffffffff81001000, other);
  t.Put(0xffffffff81002000, Guest());
  t.Put(0xffffffff81003000, other);
  auto c = SelectByRunPre(Record(), r, t);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->sympos, 2u);
  EXPECT_EQ(c->symbol.address, 0xffffffff81002000u);
}

TEST(SelectByRunPre, RefusesNoMatchNamingFunctionAndOffset) {
  FakeResolver r;
  r.Add("limit_check", 0xffffffff81001000);
  Text t;
  auto g = Guest();
  g[9] = 0x02;
  t.Put(0xffffffff81001000, g);
  EXPECT_THAT(SelectByRunPre(Record(), r, t),
              StatusIs(Code::kFailedPrecondition,
                       "run-pre: 'limit_check' in 'vmlinux' differs from the build at offset 0x9 "
                       "(guest has 0x2, the build 0x1)"));
}

TEST(SelectByRunPre, RefusesTwoMatches) {
  FakeResolver r;
  r.Add("limit_check", 0xffffffff81001000).Add("limit_check", 0xffffffff81002000);
  Text t;
  t.Put(0xffffffff81001000, Guest());
  t.Put(0xffffffff81002000, Guest());
  EXPECT_THAT(SelectByRunPre(Record(), r, t),
              StatusIs(Code::kFailedPrecondition,
                       "run-pre: 'limit_check' in 'vmlinux' matches 2 functions of that name; the patch "
                       "cannot tell which to replace"));
}

}  // namespace
}  // namespace hv::patcher
