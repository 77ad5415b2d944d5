// SharedRamMap against this process standing in for QEMU: a memfd mapped shared (as
// memory-backend-memfd,share=on does), found through /proc/self/maps and mapped a second time.
#include "vmm/shared_ram_map.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "status_matchers.h"

namespace hv::vmm {
namespace {

using ::testing::HasSubstr;

constexpr std::size_t kSize = 1 << 20;

HostMapping SelfMapping(const void* at) {
  std::ifstream f("/proc/self/maps");
  std::stringstream ss;
  ss << f.rdbuf();
  auto maps = ParseProcMaps(ss.str());
  EXPECT_THAT(maps, IsOk());
  for (const HostMapping& m : *maps) {
    if (m.start == reinterpret_cast<std::uint64_t>(at)) return m;
  }
  ADD_FAILURE() << "no mapping at " << at;
  return {};
}

class SharedRamMapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = memfd_create("memory-backend-memfd", MFD_CLOEXEC);
    ASSERT_GE(fd_, 0);
    ASSERT_EQ(ftruncate(fd_, kSize), 0);
    qemu_ = static_cast<std::uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    ASSERT_NE(qemu_, MAP_FAILED);
    for (std::size_t i = 0; i < kSize; i += 4096) qemu_[i] = static_cast<std::uint8_t>(i >> 12);
  }
  void TearDown() override {
    if (qemu_ && qemu_ != MAP_FAILED) munmap(qemu_, kSize);
    if (fd_ >= 0) close(fd_);
  }
  int fd_ = -1;
  std::uint8_t* qemu_ = nullptr;
};

TEST_F(SharedRamMapTest, MapsTheMemfdBehindAMappingAndSeesLaterWrites) {
  const HostMapping m = SelfMapping(qemu_);
  EXPECT_EQ(m.path, "/memfd:memory-backend-memfd (deleted)");
  EXPECT_NE(m.inode, 0u);
  auto map = SharedRamMap::Open(getpid(), m);
  ASSERT_THAT(map, IsOk());
  ASSERT_EQ((*map)->size(), kSize);
  EXPECT_EQ(std::memcmp((*map)->data(), qemu_, kSize), 0);
  // The guest writes after the mapping was made: the same pages, seen at once.
  qemu_[0x12345] = 0xa5;
  EXPECT_EQ((*map)->data()[0x12345], 0xa5);
  EXPECT_NE((*map)->data(), qemu_);
}

TEST_F(SharedRamMapTest, RefusesPrivateAndAnonymousMappings) {
  void* priv = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_, 0);
  ASSERT_NE(priv, MAP_FAILED);
  EXPECT_THAT(SharedRamMap::Open(getpid(), SelfMapping(priv)),
              StatusIs(Code::kFailedPrecondition, HasSubstr("not a shared file mapping")));
  munmap(priv, kSize);
  void* anon = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(anon, MAP_FAILED);
  EXPECT_THAT(SharedRamMap::Open(getpid(), SelfMapping(anon)),
              StatusIs(Code::kFailedPrecondition, HasSubstr("not a shared file mapping")));
  munmap(anon, kSize);
}

TEST_F(SharedRamMapTest, RefusesAFileWhoseInodeIsNotTheMappings) {
  HostMapping m = SelfMapping(qemu_);
  m.inode += 1;  // /proc/PID/maps named another file: nothing reachable has this inode
  m.start += 4096;  // and no map_files entry for this range either
  EXPECT_THAT(SharedRamMap::Open(getpid(), m), StatusIs(Code::kNotFound, HasSubstr("inode")));
}

TEST(ProcMapsInodeTest, ParsesTheInodeAndRefusesAGarbledOne) {
  auto maps = ParseProcMaps("3000000-4000000 rw-s 00000000 00:01 1036   /memfd:memory-backend-memfd (deleted)\n");
  ASSERT_THAT(maps, IsOk());
  EXPECT_EQ((*maps)[0].inode, 1036u);
  EXPECT_THAT(ParseProcMaps("3000000-4000000 rw-s 00000000 00:01 10x6 /x\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("malformed maps line")));
}

TEST(ProcMapsInodeTest, QemuMemfdBackendsAreCandidatesWhateverTheirId) {
  // QEMU 7.2 names every memory-backend-memfd's memfd after its type, not its id.
  auto maps = ParseProcMaps(
      "1000000-2000000 rw-p 00000000 00:00 0 \n"
      "3000000-4000000 rw-s 00000000 00:01 7  /memfd:memory-backend-memfd (deleted)\n");
  ASSERT_THAT(maps, IsOk());
  auto c = CandidateMappings(*maps, 0x1000000, "", "ram0");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].start, 0x3000000u);
}

}  // namespace
}  // namespace hv::vmm
