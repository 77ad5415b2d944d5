#include "vmm/page_walk.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fake_phys_memory.h"
#include "status_matchers.h"

namespace hv::vmm {
namespace {

using ::hv::testing::FakePhysMemory;
using ::testing::HasSubstr;

constexpr std::uint64_t kP = pte::kPresent, kW = pte::kWritable, kU = pte::kUser, kNX = pte::kNoExecute;
constexpr std::uint64_t k4K = 4096, k2M = 2ull << 20, k1G = 1ull << 30;

class PageWalkTest : public ::testing::TestWithParam<bool> {
 protected:
  PageWalkTest() : mem_(16ull << 20) { root_ = mem_.AllocTable(); }
  PagingMode Mode() const { return PagingMode{root_ | 0x5 /* PCID bits are ignored */, GetParam(), true}; }
  FakePhysMemory mem_;
  std::uint64_t root_;
};

TEST_P(PageWalkTest, FourKilobytePage) {
  const std::uint64_t va = 0xffffffff81234567ull;
  mem_.Map(root_, GetParam(), va & ~0xfffull, 0x345000, k4K, kP | kW);
  auto t = TranslateVirt(mem_, Mode(), va);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->gpa, 0x345567u);
  EXPECT_EQ(t->page_size, k4K);
  EXPECT_TRUE(t->writable);
  EXPECT_FALSE(t->user);
  EXPECT_FALSE(t->nx);
}

TEST_P(PageWalkTest, TwoMegabytePage) {
  const std::uint64_t va = 0xffffffff82512345ull;
  mem_.Map(root_, GetParam(), va & ~(k2M - 1), 0x1400000, k2M, kP | kNX);
  auto t = TranslateVirt(mem_, Mode(), va);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->gpa, 0x1400000u + (va & (k2M - 1)));
  EXPECT_EQ(t->page_size, k2M);
  EXPECT_FALSE(t->writable);
  EXPECT_TRUE(t->nx);
}

TEST_P(PageWalkTest, OneGigabytePage) {
  const std::uint64_t va = 0xffff888000000000ull + 0x12345678;
  mem_.Map(root_, GetParam(), va & ~(k1G - 1), 0x40000000, k1G, kP | kW | kNX);
  auto t = TranslateVirt(mem_, Mode(), va);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->gpa, 0x40000000u + 0x12345678u);
  EXPECT_EQ(t->page_size, k1G);
  EXPECT_TRUE(t->writable);
  EXPECT_TRUE(t->nx);
}

TEST_P(PageWalkTest, UserPageNeedsUserAtEveryLevel) {
  const std::uint64_t va = 0x400000;
  mem_.Map(root_, GetParam(), va, 0x200000, k4K, kP | kU);
  auto t = TranslateVirt(mem_, Mode(), va);
  ASSERT_THAT(t, IsOk());
  EXPECT_TRUE(t->user);
  EXPECT_FALSE(t->writable);
}

TEST_P(PageWalkTest, NxIgnoredWithoutEferNxe) {
  const std::uint64_t va = 0xffffffff81000000ull;
  mem_.Map(root_, GetParam(), va, 0x100000, k4K, kP | kNX);
  PagingMode m = Mode();
  m.nxe = false;
  auto t = TranslateVirt(mem_, m, va);
  ASSERT_THAT(t, IsOk());
  EXPECT_FALSE(t->nx);
}

TEST_P(PageWalkTest, NotPresentTopLevel) {
  const std::uint64_t va = 0xffffffff81000000ull;
  const char* top = GetParam() ? "PML5E[" : "PML4E[";
  EXPECT_THAT(TranslateVirt(mem_, Mode(), va),
              StatusIs(Code::kNotFound, HasSubstr(std::string(top))));
}

TEST_P(PageWalkTest, NotPresentAtEachLowerLevel) {
  const std::uint64_t va = 0xffffffff81000000ull;
  mem_.Map(root_, GetParam(), va, 0x100000, k4K, kP);
  // Walk down and clear the present bit at PDPTE, PDE, PTE in turn (deepest first).
  std::vector<std::uint64_t> slots;
  std::uint64_t table = root_;
  for (int level = GetParam() ? 5 : 4; level >= 1; --level) {
    const std::uint64_t slot = table + ((va >> (12 + 9 * (level - 1))) & 511) * 8;
    slots.push_back(slot);
    table = mem_.Read64(slot) & pte::kAddrMask;
  }
  const char* names[] = {"PTE[", "PDE[", "PDPTE[", "PML4E["};
  for (int i = 0; i < 4; ++i) {
    const std::uint64_t slot = slots[slots.size() - 1 - static_cast<std::size_t>(i)];
    const std::uint64_t saved = mem_.Read64(slot);
    mem_.Write64(slot, saved & ~kP);
    EXPECT_THAT(TranslateVirt(mem_, Mode(), va), StatusIs(Code::kNotFound, HasSubstr(names[i])))
        << "level " << names[i];
    mem_.Write64(slot, saved);
  }
  EXPECT_THAT(TranslateVirt(mem_, Mode(), va), IsOk());
}

