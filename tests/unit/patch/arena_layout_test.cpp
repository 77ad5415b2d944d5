#include "patcher/arena_layout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;

constexpr std::uint64_t kVa = 0xffffffff96600000;   // a 2 MiB slot above _end
constexpr std::uint64_t kGpa = 0xfe000000;          // ivshmem BAR2

ArenaLayout NewArena(std::uint64_t size = kArenaSlotSize) {
  auto a = ArenaLayout::Create(kVa, kGpa, size);
  EXPECT_THAT(a, IsOk());
  return *a;
}

TEST(ArenaLayout, CreateChecksGeometry) {
  EXPECT_THAT(ArenaLayout::Create(kVa + 0x1000, kGpa, kArenaSlotSize),
              StatusIs(Code::kInvalidArgument, "arena address 0xffffffff96601000 is not 2 MiB aligned"));
  EXPECT_THAT(ArenaLayout::Create(kVa, kGpa + 1, kArenaSlotSize),
              StatusIs(Code::kInvalidArgument, HasSubstr("arena physical address 0xfe000001")));
  EXPECT_THAT(ArenaLayout::Create(kVa, kGpa, 4 * kArenaSlotSize),
              StatusIs(Code::kInvalidArgument,
                       "arena size 0x800000 is not a multiple of 4 KiB between 8 KiB and 2 MiB"));
  EXPECT_THAT(ArenaLayout::Create(kVa, kGpa, 4096), StatusIs(Code::kInvalidArgument, HasSubstr("arena size 0x1000")));
}

TEST(ArenaLayout, PageZeroIsThePteTableAndAllocationsAreFirstFit) {
  ArenaLayout a = NewArena();
  auto code = a.Allocate("hvp_sample", 1, MemoryClass::kCode);
  ASSERT_THAT(code, IsOk());
  EXPECT_EQ(code->first_page, 1u);
  auto ro = a.Allocate("hvp_sample", 2, MemoryClass::kRodata);
  ASSERT_THAT(ro, IsOk());
  EXPECT_EQ(ro->first_page, 2u);
  EXPECT_EQ(ro->offset(), 0x2000u);
  EXPECT_EQ(ro->size(), 0x2000u);
  auto data = a.Allocate("hvp_sample", 1, MemoryClass::kData);
  ASSERT_THAT(data, IsOk());
  EXPECT_EQ(data->first_page, 4u);
  EXPECT_EQ(a.Va(data->offset()), kVa + 0x4000);
  EXPECT_EQ(a.Gpa(data->offset()), kGpa + 0x4000);
}

TEST(ArenaLayout, PteBitsAreWxorX) {
  ArenaLayout a = NewArena();
  ASSERT_THAT(a.Allocate("p", 1, MemoryClass::kCode), IsOk());
  ASSERT_THAT(a.Allocate("p", 1, MemoryClass::kRodata), IsOk());
  ASSERT_THAT(a.Allocate("p", 1, MemoryClass::kData), IsOk());
  EXPECT_EQ(a.PteValue(0), 0u);                                    // the table is not mapped
  EXPECT_EQ(a.PteValue(1), kGpa + 0x1000 + 0x121);                 // P A G: read-only, executable
  EXPECT_EQ(a.PteValue(2), (kGpa + 0x2000 + 0x121) | (1ull << 63));  // P A G NX
  EXPECT_EQ(a.PteValue(3), (kGpa + 0x3000 + 0x163) | (1ull << 63));  // P RW A D G NX
  EXPECT_EQ(a.PteValue(4), 0u);
  EXPECT_EQ(a.PmdEntry(), kGpa + 0x63);  // P RW A D (_KERNPG_TABLE), no NX, no PS: the PTE table
  const auto t = a.PteTable();
  std::uint64_t e3;
  std::memcpy(&e3, t.data() + 3 * 8, 8);
  EXPECT_EQ(e3, a.PteValue(3));
  EXPECT_EQ(t[4 * 8], 0);
}

TEST(ArenaLayout, FreedPagesStayMappedAndAreReusedOnlyWithTheirPermission) {
  ArenaLayout a = NewArena();
  ASSERT_THAT(a.Allocate("a", 2, MemoryClass::kCode), IsOk());   // pages 1-2
  ASSERT_THAT(a.Allocate("b", 1, MemoryClass::kData), IsOk());   // page 3
  ASSERT_THAT(a.Free("a"), IsOk());
  EXPECT_EQ(a.PteValue(1), kGpa + 0x1000 + 0x121);  // retired, still RX
  EXPECT_THAT(a.retired(), ::testing::ElementsAre(RetiredPage{1, MemoryClass::kCode},
                                                  RetiredPage{2, MemoryClass::kCode}));
  // Data must not land on former code pages: it goes after page 3.
  auto d = a.Allocate("c", 1, MemoryClass::kData);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->first_page, 4u);
  EXPECT_FALSE(d->reuses_code_pages);
  // Code may reuse them, and the commit is told they held code.
  auto c = a.Allocate("c", 2, MemoryClass::kCode);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->first_page, 1u);
  EXPECT_TRUE(c->reuses_code_pages);
  EXPECT_TRUE(a.retired().empty());
  EXPECT_THAT(a.Free("nobody"), StatusIs(Code::kNotFound, "arena has no pages of 'nobody'"));
}

