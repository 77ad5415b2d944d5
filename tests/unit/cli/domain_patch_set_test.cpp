// The domain's patch set on disk (what the libvirt hook re-applies) and the module's kernel
// release check that keeps a patch off a guest running another kernel build.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "cli/domain_patch_set.h"
#include "cli/module_release.h"
#include "status_matchers.h"

namespace hv::cli {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class DomainPatchSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hvpatch-set-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(DomainPatchSetTest, KeepsStackOrderAndCopies) {
  DomainPatchSet set(dir_, "4f1c-uuid");
  auto empty = set.Load();
  ASSERT_THAT(empty, IsOk());
  EXPECT_TRUE(empty->empty());
  ASSERT_THAT(set.Add("web1", "fix_a", {'A', 'B'}), IsOk());
  ASSERT_THAT(set.Add("web1", "fix_b", {'C'}), IsOk());
  auto two = set.Load();
  ASSERT_THAT(two, IsOk());
  ASSERT_EQ(two->size(), 2u);
  EXPECT_EQ((*two)[0].name, "fix_a");
  EXPECT_EQ((*two)[1].name, "fix_b");
  EXPECT_EQ((*two)[0].file, dir_ + "/domains/4f1c-uuid/fix_a.ko");
  std::ifstream f((*two)[0].file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes, "AB");

  // Re-applying a patch moves it to the top; revert removes it and its copy.
  ASSERT_THAT(set.Add("web1", "fix_a", {'D'}), IsOk());
  auto moved = set.Load();
  ASSERT_THAT(moved, IsOk());
  ASSERT_EQ(moved->size(), 2u);
  EXPECT_EQ((*moved)[1].name, "fix_a");
  ASSERT_THAT(set.Remove("fix_a"), IsOk());
  ASSERT_THAT(set.Remove("not_there"), IsOk());
  auto one = set.Load();
  ASSERT_THAT(one, IsOk());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].name, "fix_b");
  EXPECT_FALSE(fs::exists(dir_ + "/domains/4f1c-uuid/fix_a.ko"));
}

TEST_F(DomainPatchSetTest, ACorruptSetIsNamed) {
  DomainPatchSet set(dir_, "u");
  fs::create_directories(set.dir());
  std::ofstream(set.dir() + "/set.json") << "{\"patches\": 3}";
  EXPECT_THAT(set.Load(), StatusIs(Code::kInvalidArgument, HasSubstr("set.json' is not a patch set")));
}

TEST(ModuleReleaseTest, ReadsVermagicAndRefusesAnotherRelease) {
  using namespace std::string_literals;
  const std::string modinfo = "license=GPL\0vermagic=6.1.0-57-cloud-amd64 SMP preempt mod_unload\0"s;
  const std::vector<std::uint8_t> ko(modinfo.begin(), modinfo.end());
  EXPECT_EQ(ModuleRelease(ko), "6.1.0-57-cloud-amd64");
  EXPECT_THAT(CheckBuiltFor(ko, "fix.ko", "6.1.0-57-cloud-amd64"), IsOk());
  EXPECT_THAT(CheckBuiltFor(ko, "fix.ko", "6.1.0-47-cloud-amd64"),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("patch 'fix.ko' was built for kernel '6.1.0-57-cloud-amd64', the guest runs "
                                 "'6.1.0-47-cloud-amd64'")));
  // No vermagic (or no release known): nothing to compare, the later checks decide.
  EXPECT_THAT(CheckBuiltFor({'x'}, "fix.ko", "6.1.0-47-cloud-amd64"), IsOk());
}

}  // namespace
}  // namespace hv::cli
