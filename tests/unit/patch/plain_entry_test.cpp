#include "patcher/plain_entry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "fake_code_reader.h"
#include "fake_resolver.h"
#include "patcher/plan.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using testing::FakeResolver;

constexpr std::uint64_t kFn = 0xffffffff81500000;
constexpr std::uint64_t kJumpTable = 0xffffffff82000000;
constexpr std::uint64_t kCallSites = 0xffffffff82100000;
constexpr std::uint64_t kLocks = 0xffffffff82200000;

// A table of `entry_size`-byte entries whose first s32 points at each of `targets`.
std::vector<std::uint8_t> Table(std::uint64_t at, std::uint32_t entry_size, std::vector<std::uint64_t> targets) {
  std::vector<std::uint8_t> b(targets.size() * entry_size, 0);
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const auto rel = static_cast<std::int32_t>(static_cast<std::int64_t>(targets[i] - (at + i * entry_size)));
    std::memcpy(b.data() + i * entry_size, &rel, 4);
  }
  return b;
}

EntrySite PlainSite() {
  std::vector<std::uint8_t> b = {0x48, 0x89, 0xf0, 0x31, 0xd2, 0x48, 0x85, 0xf6};
  b.resize(kEntryReadSize, 0x90);
  return *ClassifyEntry(b, kFn, {0xffffffff96600000, 0xffffffff96800000});
}

class PlainEntryTest : public ::testing::Test {
 protected:
  void Tables(std::vector<std::uint64_t> jumps, std::vector<std::uint64_t> calls, std::vector<std::uint64_t> locks) {
    guest_.Add("__start___jump_table", kJumpTable).Add("__stop___jump_table", kJumpTable + 16 * jumps.size());
    guest_.Add("__start_static_call_sites", kCallSites).Add("__stop_static_call_sites", kCallSites + 8 * calls.size());
    guest_.Add("__smp_locks", kLocks).Add("__smp_locks_end", kLocks + 4 * locks.size());
    mem_.Put(kJumpTable, Table(kJumpTable, 16, jumps));
    mem_.Put(kCallSites, Table(kCallSites, 8, calls));
    mem_.Put(kLocks, Table(kLocks, 4, locks));
  }
  FakeResolver guest_;
  testing::FakeCodeReader mem_;
};

TEST_F(PlainEntryTest, ReadsTheThreeTablesSorted) {
  Tables({kFn + 0x40, kFn - 0x100}, {kFn + 0x80}, {kFn + 0x20, kFn + 0x10});
  auto s = ReadVmlinuxTextSites(guest_, mem_);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(s->jump_labels, ElementsAre(kFn - 0x100, kFn + 0x40));
  EXPECT_THAT(s->static_calls, ElementsAre(kFn + 0x80));
  EXPECT_THAT(s->lock_prefixes, ElementsAre(kFn + 0x10, kFn + 0x20));
  EXPECT_THAT(CheckNoTextSiteUnderJump(PlainSite(), "ucs2_strnlen", *s), IsOk());
}

TEST_F(PlainEntryTest, ASiteUnderTheJumpIsRefusedByKind) {
  // A jump label 4 bytes before the entry still reaches into it (5 bytes long); one at +5 does not.
  Tables({kFn - 4}, {}, {});
  auto s = ReadVmlinuxTextSites(guest_, mem_);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(CheckNoTextSiteUnderJump(PlainSite(), "f", *s),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("function 'f' at 0xffffffff81500000 has no ftrace site, and its first instructions "
                                 "(mov rax, rsi; xor edx, edx) hold a jump-label site at 0xffffffff814ffffc")));
  TextSites after{{kFn + 5}, {}, {}};
  EXPECT_THAT(CheckNoTextSiteUnderJump(PlainSite(), "f", after), IsOk());
  TextSites call{{}, {kFn + 3}, {}};
  EXPECT_THAT(CheckNoTextSiteUnderJump(PlainSite(), "f", call),
              StatusIs(Code::kFailedPrecondition, HasSubstr("a static-call site at 0xffffffff81500003")));
  TextSites lock{{}, {}, {kFn + 4}};
  EXPECT_THAT(CheckNoTextSiteUnderJump(PlainSite(), "f", lock),
              StatusIs(Code::kFailedPrecondition, HasSubstr("a lock prefix the kernel switches for UP/SMP")));
  TextSites lock_before{{}, {}, {kFn - 1}};
  EXPECT_THAT(CheckNoTextSiteUnderJump(PlainSite(), "f", lock_before), IsOk());
}

TEST_F(PlainEntryTest, AbsentTablesAreEmptyButHalfATableIsAnError) {
  auto none = ReadVmlinuxTextSites(guest_, mem_);
  ASSERT_THAT(none, IsOk());
  EXPECT_TRUE(none->jump_labels.empty());
  guest_.Add("__start___jump_table", kJumpTable);
  EXPECT_THAT(ReadVmlinuxTextSites(guest_, mem_), StatusIs(Code::kNotFound, HasSubstr("__stop___jump_table")));
}

TEST_F(PlainEntryTest, ImplausibleBoundsAreRefused) {
  guest_.Add("__start___jump_table", kJumpTable).Add("__stop___jump_table", kJumpTable + 17);
  EXPECT_THAT(ReadVmlinuxTextSites(guest_, mem_),
              StatusIs(Code::kFailedPrecondition, HasSubstr("is not a table of 16-byte entries")));
  FakeResolver backwards;
  backwards.Add("__start___jump_table", kJumpTable).Add("__stop___jump_table", kJumpTable - 16);
  EXPECT_THAT(ReadVmlinuxTextSites(backwards, mem_), StatusIs(Code::kFailedPrecondition, HasSubstr("is not a table")));
}

TEST_F(PlainEntryTest, ColdPartsOfEveryOccurrence) {
  EXPECT_TRUE(ColdParts(guest_, "ucs2_strnlen").empty());
  guest_.Add("f.cold", 0xffffffff81f00000, 0x20);
  EXPECT_THAT(ColdParts(guest_, "f"), ElementsAre(std::make_pair(0xffffffff81f00000ull, 0xffffffff81f00020ull)));
  guest_.Add("f.cold", 0xffffffff81f01000, 0x10);
  EXPECT_THAT(ColdParts(guest_, "f"),
              UnorderedElementsAre(std::make_pair(0xffffffff81f00000ull, 0xffffffff81f00020ull),
                                   std::make_pair(0xffffffff81f01000ull, 0xffffffff81f01010ull)));
}

}  // namespace
}  // namespace hv::patcher
