#include "patcher/direct_map_alias.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "fake_kernel_words.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::hv::StatusIs;
using ::testing::HasSubstr;

// The guest's direct map at kPob maps guest-physical [0, 64 KiB) in this fake; the page tables
// live there: PGD at 0x1000, the direct map's PUD page at 0x2000, a guest PMD table at 0x3000.
constexpr std::uint64_t kPob = 0xffff888000000000ull;
constexpr std::uint64_t kBar = 0xfe000000ull;
constexpr std::uint64_t kTable = kBar + 0x1000;  // the arena page holding our PMD table
constexpr std::uint64_t kLeaf = kBar | 0x1e1 | (1ull << 63);  // P A D PS G NX, read-only

std::uint64_t Index(std::uint64_t va, int shift) { return (va >> shift) & 511; }

class DirectMapAliasTest : public ::testing::Test {
 protected:
  DirectMapAliasTest() : mem_(kPob, 0x10000) {
    alias_ = {kPob, kPob + 0x1000, false, kBar, 2ull << 20, kTable};
    mem_.Set64(kPob + 0x1000 + 8 * Index(kPob + kBar, 39), 0x2000 | 0x63);
  }
  std::uint64_t PudVa() const { return kPob + 0x2000 + 8 * Index(kPob + kBar, 30); }

  hv::testing::FakeKernelWords mem_;
  DirectMapAlias alias_;
};

TEST_F(DirectMapAliasTest, TheTableMapsTheArenaSlotReadOnly) {
  const auto page = DirectMapPmdTable(alias_);
  ASSERT_EQ(page.size(), 4096u);
  std::uint64_t e;
  std::memcpy(&e, page.data() + 8 * Index(kPob + kBar, 21), 8);
  EXPECT_EQ(e, kLeaf);
  EXPECT_EQ(std::count(page.begin(), page.end(), 0), 4096 - 8 + std::count(reinterpret_cast<const std::uint8_t*>(&e),
                                                                            reinterpret_cast<const std::uint8_t*>(&e) + 8, 0));
}

TEST_F(DirectMapAliasTest, AnEmptyGibGetsOurTableOnce) {
  ASSERT_THAT(LinkDirectMapAlias(mem_, alias_), IsOk());
  EXPECT_EQ(mem_.Get64(PudVa()), kTable | 0x63) << "_KERNPG_TABLE";
  const std::size_t writes = mem_.writes();
  ASSERT_THAT(LinkDirectMapAlias(mem_, alias_), IsOk());
  EXPECT_EQ(mem_.writes(), writes) << "already there: nothing written";
}

TEST_F(DirectMapAliasTest, AGibWithGuestRamGetsTheLeafInTheGuestsTable) {
  mem_.Set64(PudVa(), 0x3000 | 0x63);
  ASSERT_THAT(LinkDirectMapAlias(mem_, alias_), IsOk());
  EXPECT_EQ(mem_.Get64(kPob + 0x3000 + 8 * Index(kPob + kBar, 21)), kLeaf);
  EXPECT_EQ(mem_.Get64(PudVa()), 0x3000u | 0x63);
  ASSERT_THAT(LinkDirectMapAlias(mem_, alias_), IsOk());
  // A slot mapped to anything else is not ours to change.
  mem_.Set64(kPob + 0x3000 + 8 * Index(kPob + kBar, 21), 0xfe200000ull | 0x1e3);
  EXPECT_THAT(LinkDirectMapAlias(mem_, alias_), StatusIs(Code::kUnimplemented, HasSubstr("already (PMD entry")));
}

TEST_F(DirectMapAliasTest, NoTopLevelEntryIsRefused) {
  mem_.Set64(kPob + 0x1000 + 8 * Index(kPob + kBar, 39), 0);
  EXPECT_THAT(LinkDirectMapAlias(mem_, alias_), StatusIs(Code::kUnimplemented, HasSubstr("has no PGD table entry")));
  EXPECT_EQ(mem_.writes(), 0u);
}

TEST_F(DirectMapAliasTest, FiveLevelsWalkThroughTheP4d) {
  alias_.la57 = true;
  mem_.Set64(kPob + 0x1000 + 8 * Index(kPob + kBar, 39), 0);
  mem_.Set64(kPob + 0x1000 + 8 * Index(kPob + kBar, 48), 0x4000 | 0x63);
  EXPECT_THAT(LinkDirectMapAlias(mem_, alias_), StatusIs(Code::kUnimplemented, HasSubstr("has no P4D table entry")));
  mem_.Set64(kPob + 0x4000 + 8 * Index(kPob + kBar, 39), 0x2000 | 0x63);
  ASSERT_THAT(LinkDirectMapAlias(mem_, alias_), IsOk());
  EXPECT_EQ(mem_.Get64(PudVa()), kTable | 0x63);
}

TEST(PlanDirectMapAlias, AllocatesThePageOnceAndMapsIt) {
  auto layout = ArenaLayout::Create(0xffffffffa0600000ull, kBar, 2ull << 20);
  ASSERT_THAT(layout, IsOk());
  DirectMapAlias a{kPob, kPob + 0x1000, false, kBar, 2ull << 20, 0};
  auto writes = PlanDirectMapAlias(*layout, &a);
  ASSERT_THAT(writes, IsOk());
  ASSERT_EQ(writes->size(), 2u);
  EXPECT_EQ(a.table_gpa, kBar + 0x1000);
  EXPECT_EQ((*writes)[0].gpa, kBar + 0x1000);
  EXPECT_EQ((*writes)[0].bytes, DirectMapPmdTable(a));
  EXPECT_EQ((*writes)[1].gpa, kBar + 8) << "its PTE, in the arena's page 0";
  DirectMapAlias b{kPob, kPob + 0x1000, false, kBar, 2ull << 20, 0};
  auto again = PlanDirectMapAlias(*layout, &b);
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->empty());
  EXPECT_EQ(b.table_gpa, kBar + 0x1000);
  EXPECT_THAT(layout->Free("hvpatch-direct-map"), IsOk());
}

}  // namespace
}  // namespace hv::patcher
