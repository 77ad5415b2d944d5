#include "patcher/address_set.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace hv::patcher {
namespace {

TEST(AddressSetTest, InsertsOnceAndFindsWhatItHolds) {
  AddressSet s;
  EXPECT_FALSE(s.Contains(0xffff888000001000ull));
  EXPECT_TRUE(s.Insert(0xffff888000001000ull));
  EXPECT_FALSE(s.Insert(0xffff888000001000ull));
  EXPECT_TRUE(s.Contains(0xffff888000001000ull));
  EXPECT_FALSE(s.Contains(0xffff888000002000ull));
  EXPECT_EQ(s.size(), 1u);
}

TEST(AddressSetTest, ZeroIsAnAddressLikeAnyOther) {
  AddressSet s;
  EXPECT_FALSE(s.Contains(0));
  EXPECT_TRUE(s.Insert(0));
  EXPECT_FALSE(s.Insert(0));
  EXPECT_TRUE(s.Contains(0));
  EXPECT_EQ(s.size(), 1u);
}

// Slab-like addresses (one stride, the task_structs of a slab) and random ones, through many
// doublings: the set agrees with std::set throughout.
TEST(AddressSetTest, AgreesWithStdSetThroughGrowth) {
  AddressSet s;
  std::set<std::uint64_t> want;
  std::mt19937_64 rng(14);
  for (int i = 0; i < 20000; ++i) {
    const std::uint64_t a = i % 2 ? 0xffff888100000000ull + 0x2440ull * static_cast<std::uint64_t>(i / 2)
                                  : rng() % 50000;  // small values collide often
    EXPECT_EQ(s.Insert(a), want.insert(a).second) << i;
  }
  EXPECT_EQ(s.size(), want.size());
  for (std::uint64_t a : want) EXPECT_TRUE(s.Contains(a));
  for (int i = 0; i < 1000; ++i) {
    const std::uint64_t a = rng();
    EXPECT_EQ(s.Contains(a), want.count(a) != 0);
  }
}

}  // namespace
}  // namespace hv::patcher
