// The agent's pieces in-process: build-id notes, kcore, the livepatch sysfs reader, the ABI choice.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "guest-agent/kcore_reader.h"
#include "guest-agent/kernel_notes.h"
#include "guest-agent/livepatch_tree.h"
#include "status_matchers.h"
#include "unit/agent/agent_test_support.h"

namespace hv::agent {
namespace {

using ::testing::HasSubstr;
using namespace hv::agent::testing;  // NOLINT

TEST(KernelNotesTest, FindsTheGnuBuildIdAmongOtherNotes) {
  const std::string notes = Note("Xen", 1, "12345678") + Note("GNU", 3, kBuildId) + Note("Linux", 1, "x");
  auto id = FindGnuBuildId(notes);
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(*id, kBuildId);
}

TEST(KernelNotesTest, ReportsMissingAndTruncatedNotes) {
  EXPECT_THAT(FindGnuBuildId(Note("Xen", 1, "12345678")), StatusIs(Code::kNotFound, HasSubstr("no GNU build-id")));
  std::string truncated = Note("GNU", 3, kBuildId);
  truncated.resize(truncated.size() - 4);
  EXPECT_THAT(FindGnuBuildId(truncated), StatusIs(Code::kInvalidArgument, HasSubstr("runs past the end")));
  // A huge descsz must not overflow the bounds check.
  std::string huge;
  Put32(&huge, 4);
  Put32(&huge, 0xfffffff0u);
  Put32(&huge, 3);
  huge += "GNU";
  huge.push_back('\0');
  EXPECT_THAT(FindGnuBuildId(huge), StatusIs(Code::kInvalidArgument, ::testing::_));
  EXPECT_THAT(FindGnuBuildId(""), StatusIs(Code::kNotFound, ::testing::_));
}

class KcoreReaderTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(KcoreReaderTest, MapsVirtualAddressesThroughProgramHeaders) {
  WriteFile(dir_ + "/kcore", FakeKcore());
  auto kcore = KcoreReader::Open(dir_ + "/kcore");
  ASSERT_THAT(kcore, IsOk());
  auto bytes = kcore->Read(kCmdlineProcShow, 5);
  ASSERT_THAT(bytes, IsOk());
  EXPECT_EQ(*bytes, std::string("\x0f\x1f\x44\x00\x00", 5));
  EXPECT_THAT(kcore->Read(kTextBase + 0x400000 - 2, 4), StatusIs(Code::kNotFound, HasSubstr("not mapped")));
  EXPECT_THAT(kcore->Read(0xfffffffffffffffeull, 4), StatusIs(Code::kInvalidArgument, HasSubstr("wraps")));
}

TEST_F(KcoreReaderTest, RefusesFilesThatAreNotCores) {
  WriteFile(dir_ + "/notelf", "hello world, this is not an ELF file at all, just text padding......");
  EXPECT_THAT(KcoreReader::Open(dir_ + "/notelf"), StatusIs(Code::kInvalidArgument, HasSubstr("not a 64-bit")));
  std::string img = FakeKcore();
  img[16] = 2;  // ET_EXEC
  WriteFile(dir_ + "/exec", img);
  EXPECT_THAT(KcoreReader::Open(dir_ + "/exec"), StatusIs(Code::kInvalidArgument, HasSubstr("not a core")));
  img = FakeKcore();
  img[56] = static_cast<char>(0xff);  // e_phnum = 0xff03... far too many
  img[57] = static_cast<char>(0xff);
  WriteFile(dir_ + "/many", img);
  EXPECT_THAT(KcoreReader::Open(dir_ + "/many"), StatusIs(Code::kInvalidArgument, HasSubstr("program headers")));
  WriteFile(dir_ + "/short", FakeKcore().substr(0, 100));
  EXPECT_THAT(KcoreReader::Open(dir_ + "/short"), StatusIs(Code::kIo, HasSubstr("short read")));
  EXPECT_THAT(KcoreReader::Open(dir_ + "/absent"), StatusIs(Code::kIo, HasSubstr("absent")));
}

TEST(SysfsAbiTest, FollowsTheKernelVersion) {
  EXPECT_EQ(SysfsAbi::ForRelease("6.1.0-18-cloud-amd64").name, "6.1");
  EXPECT_FALSE(SysfsAbi::ForRelease("6.1.0").replace);
  EXPECT_TRUE(SysfsAbi::ForRelease("6.1.0").patched);
  EXPECT_FALSE(SysfsAbi::ForRelease("5.15.0-91-generic").patched);
  EXPECT_EQ(SysfsAbi::ForRelease("6.11.0").name, "6.11");
  EXPECT_TRUE(SysfsAbi::ForRelease("6.12.1").replace);
  EXPECT_FALSE(SysfsAbi::ForRelease("6.12.1").stack_order);
  EXPECT_TRUE(SysfsAbi::ForRelease("6.13.0").stack_order);
  EXPECT_TRUE(SysfsAbi::ForRelease("7.0").stack_order);
  EXPECT_EQ(SysfsAbi::ForRelease("garbage").name, "6.1");
}

TEST(LivepatchSysfsTest, ReadsPatchesObjectsAndFunctions) {
  GuestFixture g;
  g.dir = MakeTempDir();
  g.Populate();
  const std::string mod = g.sys() + "/kernel/livepatch/livepatch_sample/virtio_console";
  WriteFile(mod + "/patched", "0\n");
  fs::create_directories(mod + "/port_fops_read,2");
  auto state = ReadLivepatchSysfs(g.sys() + "/kernel/livepatch");
  ASSERT_THAT(state, IsOk());
  ASSERT_EQ(state->patches_size(), 1);
  const auto& p = state->patches(0);
  ASSERT_EQ(p.objects_size(), 2);
  EXPECT_EQ(p.objects(0).name(), "virtio_console");
  EXPECT_FALSE(p.objects(0).patched());
  EXPECT_EQ(p.objects(0).functions(0).name(), "port_fops_read");
  EXPECT_EQ(p.objects(0).functions(0).sympos(), 2u);
  EXPECT_EQ(p.objects(1).name(), "vmlinux");
  EXPECT_TRUE(p.objects(1).patched());
  fs::remove_all(g.dir);
}

TEST(CheckTreeNameTest, RefusesPathTricks) {
  EXPECT_THAT(CheckTreeName("patch", "ok_name-1.2", 64), IsOk());
  EXPECT_THAT(CheckTreeName("patch", "..", 64), StatusIs(Code::kInvalidArgument, ::testing::_));
  EXPECT_THAT(CheckTreeName("patch", "", 64), StatusIs(Code::kInvalidArgument, HasSubstr("0 characters")));
  EXPECT_THAT(CheckTreeName("patch", std::string(65, 'a'), 64), StatusIs(Code::kInvalidArgument, ::testing::_));
  EXPECT_THAT(CheckTreeName("patch", "a b", 64), StatusIs(Code::kInvalidArgument, ::testing::_));
  EXPECT_THAT(CheckTreeName("patch", std::string("a\0b", 3), 64), StatusIs(Code::kInvalidArgument, ::testing::_));
}

}  // namespace
}  // namespace hv::agent
