#include "vmm/phys_page_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "status_matchers.h"

namespace hv::vmm {
namespace {

using ::testing::HasSubstr;

// 64 KiB of "RAM" at gpa 0x10000 whose bytes are their own offsets, counting every read.
class CountingRam {
 public:
  static constexpr std::uint64_t kBase = 0x10000, kSize = 0x10000;
  CountingRam() : bytes_(kSize) {
    for (std::size_t i = 0; i < kSize; ++i) bytes_[i] = static_cast<std::uint8_t>(i * 7 + (i >> 8));
  }
  PhysPageCache::Source source() {
    return [this](std::uint64_t gpa, std::span<std::uint8_t> out) -> Status {
      ++reads;
      if (gpa < kBase || out.size() > kSize || gpa - kBase > kSize - out.size()) {
        return InvalidArgument("guest-physical address " + std::to_string(gpa) + " is not guest RAM");
      }
      std::memcpy(out.data(), bytes_.data() + (gpa - kBase), out.size());
      return Status::Ok();
    };
  }
  std::vector<std::uint8_t> Expected(std::uint64_t gpa, std::size_t n) const {
    return {bytes_.begin() + static_cast<std::ptrdiff_t>(gpa - kBase),
            bytes_.begin() + static_cast<std::ptrdiff_t>(gpa - kBase + n)};
  }
  void Poke(std::uint64_t gpa, std::uint8_t v) { bytes_[gpa - kBase] = v; }
  int reads = 0;

