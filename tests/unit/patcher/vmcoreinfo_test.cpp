#include "patcher/vmcoreinfo.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/hex.h"
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

// A page holding `text` as the kernel's ELF note (vmcoreinfo_note).
std::vector<std::uint8_t> Note(const std::string& text) {
  std::vector<std::uint8_t> note(24 + text.size());
  const std::uint32_t hdr[3] = {11, static_cast<std::uint32_t>(text.size()), 0};
  std::memcpy(note.data(), hdr, 12);
  std::memcpy(note.data() + 12, "VMCOREINFO", 11);
  std::memcpy(note.data() + 24, text.data(), text.size());
  return note;
}

using testing::FakeGuestKernel;

// Where the fake's stale copies go: below the live copy, so the scan meets them first.
constexpr std::uint64_t kStalePa = 0x100000;
constexpr std::uint64_t kOldImagePa = 0x600000;
// An earlier boot's KASLR: 64 MiB higher, where the live kernel maps nothing.
constexpr std::uint64_t kOldVaShift = 64ull << 20;

TEST(VmcoreinfoTest, ReadsEitherShapeAtAHintTheVcpusConfirm) {
  FakeGuestKernel g;
  const auto vcpus = g.vcpus();
  auto v = Vmcoreinfo::ReadAt(g.mem(), FakeGuestKernel::kVmcoreinfoPa, vcpus);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->found_at(), FakeGuestKernel::kVmcoreinfoPa);
  EXPECT_EQ(v->kernel_offset(), FakeGuestKernel::kKaslr);
  g.mem().Write(0x500000, Note(g.vmcoreinfo_text()));
  v = Vmcoreinfo::ReadAt(g.mem(), 0x500000, vcpus);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->found_at(), 0x500000u);
  EXPECT_EQ(v->os_release(), FakeGuestKernel::kRelease);
}

TEST(VmcoreinfoTest, RefusesAHintThatHoldsNoVmcoreinfo) {
  FakeGuestKernel g;
  const auto vcpus = g.vcpus();
  EXPECT_THAT(Vmcoreinfo::ReadAt(g.mem(), 0x500000, vcpus),
              StatusIs(Code::kNotFound, HasSubstr("no vmcoreinfo at 0x500000")));
  EXPECT_THAT(Vmcoreinfo::ReadAt(g.mem(), FakeGuestKernel::kRamSize + 0x1000, vcpus),
              StatusIs(Code::kInvalidArgument, HasSubstr("is not guest RAM")));
  EXPECT_THAT(Vmcoreinfo::ReadAt(g.mem(), FakeGuestKernel::kVmcoreinfoPa + 8, vcpus),
              StatusIs(Code::kInvalidArgument, HasSubstr("0x300008 is not page aligned")));
}

// A stale copy of the same build from an earlier boot passes the image check (its old
// init_uts_ns still holds the release); the vCPUs' page tables show it is not this boot's.
TEST(VmcoreinfoTest, RefusesAStaleCopyAtTheHintThatTheLivePageTablesContradict) {
  FakeGuestKernel g;
  const auto vcpus = g.vcpus();
  // Virtual KASLR unchanged, physical placement changed: the symbol maps elsewhere.
  g.WriteStaleVmcoreinfo(kStalePa, 0, kOldImagePa);
  EXPECT_THAT(Vmcoreinfo::ReadAt(g.mem(), kStalePa, {}),
              StatusIs(Code::kFailedPrecondition, HasSubstr("no vCPU state can confirm")));
  EXPECT_THAT(Vmcoreinfo::ReadAt(g.mem(), kStalePa, vcpus),
              StatusIs(Code::kInvalidArgument,
                       HasSubstr("stale copy: the live page tables do not map SYMBOL(init_uts_ns) " +
                                 Hex(g.Symbol("init_uts_ns")) + " to " +
                                 Hex(kOldImagePa + g.Symbol("init_uts_ns") - FakeGuestKernel::kImageVa) +
                                 " (vCPU 0 maps it to " + Hex(g.Pa(g.Symbol("init_uts_ns"))) + ")")));
  // Both changed: the old address is not mapped at all.
  g.WriteStaleVmcoreinfo(kStalePa, kOldVaShift, kOldImagePa);
  EXPECT_THAT(Vmcoreinfo::ReadAt(g.mem(), kStalePa, vcpus),
              StatusIs(Code::kInvalidArgument, HasSubstr("(vCPU 0: ")));
}

