// The warm-start store on disk: entries saved by rename, read back whole or mapped in place, and
// a mapping that keeps its bytes when the entry is replaced under it.
#include "cli/kernel_cache_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>

#include "status_matchers.h"

namespace hv::cli {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class KernelCacheFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hvpatch-cache-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(KernelCacheFileTest, MapReadsWhatSaveWroteAndOutlivesAReplacement) {
  KernelCacheFile store(dir_ + "/cache");
  EXPECT_THAT(store.Map("kallsyms-ab"), StatusIs(Code::kNotFound, HasSubstr("no cache entry")));
  const std::string first(10000, 'a');
  ASSERT_THAT(store.Save("kallsyms-ab", first), IsOk());
  auto mapped = store.Map("kallsyms-ab");
  ASSERT_THAT(mapped, IsOk());
  EXPECT_EQ((*mapped)->bytes(), first);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>((*mapped)->bytes().data()) % 8, 0u);
  // A new entry goes in by rename: the old mapping still reads the old bytes.
  ASSERT_THAT(store.Save("kallsyms-ab", std::string(20000, 'b')), IsOk());
  EXPECT_EQ((*mapped)->bytes(), first);
  auto again = store.Map("kallsyms-ab");
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ((*again)->bytes(), std::string(20000, 'b'));
  EXPECT_EQ(*store.Load("kallsyms-ab"), std::string(20000, 'b'));
}

TEST_F(KernelCacheFileTest, RefusesOddKeysEmptyEntriesAndNonFiles) {
  KernelCacheFile store(dir_ + "/cache");
  EXPECT_THAT(store.Map("../etc/passwd"), StatusIs(Code::kInvalidArgument, HasSubstr("character other than")));
  ASSERT_THAT(store.Save("empty", ""), IsOk());
  EXPECT_THAT(store.Map("empty"), StatusIs(Code::kInvalidArgument, HasSubstr("is empty")));
  fs::create_directory(dir_ + "/cache/dir.bin");
  EXPECT_THAT(store.Map("dir"), StatusIs(Code::kInvalidArgument, HasSubstr("not a regular file")));
}

}  // namespace
}  // namespace hv::cli
