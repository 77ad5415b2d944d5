// The vmcoreinfo location hint on disk: best effort both ways, never a wrong address.
#include "cli/vmcoreinfo_hint_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "status_matchers.h"

namespace hv::cli {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class VmcoreinfoHintFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hvpatch-hint-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  void WriteRaw(const std::string& path, const std::string& bytes) { std::ofstream(path) << bytes; }
  std::string dir_;
};

TEST_F(VmcoreinfoHintFileTest, SavesAndLoadsTheAddress) {
  const VmcoreinfoHintFile f(dir_ + "/state/vm.vmcoreinfo");  // the state directory is created
  EXPECT_EQ(f.Load(), std::nullopt);
  ASSERT_THAT(f.Save(0x2ebd000), IsOk());
  EXPECT_EQ(f.Load(), 0x2ebd000u);
  ASSERT_THAT(f.Save(0x1000), IsOk());
  EXPECT_EQ(f.Load(), 0x1000u);
  std::ifstream in(f.path());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "0x1000\n");
}

TEST_F(VmcoreinfoHintFileTest, AGarbledFileIsNoHint) {
  const VmcoreinfoHintFile f(dir_ + "/vm.vmcoreinfo");
  for (const std::string& bad : std::vector<std::string>{"", "0x", "1000\n", "0x10zz\n", "0x1000\n0x2000\n",
                                                        "0x11112222333344445555\n", std::string(100, '0')}) {
    WriteRaw(f.path(), bad);
    EXPECT_EQ(f.Load(), std::nullopt) << "'" << bad << "'";
  }
}

TEST_F(VmcoreinfoHintFileTest, AnUnwritableStateDirectoryIsAnError) {
  WriteRaw(dir_ + "/file", "x");  // a file where the directory should be (root ignores modes)
  const VmcoreinfoHintFile f(dir_ + "/file/vm.vmcoreinfo");
  EXPECT_THAT(f.Save(0x1000), StatusIs(Code::kIo, HasSubstr("creating '" + dir_ + "/file/vm.vmcoreinfo.tmp.")));
  EXPECT_EQ(f.Load(), std::nullopt);
}

}  // namespace
}  // namespace hv::cli