TEST(ArenaLayout, FullArenaIsUnavailable) {
  ArenaLayout a = NewArena(4 * kArenaPageSize);  // pages 1..3 usable
  ASSERT_THAT(a.Allocate("a", 3, MemoryClass::kCode), IsOk());
  EXPECT_THAT(a.Allocate("b", 1, MemoryClass::kData),
              StatusIs(Code::kUnavailable, "arena full: no free run of 1 data pages for 'b'"));
  EXPECT_THAT(a.Allocate("b", 0, MemoryClass::kData), StatusIs(Code::kInvalidArgument, "arena allocation of 0 pages"));
  EXPECT_THAT(a.Allocate("bad name", 1, MemoryClass::kData),
              StatusIs(Code::kInvalidArgument, "arena owner 'bad name' is not a module name"));
}

TEST(ArenaLayout, SerializeRoundTrips) {
  ArenaLayout a = NewArena();
  ASSERT_THAT(a.Allocate("a", 2, MemoryClass::kCode), IsOk());
  ASSERT_THAT(a.Allocate("b", 1, MemoryClass::kRodata), IsOk());
  ASSERT_THAT(a.Allocate("b", 1, MemoryClass::kData), IsOk());
  ASSERT_THAT(a.Free("a"), IsOk());
  ASSERT_THAT(a.Allocate("c", 1, MemoryClass::kCode), IsOk());
  const std::string text = a.Serialize();
  EXPECT_EQ(text,
            "arena 0xffffffff96600000 0xfe000000 0x200000\n"
            "alloc b 3 1 rodata 0\n"
            "alloc b 4 1 data 0\n"
            "alloc c 1 1 code 1\n"
            "retired 2 code\n");
  auto b = ArenaLayout::Deserialize(text);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->Serialize(), text);
  EXPECT_EQ(b->allocations(), a.allocations());
  EXPECT_EQ(b->PteTable(), a.PteTable());
}

TEST(ArenaLayout, DeserializeRevalidates) {
  const std::string head = "arena 0xffffffff96600000 0xfe000000 0x200000\n";
  EXPECT_THAT(ArenaLayout::Deserialize(""), StatusIs(Code::kInvalidArgument, "arena state has no 'arena' record"));
  EXPECT_THAT(ArenaLayout::Deserialize("alloc a 1 1 code 0\n"),
              StatusIs(Code::kInvalidArgument, "arena state line 1: record before the 'arena' record"));
  EXPECT_THAT(ArenaLayout::Deserialize(head + "alloc a 1 1 code 0\nalloc b 1 1 data 0\n"),
              StatusIs(Code::kInvalidArgument, "arena state: page 1 is used twice"));
  EXPECT_THAT(ArenaLayout::Deserialize(head + "alloc a 500 100 code 0\n"),
              StatusIs(Code::kInvalidArgument, "arena state line 2: allocation out of range"));
  EXPECT_THAT(ArenaLayout::Deserialize(head + "alloc a 0 1 code 0\n"),
              StatusIs(Code::kInvalidArgument, "arena state line 2: allocation out of range"));
  EXPECT_THAT(ArenaLayout::Deserialize(head + "alloc a 1 1 exec 0\n"),
              StatusIs(Code::kInvalidArgument, "arena state line 2: malformed 'alloc' record"));
  EXPECT_THAT(ArenaLayout::Deserialize(head + "retired 9999 code\n"),
              StatusIs(Code::kInvalidArgument, "arena state line 2: retired page out of range"));
  EXPECT_THAT(ArenaLayout::Deserialize(head + "free 1\n"),
              StatusIs(Code::kInvalidArgument, "arena state line 2: unknown record 'free'"));
  EXPECT_THAT(ArenaLayout::Deserialize("arena 0x1000 0xfe000000 0x200000\n"),
              StatusIs(Code::kInvalidArgument,
                       "arena state line 1: arena address 0x1000 is not 2 MiB aligned"));
}

}  // namespace
}  // namespace hv::patcher
