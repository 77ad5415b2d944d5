#include "patcher/vmcoreinfo.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"
#include "tests/unit/fake_phys_memory.h"
#include "tests/unit/patcher/fake_guest_kernel.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;

constexpr std::string_view kText =
    "OSRELEASE=6.1.0-56-cloud-amd64\n"
    "BUILD-ID=3B43fad5034874490492495d552c0af6a5fab235\n"
    "PAGESIZE=4096\n"
    "SYMBOL(init_uts_ns)=ffffffff9cdf9b60\n"
    "OFFSET(uts_namespace.name)=0\n"
    "SIZE(list_head)=16\n"
    "LENGTH(zone.free_area)=11\n"
    "NUMBER(phys_base)=-48234496\n"
    "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n"
    "KERNELOFFSET=1a200000\n";

TEST(VmcoreinfoTest, ParsesEveryKind) {
  auto v = Vmcoreinfo::Parse(kText);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->os_release(), "6.1.0-56-cloud-amd64");
  EXPECT_EQ(v->build_id(), "3b43fad5034874490492495d552c0af6a5fab235");  // lower-cased
  EXPECT_EQ(v->page_size(), 4096u);
  EXPECT_EQ(v->kernel_offset(), 0x1a200000u);
  EXPECT_EQ(v->Symbol("init_uts_ns"), 0xffffffff9cdf9b60u);
  EXPECT_EQ(v->Offset("uts_namespace.name"), 0u);
  EXPECT_EQ(v->Size("list_head"), 16u);
  EXPECT_EQ(v->Number("phys_base"), -48234496);
  EXPECT_EQ(v->Raw("LENGTH(zone.free_area)"), "11");
  EXPECT_EQ(v->Symbol("nope"), std::nullopt);
  EXPECT_THAT(v->RequireSymbol("init_top_pgt"),
              StatusIs(Code::kNotFound, HasSubstr("vmcoreinfo has no SYMBOL(init_top_pgt)")));
}

TEST(VmcoreinfoTest, RejectsMalformedValues) {
  EXPECT_THAT(Vmcoreinfo::Parse("OSRELEASE=x\nSYMBOL(a)=zz\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("line 2: non-hex value 'zz' for 'SYMBOL(a)'")));
  EXPECT_THAT(Vmcoreinfo::Parse("OSRELEASE=x\nNUMBER(n)=12a\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("non-decimal value '12a'")));
  EXPECT_THAT(Vmcoreinfo::Parse("OSRELEASE=x\nBUILD-ID=xyz\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("non-hex value 'xyz' for 'BUILD-ID'")));
  EXPECT_THAT(Vmcoreinfo::Parse("OSRELEASE=x\njunk\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("line 2 'junk' has no '='")));
  EXPECT_THAT(Vmcoreinfo::Parse("PAGESIZE=4096\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("no OSRELEASE")));
  EXPECT_THAT(Vmcoreinfo::Parse(std::string(5000, 'A')),
              StatusIs(Code::kInvalidArgument, HasSubstr("5000 bytes exceeds the limit of 4096")));
}

TEST(VmcoreinfoTest, FindsTheElfNoteCopy) {
  testing::FakePhysMemory mem(1 << 20);
  const std::string text = "OSRELEASE=6.1.0\nPAGESIZE=4096\n";
  std::vector<std::uint8_t> note(24 + text.size());
  const std::uint32_t hdr[3] = {11, static_cast<std::uint32_t>(text.size()), 0};
  std::memcpy(note.data(), hdr, 12);
  std::memcpy(note.data() + 12, "VMCOREINFO", 11);
  std::memcpy(note.data() + 24, text.data(), text.size());
  mem.Write(0x5000, note);
  auto v = Vmcoreinfo::Find(mem);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->found_at(), 0x5000u);
  EXPECT_EQ(v->os_release(), "6.1.0");
}

// Where RAM is mapped, the scan reads it in place; it must find what the copying scan finds,
// and refuse what it refuses.
TEST(VmcoreinfoTest, AScanOfMappedRamFindsWhatACopyingScanFinds) {
  testing::FakeGuestKernel g;
  std::string stale = g.vmcoreinfo_text();
  stale.replace(stale.find("6.1.0-fake"), 10, "5.10.0-old");
  g.mem().Write(0x200000, std::span(reinterpret_cast<const std::uint8_t*>(stale.data()), stale.size()));
  for (bool direct : {false, true}) {
    g.mem().set_direct(direct);
    auto v = Vmcoreinfo::Find(g.mem());
    ASSERT_THAT(v, IsOk()) << "direct " << direct;
    EXPECT_EQ(v->found_at(), testing::FakeGuestKernel::kVmcoreinfoPa) << "direct " << direct;
    EXPECT_EQ(v->os_release(), "6.1.0-fake-amd64") << "direct " << direct;
  }
  std::vector<std::uint8_t> zero(4096, 0);
  g.mem().Write(testing::FakeGuestKernel::kVmcoreinfoPa, zero);
  g.mem().set_direct(true);
  EXPECT_THAT(Vmcoreinfo::Find(g.mem()),
              StatusIs(Code::kNotFound, HasSubstr("candidate at 0x200000: stale copy")));
}

TEST(VmcoreinfoTest, IgnoresTextThatIsNotAtAPageStart) {
  testing::FakePhysMemory mem(1 << 20);
  const std::string text = "OSRELEASE=6.1.0\n";
  mem.Write(0x5010, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  EXPECT_THAT(Vmcoreinfo::Find(mem), StatusIs(Code::kNotFound, HasSubstr("no vmcoreinfo page")));
}

TEST(VmcoreinfoTest, RejectsAStaleCopyThatDisagreesWithTheLiveKernel) {
  testing::FakeGuestKernel g;
  // A stale page (another kernel's) before the real one: its release differs from init_uts_ns.
  std::string stale = g.vmcoreinfo_text();
  stale.replace(stale.find("6.1.0-fake"), 10, "5.10.0-old");
  g.mem().Write(0x200000, std::span(reinterpret_cast<const std::uint8_t*>(stale.data()), stale.size()));
  auto v = Vmcoreinfo::Find(g.mem());
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->found_at(), testing::FakeGuestKernel::kVmcoreinfoPa);
  // Without the real one, the error says why the stale one was refused.
  std::vector<std::uint8_t> zero(4096, 0);
  g.mem().Write(testing::FakeGuestKernel::kVmcoreinfoPa, zero);
  EXPECT_THAT(Vmcoreinfo::Find(g.mem()),
              StatusIs(Code::kNotFound, HasSubstr("candidate at 0x200000: stale copy: OSRELEASE "
                                                  "'5.10.0-old-amd64' differs from the live "
                                                  "kernel's '6.1.0-fake-amd64'")));
}

}  // namespace
}  // namespace hv::patcher
