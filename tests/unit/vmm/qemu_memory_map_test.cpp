#include "vmm/qemu_memory_map.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "status_matchers.h"

namespace hv::vmm {
namespace {

using ::testing::HasSubstr;

std::string ReadTestData(const std::string& name) {
  std::ifstream f(std::string(HV_TESTDATA_DIR) + "/" + name);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(QemuMemoryMapTest, RecordedTestGuestLayout) {
  // Recorded from the 512 MiB test guest (pc machine, ivshmem arena).
  auto flat = ParseSystemFlatView(ReadTestData("qemu72-mtree-f.txt"));
  ASSERT_THAT(flat, IsOk());
  ASSERT_FALSE(flat->empty());
  EXPECT_EQ(flat->front().region, "pc.ram");
  EXPECT_EQ(flat->front().start, 0u);
  const auto arena = std::find_if(flat->begin(), flat->end(), [](const FlatRange& f) { return f.region == "arena"; });
  ASSERT_NE(arena, flat->end());
  EXPECT_EQ(arena->start, 0xfe800000u);
  EXPECT_EQ(arena->size, 0x200000u);
  EXPECT_EQ(arena->kind, "ram");

  // pc.ram's RAM and ROM pieces below 1 MiB and the rest join into one range.
  auto ranges = RangesOfRegion(*flat, "pc.ram", 0x7ff86fe00000ull, 512ull << 20);
  ASSERT_THAT(ranges, IsOk());
  ASSERT_EQ(ranges->size(), 1u);
  EXPECT_EQ((*ranges)[0].gpa, 0u);
  EXPECT_EQ((*ranges)[0].size, 512ull << 20);
  EXPECT_EQ((*ranges)[0].hva, 0x7ff86fe00000ull);

  auto maps = ParseProcMaps(ReadTestData("qemu72-maps.txt"));
  ASSERT_THAT(maps, IsOk());
  auto ram = CandidateMappings(*maps, 512ull << 20, "", "pc.ram");
  ASSERT_EQ(ram.size(), 1u);
  EXPECT_EQ(ram[0].start, 0x7ff86fe00000ull);
  auto file = CandidateMappings(*maps, 2ull << 20, "/tmp/hva/vm1/arena", "arena");
  ASSERT_EQ(file.size(), 1u);
  EXPECT_EQ(file[0].start, 0x7ff8de17d000ull);
  EXPECT_EQ(file[0].perms, "rw-s");
}

TEST(QemuMemoryMapTest, RamAboveFourGigabytesAroundThePciHole) {
  // A 4 GiB pc guest: QEMU splits pc.ram at 3 GiB and maps the rest above 4 GiB.
  const char* mtree =
      "FlatView #0\n"
      " AS \"I/O\", root: io\n"
      " Root memory region: io\n"
      "  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\n"
      "\n"
      "FlatView #1\n"
      " AS \"memory\", root: system\n"
      " AS \"cpu-memory-0\", root: system\n"
      " Root memory region: system\n"
      "  0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM\n"
      "  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem\n"
      "  00000000000c0000-00000000000fffff (prio 0, rom): pc.ram @00000000000c0000 KVM\n"
      "  0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000 KVM\n"
      "  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios KVM\n"
      "  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @00000000c0000000 KVM\n"
      "\n"
      "FlatView #2\n"
      " AS \"cpu-smm-0\", root: memory\n"
      "  0000000000000000-00000000ffffffff (prio 0, ram): smram\n";
  auto flat = ParseSystemFlatView(mtree);
  ASSERT_THAT(flat, IsOk());
  EXPECT_EQ(flat->size(), 6u);  // the SMM view after it is not taken
  auto ranges = RangesOfRegion(*flat, "pc.ram", 0x10000000, 4ull << 30);
  ASSERT_THAT(ranges, IsOk());
  ASSERT_EQ(ranges->size(), 3u);
  EXPECT_EQ((*ranges)[0].gpa, 0u);
  EXPECT_EQ((*ranges)[0].size, 0xa0000u);
  EXPECT_EQ((*ranges)[1].gpa, 0xc0000u);
  EXPECT_EQ((*ranges)[1].size, 0xc0000000u - 0xc0000u);
  EXPECT_EQ((*ranges)[1].hva, 0x10000000u + 0xc0000u);
  EXPECT_EQ((*ranges)[2].gpa, 0x100000000u);
  EXPECT_EQ((*ranges)[2].size, 0x40000000u);
  EXPECT_EQ((*ranges)[2].hva, 0x10000000u + 0xc0000000u);
  // A range claiming to lie beyond its block is refused.
  EXPECT_THAT(RangesOfRegion(*flat, "pc.ram", 0, 1ull << 30),
              StatusIs(Code::kInvalidArgument, HasSubstr("beyond its 0x40000000-byte block")));
  EXPECT_THAT(RangesOfRegion(*flat, "nosuch", 0, 1), StatusIs(Code::kNotFound, HasSubstr("'nosuch'")));
}

TEST(QemuMemoryMapTest, MalformedInput) {
  EXPECT_THAT(ParseSystemFlatView("FlatView #0\n AS \"I/O\", root: io\n"),
              StatusIs(Code::kNotFound, HasSubstr("'memory'")));
  EXPECT_THAT(ParseSystemFlatView("FlatView #0\n AS \"memory\", root: system\n  zzzz-0001 (prio 0, ram): x\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("malformed flat view line")));
  EXPECT_THAT(ParseSystemFlatView("FlatView #0\n AS \"memory\", root: system\n  0010-0001 (prio 0, ram): x\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("malformed")));
  EXPECT_THAT(ParseProcMaps("55c7-55c8 rw-p zz 00:00 0\n"), StatusIs(Code::kInvalidArgument, HasSubstr("malformed maps line")));
}

TEST(QemuMemoryMapTest, CandidatesPreferNamedBackings) {
  auto maps = ParseProcMaps(
      "1000000-2000000 rw-p 00000000 00:00 0 \n"
      "3000000-4000000 rw-s 00000000 00:01 7                /memfd:ram0 (deleted)\n"
      "5000000-6000000 r--p 00000000 00:00 0 \n");
  ASSERT_THAT(maps, IsOk());
  auto c = CandidateMappings(*maps, 0x1000000, "", "ram0");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].start, 0x3000000u);
  auto anon = CandidateMappings(*maps, 0x1000000, "", "other");
  ASSERT_EQ(anon.size(), 1u);
  EXPECT_EQ(anon[0].start, 0x1000000u);
}

}  // namespace
}  // namespace hv::vmm

namespace hv::vmm {
namespace {

// Two candidate host mappings of a 64 KiB block at GPA 0: a fake "host" holding the true
// contents at one of them and different bytes at the other.
class ChooseHostMappingTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kRight = 0x7f0000000000, kWrong = 0x7f1000000000, kSize = 0x10000;
  ChooseHostMappingTest() : right_(kSize), wrong_(kSize) {
    for (std::size_t i = 0; i < kSize; ++i) right_[i] = static_cast<std::uint8_t>(i * 7 + 1);
    flat_ = {FlatRange{0, kSize, "ram", "pc.ram", 0}};
  }
  HostReader Reader() {
    return [this](std::uint64_t hva, std::span<std::uint8_t> out) -> Status {
      for (auto [base, mem] : {std::pair{kRight, &right_}, std::pair{kWrong, &wrong_}}) {
        if (hva >= base && hva + out.size() <= base + kSize) {
          std::copy_n(mem->begin() + static_cast<std::ptrdiff_t>(hva - base), out.size(), out.begin());
          return Status::Ok();
        }
      }
      return ErrnoError("process_vm_readv", 14);
    };
  }
  std::vector<MemorySample> Truth(std::initializer_list<std::uint64_t> gpas) {
    std::vector<MemorySample> out;
    for (std::uint64_t g : gpas) {
      out.push_back(MemorySample{g, std::vector<std::uint8_t>(right_.begin() + static_cast<std::ptrdiff_t>(g),
                                                              right_.begin() + static_cast<std::ptrdiff_t>(g) + 256)});
    }
    return out;
  }
  std::vector<std::uint8_t> right_, wrong_;
  std::vector<FlatRange> flat_;
};

TEST_F(ChooseHostMappingTest, PicksTheMappingThatMatchesTheGdbstub) {
  auto r = ChooseHostMapping(flat_, "pc.ram", kSize, {kWrong, kRight}, Truth({0, 0x8000, 0xff00}), Reader());
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(*r, kRight);
}

TEST_F(ChooseHostMappingTest, RefusesWhenNothingMatches) {
  EXPECT_THAT(ChooseHostMapping(flat_, "pc.ram", kSize, {kWrong}, Truth({0, 0x8000}), Reader()),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("0 of 1 host mappings of memory backend 'pc.ram' match gdbstub reads: "
                                 "host mapping 0x7f1000000000 differs from the gdbstub at gpa 0x0")));
  // One sample off is enough to refuse.
  wrong_ = right_;
  wrong_[0x8010] ^= 1;
  EXPECT_THAT(ChooseHostMapping(flat_, "pc.ram", kSize, {kWrong}, Truth({0, 0x8000}), Reader()),
              StatusIs(Code::kFailedPrecondition, HasSubstr("differs from the gdbstub at gpa 0x8000")));
  // An unreadable candidate is not taken either.
  EXPECT_THAT(ChooseHostMapping(flat_, "pc.ram", kSize, {0x1000}, Truth({0}), Reader()),
              StatusIs(Code::kFailedPrecondition, HasSubstr("Bad address")));
}

TEST_F(ChooseHostMappingTest, RefusesAmbiguityAndAllZeroSamples) {
  wrong_ = right_;
  EXPECT_THAT(ChooseHostMapping(flat_, "pc.ram", kSize, {kWrong, kRight}, Truth({0}), Reader()),
              StatusIs(Code::kFailedPrecondition, HasSubstr("2 of 2 host mappings")));
  std::vector<MemorySample> zeros = {MemorySample{0x100, std::vector<std::uint8_t>(256, 0)}};
  EXPECT_THAT(ChooseHostMapping(flat_, "pc.ram", kSize, {kRight}, zeros, Reader()),
              StatusIs(Code::kFailedPrecondition, HasSubstr("every gdbstub sample of memory backend 'pc.ram' is zero")));
}

}  // namespace
}  // namespace hv::vmm
