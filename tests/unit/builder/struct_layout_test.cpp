// Struct layout comparison on pahole's output (as `pahole OBJECT` prints a kernel object's DWARF).
#include "builder/struct_layout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"

namespace hv::builder {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kBefore[] =
    "struct list_head {\n"
    "\tstruct list_head *         next;                 /*     0     8 */\n"
    "\tstruct list_head *         prev;                 /*     8     8 */\n"
    "\n\t/* size: 16, cachelines: 1, members: 2 */\n"
    "};\n"
    "struct aligned {\n"
    "\tint                        x;                    /*     0     4 */\n"
    "\n\t/* size: 64, cachelines: 1, members: 1 */\n"
    "} __attribute__((__aligned__(64)));\n"
    "struct conn {\n"
    "\tint                        id;                   /*     0     4 */\n"
    "\tint                        flags;                /*     4     4 */\n"
    "\n\t/* size: 8, cachelines: 1, members: 2 */\n"
    "};\n";

TEST(StructLayout, ParsesTopLevelBlocks) {
  const auto m = ParseStructLayouts(kBefore);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_THAT(m.at("struct aligned"), Not(HasSubstr("flags")));
  EXPECT_THAT(m.at("struct conn"), HasSubstr("flags;"));
}

TEST(StructLayout, SameLayoutsAndNewStructsPass) {
  EXPECT_THAT(CheckStructLayouts(kBefore, kBefore), IsOk());
  const std::string more = std::string(kBefore) + "struct fresh {\n\tint x; /* 0 4 */\n\n\t/* size: 4, cachelines: 1, members: 1 */\n};\n";
  EXPECT_THAT(CheckStructLayouts(kBefore, more), IsOk());
}

TEST(StructLayout, RefusesAChangedLayoutByName) {
  const std::string after =
      "struct list_head {\n"
      "\tstruct list_head *         next;                 /*     0     8 */\n"
      "\tstruct list_head *         prev;                 /*     8     8 */\n"
      "\n\t/* size: 16, cachelines: 1, members: 2 */\n"
      "};\n"
      "struct conn {\n"
      "\tint                        id;                   /*     0     4 */\n"
      "\tlong                       cookie;               /*     8     8 */\n"
      "\tint                        flags;                /*    16     4 */\n"
      "\n\t/* size: 24, cachelines: 1, members: 3 */\n"
      "};\n";
  const Status s = CheckStructLayouts(kBefore, after);
  EXPECT_THAT(s, StatusIs(Code::kFailedPrecondition, "struct layout changes: 'struct conn' (size 8 -> 24 bytes)"));
  EXPECT_THAT(s.hint(), HasSubstr("shadow variables"));
}

}  // namespace
}  // namespace hv::builder
