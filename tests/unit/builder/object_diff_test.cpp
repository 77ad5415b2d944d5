// The builder's comparison on pairs of small objects (objects/X.ORIG.c, objects/X.PATCHED.c),
// built by meson with kernel-like flags. Each verdict is asserted exactly.
#include "builder/object_diff.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>

#include "status_matchers.h"

namespace hv::builder {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

KernelObject ReadObject(const std::string& name) {
  const char* dir = std::getenv("HVPATCH_BUILDER_OBJECTS");
  EXPECT_NE(dir, nullptr) << "HVPATCH_BUILDER_OBJECTS is not set (run through meson test)";
  const std::string path = std::string(dir ? dir : ".") + "/" + name;
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto o = KernelObject::Read(bytes, name);
  EXPECT_THAT(o, IsOk());
  return std::move(*o);
}

Result<ObjectDiff> Diff(const std::string& pair) {
  return CompareObjects(ReadObject(pair + ".ORIG.o"), ReadObject(pair + ".PATCHED.o"));
}

std::vector<std::string> ReplacedNames(const ObjectDiff& d) {
  std::vector<std::string> v;
  for (const auto& f : d.replaced) v.push_back(f.old_name);
  return v;
}

std::vector<std::string> CarriedSectionNames(const ObjectDiff& d, const std::string& pair) {
  const KernelObject o = ReadObject(pair + ".PATCHED.o");
  std::vector<std::string> v;
  for (auto s : d.carried_sections) v.push_back(o.elf().sections[s].name);
  return v;
}

TEST(CanonicalName, NeutralisesNumbering) {
  EXPECT_EQ(CanonicalName("foo.isra.0"), "foo.isra.N");
  EXPECT_EQ(CanonicalName("cpumask.constprop.12.cold"), "cpumask.constprop.N.cold");
  EXPECT_EQ(CanonicalName("__func__.3"), "__func__.N");
  EXPECT_EQ(CanonicalName("ip_options_get"), "ip_options_get");
  EXPECT_EQ(CanonicalName("x.1a"), "x.1a");
  EXPECT_EQ(BaseFunctionName("foo.isra.0"), "foo");
  EXPECT_TRUE(IsColdPart("foo.part.0.cold"));
  EXPECT_FALSE(IsColdPart("foo.part.0"));
}

TEST(ObjectDiff, ChangedConstantReplacesOnlyItsFunction) {
  auto d = Diff("change");
  ASSERT_THAT(d, IsOk());
  ASSERT_EQ(d->replaced.size(), 1u);
  EXPECT_EQ(d->replaced[0].old_name, "limit_check");
  EXPECT_EQ(d->replaced[0].difference, "offset 0x9: byte 0x64 -> 0x40");
  EXPECT_THAT(d->new_functions, IsEmpty());
  EXPECT_THAT(d->new_data, IsEmpty());
  EXPECT_THAT(CarriedSectionNames(*d, "change"), ElementsAre(".text.limit_check"));
}

TEST(ObjectDiff, SameBytesOtherCallTargetIsAChange) {
  auto d = Diff("reloc");
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(ReplacedNames(*d), ElementsAre("caller"));
  EXPECT_EQ(d->replaced[0].difference, "offset 0x6: refers to 'helper_b' - 0x4 instead of 'helper_a' - 0x4");
  // helper_b itself is unchanged: the patch calls the running kernel's.
  EXPECT_THAT(d->kernel_names, ElementsAre(std::pair<std::string, std::string>("helper_b", "helper_b")));
  EXPECT_THAT(CarriedSectionNames(*d, "reloc"), ElementsAre(".text.caller"));
}

TEST(ObjectDiff, NewStringAndFuncCarriedNeighbourUnchanged) {
  auto d = Diff("strings");
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(ReplacedNames(*d), ElementsAre("say_first"));
  EXPECT_EQ(d->replaced[0].difference, "size 29 -> 57 bytes");
  EXPECT_THAT(d->new_data, ElementsAre("__func__.0"));
  EXPECT_THAT(CarriedSectionNames(*d, "strings"),
              ElementsAre(".rodata.say_first.str1.1", ".text.say_first", ".rodata.__func__.0"));
}

TEST(ObjectDiff, ChangedInlineHelperChangesItsCaller) {
  auto d = Diff("inline");
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(ReplacedNames(*d), ElementsAre("read_len"));
  EXPECT_EQ(d->replaced[0].difference, "offset 0x6: byte 0x10 -> 0x8");
}

TEST(ObjectDiff, NewStaticDataCarriedExistingStateAndCloneAreTheKernels) {
  auto d = Diff("static_data");
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(ReplacedNames(*d), ElementsAre("scaled"));
  EXPECT_THAT(d->new_data, ElementsAre("rejected"));
  EXPECT_THAT(CarriedSectionNames(*d, "static_data"), ElementsAre(".text.scaled", ".bss.rejected"));
  // The unchanged gcc clone is called in the running kernel, under its own name.
  EXPECT_THAT(d->kernel_names,
              ElementsAre(std::pair<std::string, std::string>("scale.constprop.0", "scale.constprop.0")));
}

TEST(ObjectDiff, RefusesChangedGlobalDataByName) {
  EXPECT_THAT(Diff("global_data"),
              StatusIs(Code::kFailedPrecondition,
                       "comparing 'global_data.PATCHED.o': global data 'max_entries' changes "
                       "(offset 0x0: byte 0xa -> 0x14)"));
}

TEST(ObjectDiff, RefusesStructLayoutChangeOfGlobalDataByName) {
  auto d = Diff("struct_layout");
  EXPECT_THAT(d, StatusIs(Code::kFailedPrecondition,
                          "comparing 'struct_layout.PATCHED.o': global data 'conn_table' changes size "
                          "from 32 to 96 bytes"));
  EXPECT_THAT(d.status().hint(), HasSubstr("struct layout"));
}

TEST(ObjectDiff, RefusesInitFunctionChange) {
  EXPECT_THAT(Diff("init"), StatusIs(Code::kFailedPrecondition,
                                     "comparing 'init.PATCHED.o': __init function 'early_setup' changes "
                                     "(offset 0xb: byte 0x1 -> 0x2)"));
}

TEST(ObjectDiff, IdenticalObjectsHaveNoChange) {
  auto d = CompareObjects(ReadObject("change.ORIG.o"), ReadObject("change.ORIG.o"));
  ASSERT_THAT(d, IsOk());
  EXPECT_TRUE(d->empty());
  EXPECT_THAT(d->carried_sections, IsEmpty());
}

}  // namespace
}  // namespace hv::builder
