#include "patcher/kernel_btf.h"

#include <bpf/btf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;

// A BTF blob built with libbpf's writer: struct outer { int a; struct { int hidden; }; struct
// inner in; int bits:3; } with struct inner { long x; long sp; }.
std::vector<std::uint8_t> SampleBtf() {
  struct btf* b = btf__new_empty();
  const int i32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  const int i64 = btf__add_int(b, "long", 8, BTF_INT_SIGNED);
  const int inner = btf__add_struct(b, "inner", 16);
  btf__add_field(b, "x", i64, 0, 0);
  btf__add_field(b, "sp", i64, 64, 0);
  const int anon = btf__add_struct(b, nullptr, 4);
  btf__add_field(b, "hidden", i32, 0, 0);
  const int tdef = btf__add_typedef(b, "inner_t", inner);
  btf__add_struct(b, "outer", 48);
  btf__add_field(b, "a", i32, 0, 0);
  btf__add_field(b, nullptr, anon, 32, 0);
  btf__add_field(b, "in", tdef, 64, 0);
  btf__add_field(b, "bits", i32, 192, 3);
  std::uint32_t size = 0;
  const auto* raw = static_cast<const std::uint8_t*>(btf__raw_data(b, &size));
  std::vector<std::uint8_t> out(raw, raw + size);
  btf__free(b);
  return out;
}

TEST(KernelBtfTest, FindsNestedAnonymousAndTypedefMembers) {
  const auto blob = SampleBtf();
  auto btf = KernelBtf::Parse(blob);
  ASSERT_THAT(btf, IsOk());
  EXPECT_EQ(btf->Offset("outer", "a").value(), 0u);
  EXPECT_EQ(btf->Offset("outer", "hidden").value(), 4u);
  EXPECT_EQ(btf->Offset("outer", "in.sp").value(), 16u);
  EXPECT_EQ(btf->MemberSize("outer", "in").value(), 16u);
  EXPECT_EQ(btf->TypeSize("outer").value(), 48u);
  EXPECT_TRUE(btf->HasMember("outer", "in.x"));
  auto members = btf->Members("inner");
  ASSERT_THAT(members, IsOk());
  ASSERT_EQ(members->size(), 2u);
  EXPECT_EQ((*members)[1].name, "sp");
  EXPECT_EQ((*members)[1].offset, 8u);
}

TEST(KernelBtfTest, NamesWhatIsMissing) {
  const auto blob = SampleBtf();
  auto btf = KernelBtf::Parse(blob);
  ASSERT_THAT(btf, IsOk());
  EXPECT_THAT(btf->Offset("task_struct", "pid"),
              StatusIs(Code::kNotFound, HasSubstr("BTF has no struct or union 'task_struct'")));
  EXPECT_THAT(btf->Offset("outer", "in.nope"),
              StatusIs(Code::kNotFound, HasSubstr("BTF struct 'outer.in' has no member 'nope'")));
  EXPECT_THAT(btf->Offset("outer", "a.b"),
              StatusIs(Code::kNotFound, HasSubstr("BTF member 'outer.a' is not a struct or union")));
  EXPECT_THAT(btf->Offset("outer", "bits"),
              StatusIs(Code::kUnimplemented, HasSubstr("'outer.bits' is a bitfield")));
}

TEST(KernelBtfTest, RejectsGarbageAndTruncatedBlobs) {
  std::vector<std::uint8_t> junk(4096, 0xa5);
  EXPECT_THAT(KernelBtf::Parse(junk), StatusIs(Code::kInvalidArgument, HasSubstr("malformed BTF")));
  auto blob = SampleBtf();
  blob.resize(blob.size() / 2);
  EXPECT_THAT(KernelBtf::Parse(blob), StatusIs(Code::kInvalidArgument, HasSubstr("malformed BTF")));
  EXPECT_THAT(KernelBtf::Parse({}), StatusIs(Code::kInvalidArgument, HasSubstr("malformed BTF")));
}

}  // namespace
}  // namespace hv::patcher