TEST(VmcoreinfoTest, TheScanPrefersTheLiveCopyToAStaleOne) {
  FakeGuestKernel g;
  const auto vcpus = g.vcpus();
  g.WriteStaleVmcoreinfo(kStalePa, kOldVaShift, kOldImagePa);
  // Without vCPU state the stale copy, met first, passes (the image check alone).
  auto v = Vmcoreinfo::Find(g.mem());
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->found_at(), kStalePa);
  EXPECT_EQ(v->kernel_offset(), FakeGuestKernel::kKaslr + kOldVaShift);
  for (bool direct : {false, true}) {
    g.mem().set_direct(direct);
    v = Vmcoreinfo::Find(g.mem(), vcpus);
    ASSERT_THAT(v, IsOk());
    EXPECT_EQ(v->found_at(), FakeGuestKernel::kVmcoreinfoPa) << "direct " << direct;
    EXPECT_EQ(v->kernel_offset(), FakeGuestKernel::kKaslr) << "direct " << direct;
  }
  std::vector<std::uint8_t> zero(4096, 0);
  g.mem().Write(FakeGuestKernel::kVmcoreinfoPa, zero);
  EXPECT_THAT(Vmcoreinfo::Find(g.mem(), vcpus),
              StatusIs(Code::kNotFound, HasSubstr("candidate at 0x100000: stale copy: the live page "
                                                  "tables do not map SYMBOL(init_uts_ns)")));
}

// Under PTI a vCPU in user mode runs on the user half of its PGD pair (CR3 bit 12 set, with a
// user PCID), which maps no kernel data; the kernel half is the page below.
TEST(VmcoreinfoTest, LooksThroughAPtiUserPageTable) {
  FakeGuestKernel g;
  std::vector<vmm::VcpuState> vcpus = {g.vcpus().front()};
  constexpr std::uint64_t kPgdPair = 0x400000;
  std::vector<std::uint8_t> kernel_pgd(4096);
  ASSERT_THAT(g.mem().ReadPhys(vcpus[0].cr3, kernel_pgd), IsOk());
  g.mem().Write(kPgdPair, kernel_pgd);  // the user half at kPgdPair + 4 KiB stays empty
  vcpus[0].cr3 = (1ull << 63) | (kPgdPair + 0x1000) | 0x800 | 5;  // NOFLUSH, user PCID 5
  vcpus[0].cs = 0x33;
  auto v = Vmcoreinfo::ReadAt(g.mem(), FakeGuestKernel::kVmcoreinfoPa, vcpus);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->found_at(), FakeGuestKernel::kVmcoreinfoPa);
}

// A vCPU without long-mode paging (firmware during a reboot) says nothing about the kernel:
// the hint is not trusted, and the scan accepts as it does without vCPU state.
TEST(VmcoreinfoTest, IgnoresVcpusWithoutPaging) {
  FakeGuestKernel g;
  std::vector<vmm::VcpuState> vcpus = g.vcpus();
  for (vmm::VcpuState& v : vcpus) v.cr0 = 0x10, v.efer = 0, v.cr3 = 0;
  EXPECT_THAT(Vmcoreinfo::ReadAt(g.mem(), FakeGuestKernel::kVmcoreinfoPa, vcpus),
              StatusIs(Code::kFailedPrecondition, HasSubstr("no vCPU state can confirm the vmcoreinfo at 0x300000")));
  auto v = Vmcoreinfo::Find(g.mem(), vcpus);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->found_at(), FakeGuestKernel::kVmcoreinfoPa);
}

}  // namespace
}  // namespace hv::patcher