 private:
  std::vector<std::uint8_t> bytes_;
};

TEST(PhysPageCacheTest, SmallReadsOfOnePageFetchItOnce) {
  CountingRam ram;
  PhysPageCache cache(64, 1);
  const auto src = ram.source();
  for (std::uint64_t off : {0x18ull, 0x20ull, 0xff8ull, 0x400ull}) {
    std::vector<std::uint8_t> out(8);
    ASSERT_THAT(cache.Read(0x11000 + off, out, src), IsOk());
    EXPECT_EQ(out, ram.Expected(0x11000 + off, 8));
  }
  EXPECT_EQ(ram.reads, 1);
  EXPECT_EQ(cache.pages(), 1u);
}

TEST(PhysPageCacheTest, ReadAcrossPagesFetchesEachWholePage) {
  CountingRam ram;
  PhysPageCache cache(64, 1);
  std::vector<std::uint8_t> out(0x1000);
  ASSERT_THAT(cache.Read(0x12c00, out, ram.source()), IsOk());
  EXPECT_EQ(out, ram.Expected(0x12c00, 0x1000));
  EXPECT_EQ(ram.reads, 2);  // 0x12000 and 0x13000, whole
  EXPECT_EQ(cache.fetches(), 2u);
}

TEST(PhysPageCacheTest, InvalidatedPagesAreReadAgainAndShowNewBytes) {
  CountingRam ram;
  PhysPageCache cache(64, 1);
  const auto src = ram.source();
  std::vector<std::uint8_t> out(1);
  ASSERT_THAT(cache.Read(0x14010, out, src), IsOk());
  ram.Poke(0x14010, 0xcc);  // a write the backend made
  ASSERT_THAT(cache.Read(0x14010, out, src), IsOk());
  EXPECT_NE(out[0], 0xcc);  // still the cached byte: the writer must invalidate
  cache.Invalidate(0x14010, 5);
  ASSERT_THAT(cache.Read(0x14010, out, src), IsOk());
  EXPECT_EQ(out[0], 0xcc);
  EXPECT_EQ(ram.reads, 2);
}

TEST(PhysPageCacheTest, InvalidateCoversEveryOverlappedPageEvenWhenWide) {
  CountingRam ram;
  PhysPageCache cache(64, 1);
  const auto src = ram.source();
  std::vector<std::uint8_t> out(1);
  for (std::uint64_t p = 0x10000; p < 0x20000; p += 0x1000) ASSERT_THAT(cache.Read(p, out, src), IsOk());
  EXPECT_EQ(cache.pages(), 16u);
  cache.Invalidate(0x12fff, 2);  // the last byte of one page and the first of the next
  EXPECT_EQ(cache.pages(), 14u);
  cache.Invalidate(0, ~0ull);  // wider than the cache, and would wrap
  EXPECT_EQ(cache.pages(), 0u);
  cache.Invalidate(0x10000, 0);
}

TEST(PhysPageCacheTest, AMissFetchesItsWholeAlignedBlockInOneRead) {
  CountingRam ram;
  PhysPageCache cache(64, 4);
  const auto src = ram.source();
  std::vector<std::uint8_t> out(8);
  ASSERT_THAT(cache.Read(0x15008, out, src), IsOk());  // block 0x14000..0x17fff
  EXPECT_EQ(cache.pages(), 4u);
  for (std::uint64_t at : {0x14ff8ull, 0x16100ull, 0x17ff8ull}) {
    ASSERT_THAT(cache.Read(at, out, src), IsOk());
    EXPECT_EQ(out, ram.Expected(at, 8));
  }
  EXPECT_EQ(ram.reads, 1);
  ASSERT_THAT(cache.Read(0x18000, out, src), IsOk());
  EXPECT_EQ(ram.reads, 2);
}

TEST(PhysPageCacheTest, LargerReadsFetchOnlyTheirOwnPages) {
  CountingRam ram;
  PhysPageCache cache(64, 4);
  std::vector<std::uint8_t> out(PhysPageCache::kSmallRead);
  ASSERT_THAT(cache.Read(0x15f00, out, ram.source()), IsOk());
  EXPECT_EQ(out, ram.Expected(0x15f00, out.size()));
  EXPECT_EQ(cache.pages(), 1u);
  EXPECT_EQ(ram.reads, 1);
}

TEST(PhysPageCacheTest, ABlockOverTheEndOfRamFallsBackToThePage) {
  // RAM is three pages: the 4-page block around them cannot be read, each page can.
  int reads = 0;
  std::vector<std::uint8_t> ram(0x3000, 0xab);
  const PhysPageCache::Source src = [&](std::uint64_t gpa, std::span<std::uint8_t> out) -> Status {
    ++reads;
    if (gpa < 0x10000 || out.size() > 0x3000 || gpa - 0x10000 > 0x3000 - out.size()) {
      return InvalidArgument("not guest RAM");
    }
    std::memcpy(out.data(), ram.data() + (gpa - 0x10000), out.size());
    return Status::Ok();
  };
  PhysPageCache cache(64, 4);
  std::vector<std::uint8_t> out(8);
  ASSERT_THAT(cache.Read(0x12ff8, out, src), IsOk());
  EXPECT_EQ(out, std::vector<std::uint8_t>(8, 0xab));
  EXPECT_EQ(reads, 2);  // the block, refused, then the page
  EXPECT_EQ(cache.pages(), 1u);
  EXPECT_THAT(cache.Read(0x13000, out, src), StatusIs(Code::kInvalidArgument, HasSubstr("not guest RAM")));
}

TEST(PhysPageCacheTest, LargeReadsBypassTheCache) {
  CountingRam ram;
  PhysPageCache cache;
  std::vector<std::uint8_t> out(PhysPageCache::kMaxCachedRead + 1);
  ASSERT_THAT(cache.Read(0x10000, out, ram.source()), IsOk());
  EXPECT_EQ(out, ram.Expected(0x10000, out.size()));
  EXPECT_EQ(ram.reads, 1);
  EXPECT_EQ(cache.pages(), 0u);
}

TEST(PhysPageCacheTest, ErrorsAreTheSourcesOwn) {
  CountingRam ram;
  PhysPageCache cache;
  std::vector<std::uint8_t> out(16);
  // The page below RAM cannot be fetched: the request goes to the source as asked.
  EXPECT_THAT(cache.Read(0xfff8, out, ram.source()), StatusIs(Code::kInvalidArgument, HasSubstr("65528")));
  EXPECT_THAT(cache.Read(~0ull - 4, out, ram.source()), StatusIs(Code::kInvalidArgument, HasSubstr("not guest RAM")));
  EXPECT_EQ(cache.pages(), 0u);
}

TEST(PhysPageCacheTest, StaysWithinItsPageBound) {
  CountingRam ram;
  PhysPageCache cache(4);
  std::vector<std::uint8_t> out(8);
  for (std::uint64_t p = 0x10000; p < 0x20000; p += 0x1000) {
    ASSERT_THAT(cache.Read(p + 8, out, ram.source()), IsOk());
    EXPECT_EQ(out, ram.Expected(p + 8, 8));
    EXPECT_LE(cache.pages(), 4u);
  }
  cache.Clear();
  EXPECT_EQ(cache.pages(), 0u);
}

}  // namespace
}  // namespace hv::vmm
