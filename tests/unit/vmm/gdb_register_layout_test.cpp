#include "vmm/gdb_register_layout.h"

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

// The annexes QEMU 7.2 serves for qemu-system-x86_64, recorded through qXfer.
Result<std::string> QemuAnnex(std::string_view annex) {
  if (annex == "i386-64bit.xml") return ReadTestData("qemu72-i386-64bit.xml");
  return NotFound("no annex '" + std::string(annex) + "'");
}

TEST(GdbRegisterLayoutTest, QemuX86_64Layout) {
  const std::string target = ReadTestData("qemu72-target.xml");
  ASSERT_FALSE(target.empty());
  auto l = GdbRegisterLayout::Parse(target, QemuAnnex);
  ASSERT_THAT(l, IsOk());
  // The commented-out cs_base..es_base entries must not count.
  EXPECT_EQ(l->Find("cs_base"), nullptr);
  struct Expect {
    const char* name;
    std::size_t offset;
    int bits;
  } expect[] = {{"rax", 0, 64},        {"rip", 128, 64},   {"eflags", 136, 32},  {"cs", 140, 32},
                {"gs", 160, 32},       {"fs_base", 164, 64}, {"gs_base", 172, 64}, {"k_gs_base", 180, 64},
                {"cr0", 188, 64},      {"cr3", 204, 64},   {"cr4", 212, 64},     {"efer", 228, 64},
                {"st0", 236, 80},      {"xmm0", 348, 128}, {"mxcsr", 604, 32}};
  for (const Expect& e : expect) {
    const GdbRegister* r = l->Find(e.name);
    ASSERT_NE(r, nullptr) << e.name;
    EXPECT_EQ(r->offset, e.offset) << e.name;
    EXPECT_EQ(r->bitsize, e.bits) << e.name;
  }
  // QEMU's `g` reply for this layout is 608 bytes (1216 hex digits, as recorded).
  const GdbRegister& last = l->registers().back();
  EXPECT_EQ(last.offset + static_cast<std::size_t>(last.bitsize / 8), 608u);
}

TEST(GdbRegisterLayoutTest, ReadsValuesFromAGReply) {
  auto l = GdbRegisterLayout::Parse(ReadTestData("qemu72-target.xml"), QemuAnnex);
  ASSERT_THAT(l, IsOk());
  std::vector<std::uint8_t> g(608, 0);
  const std::uint64_t cr3 = 0x10ab000;
  for (int i = 0; i < 8; ++i) g[204 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(cr3 >> (8 * i));
  g[140] = 0x10;  // cs
  EXPECT_THAT(l->Read(g, "cr3"), IsOk());
  EXPECT_EQ(*l->Read(g, "cr3"), cr3);
  EXPECT_EQ(*l->Read(g, "cs"), 0x10u);
  EXPECT_THAT(l->Read(g, "xmm0"), StatusIs(Code::kInvalidArgument, HasSubstr("wider than 64 bits")));
  EXPECT_THAT(l->Read(g, "nosuch"), StatusIs(Code::kNotFound, HasSubstr("'nosuch'")));
  std::vector<std::uint8_t> short_g(200, 0);
  EXPECT_THAT(l->Read(short_g, "cr3"), StatusIs(Code::kInvalidArgument, HasSubstr("beyond the 200-byte g reply")));
}

TEST(GdbRegisterLayoutTest, RegnumAttributeReordersOffsets) {
  const char* xml =
      "<target><reg name=\"b\" bitsize=\"32\" regnum=\"2\"/>"
      "<reg name=\"a\" bitsize=\"64\" regnum=\"0\"/><reg name='c' bitsize='16'/></target>";
  auto l = GdbRegisterLayout::Parse(xml, QemuAnnex);
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->Find("a")->offset, 0u);
  EXPECT_EQ(l->Find("c")->offset, 8u);  // numbered on from 'a'
  EXPECT_EQ(l->Find("b")->offset, 10u);
}

TEST(GdbRegisterLayoutTest, RefusesBadDescriptions) {
  EXPECT_THAT(GdbRegisterLayout::Parse("<reg bitsize=\"64\"/>", QemuAnnex),
              StatusIs(Code::kInvalidArgument, HasSubstr("without a name")));
  EXPECT_THAT(GdbRegisterLayout::Parse("<reg name=\"x\" bitsize=\"7\"/>", QemuAnnex),
              StatusIs(Code::kInvalidArgument, HasSubstr("'x' has bad bitsize '7'")));
  EXPECT_THAT(GdbRegisterLayout::Parse("<reg name=\"x\" bitsize=\"8\" regnum=\"0\"/><reg name=\"y\" bitsize=\"8\" regnum=\"0\"/>", QemuAnnex),
              StatusIs(Code::kInvalidArgument, HasSubstr("share number 0")));
  EXPECT_THAT(GdbRegisterLayout::Parse("<!-- <reg name=\"x\" bitsize=\"8\"/>", QemuAnnex),
              StatusIs(Code::kInvalidArgument, HasSubstr("unterminated XML comment")));
  EXPECT_THAT(GdbRegisterLayout::Parse("<xi:include href=\"missing.xml\"/>", QemuAnnex),
              StatusIs(Code::kNotFound, HasSubstr("reading 'missing.xml'")));
  // A description that includes itself forever is cut off.
  auto loop = [](std::string_view) -> Result<std::string> { return std::string("<xi:include href=\"self.xml\"/>"); };
  EXPECT_THAT(GdbRegisterLayout::Parse("<xi:include href=\"self.xml\"/>", loop),
              StatusIs(Code::kInvalidArgument, HasSubstr("nested too deeply")));
}

}  // namespace
}  // namespace hv::vmm
