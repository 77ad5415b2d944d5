#include "vmm/cached_phys_memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"
#include "tests/unit/fake_phys_memory.h"

namespace hv::vmm {
namespace {

using ::testing::HasSubstr;

// Counts the reads that reach the memory underneath.
class Counting : public GuestPhysMemory {
 public:
  explicit Counting(const GuestPhysMemory& inner) : inner_(inner) {}
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override {
    ++reads;
    return inner_.ReadPhys(gpa, out);
  }
  std::vector<PhysRange> RamRanges() const override { return inner_.RamRanges(); }
  mutable int reads = 0;

 private:
  const GuestPhysMemory& inner_;
};

TEST(CachedPhysMemoryTest, SmallReadsOfOnePageReachTheMemoryOnce) {
  testing::FakePhysMemory ram(1 << 20);
  for (std::uint64_t i = 0; i < 512; ++i) ram.Write64(0x3000 + 8 * i, 0x1111111111111111ull * (i % 15));
  Counting counted(ram);
  CachedPhysMemory cached(counted);
  for (std::uint64_t i = 0; i < 512; ++i) {
    std::uint8_t b[8];
    ASSERT_THAT(cached.ReadPhys(0x3000 + 8 * i, b), IsOk());
    std::uint64_t v;
    std::memcpy(&v, b, 8);
    EXPECT_EQ(v, 0x1111111111111111ull * (i % 15));
  }
  EXPECT_EQ(counted.reads, 1);  // one block around the first read
  EXPECT_EQ(cached.fetches(), 1u);
}

TEST(CachedPhysMemoryTest, ErrorsAreTheMemorysOwn) {
  testing::FakePhysMemory ram(0x4000);
  CachedPhysMemory cached(ram);
  std::uint8_t b[16];
  EXPECT_THAT(cached.ReadPhys(0x3ff8, b), StatusIs(Code::kInvalidArgument, HasSubstr("0x3ff8")));
  EXPECT_THAT(cached.ReadPhys(0x3ff0, b), IsOk());  // the last bytes of RAM still read
}

TEST(CachedPhysMemoryTest, MappedMemoryPassesStraightThrough) {
  testing::FakePhysMemory ram(1 << 16);
  ram.set_direct(true);
  class Mapped : public Counting {
   public:
    using Counting::Counting;
    bool ReadsFromMapping() const override { return true; }
  } counted(ram);
  CachedPhysMemory cached(counted);
  std::uint8_t b[8];
  ASSERT_THAT(cached.ReadPhys(0x100, b), IsOk());
  ASSERT_THAT(cached.ReadPhys(0x108, b), IsOk());
  EXPECT_EQ(counted.reads, 2);
  EXPECT_EQ(cached.fetches(), 0u);
}

}  // namespace
}  // namespace hv::vmm