TEST_P(PageWalkTest, NonCanonicalAddress) {
  // Canonical under 5 levels but not under 4; and non-canonical under both.
  const std::uint64_t bad = GetParam() ? 0x0100000000000000ull : 0x0000800000000000ull;
  EXPECT_THAT(TranslateVirt(mem_, Mode(), bad), StatusIs(Code::kInvalidArgument, HasSubstr("not canonical")));
}

TEST_P(PageWalkTest, TableOutsideRam) {
  const std::uint64_t va = 0xffffffff81000000ull;
  mem_.Map(root_, GetParam(), va, 0x100000, k4K, kP);
  // Point the top-level entry at a table beyond the end of RAM.
  const int top = GetParam() ? 5 : 4;
  const std::uint64_t slot = root_ + ((va >> (12 + 9 * (top - 1))) & 511) * 8;
  mem_.Write64(slot, 0x7f000000000ull | kP | kW);
  EXPECT_THAT(TranslateVirt(mem_, Mode(), va), StatusIs(Code::kInvalidArgument, HasSubstr("not guest RAM")));
}

TEST_P(PageWalkTest, ReservedPsAtTopLevel) {
  const std::uint64_t va = 0xffffffff81000000ull;
  const int top = GetParam() ? 5 : 4;
  mem_.Write64(root_ + ((va >> (12 + 9 * (top - 1))) & 511) * 8, 0x100000 | kP | pte::kHuge);
  EXPECT_THAT(TranslateVirt(mem_, Mode(), va), StatusIs(Code::kInvalidArgument, HasSubstr("reserved PS")));
}

TEST_P(PageWalkTest, ReadVirtCrossesPagesOfDifferentSizes) {
  // A 4 KiB page followed by a 2 MiB page, mapped to scattered physical memory.
  const std::uint64_t va = 0xffffffffc01ff000ull;  // last 4K page before a 2 MiB boundary
  mem_.Map(root_, GetParam(), va, 0x300000, k4K, kP);
  mem_.Map(root_, GetParam(), va + k4K, 0x800000, k2M, kP);
  std::vector<std::uint8_t> a(16, 0xaa), b(16, 0xbb);
  mem_.Write(0x300000 + 4096 - 16, a);
  mem_.Write(0x800000, b);
  std::vector<std::uint8_t> out(32);
  ASSERT_THAT(ReadVirt(mem_, Mode(), va + 4096 - 16, out), IsOk());
  EXPECT_EQ(std::vector<std::uint8_t>(out.begin(), out.begin() + 16), a);
  EXPECT_EQ(std::vector<std::uint8_t>(out.begin() + 16, out.end()), b);
  // The next 4K page after the 2M page is unmapped.
  EXPECT_THAT(ReadVirt(mem_, Mode(), va + k4K + k2M - 8, out), StatusIs(Code::kNotFound, HasSubstr("not present")));
}

INSTANTIATE_TEST_SUITE_P(FourAndFiveLevels, PageWalkTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "LA57" : "FourLevel"; });

TEST(PageWalkLa57Test, FiveLevelOnlyAddress) {
  // An address that exists only with 57-bit virtual addresses.
  FakePhysMemory mem(1ull << 20);
  const std::uint64_t root = mem.AllocTable();
  const std::uint64_t va = 0xff00000000001000ull;
  mem.Map(root, true, va, 0x5000, k4K, kP | kW);
  auto t = TranslateVirt(mem, PagingMode{root, true, true}, va + 0x10);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->gpa, 0x5010u);
  EXPECT_THAT(TranslateVirt(mem, PagingMode{root, false, true}, va),
              StatusIs(Code::kInvalidArgument, HasSubstr("not canonical")));
}

}  // namespace
}  // namespace hv::vmm
