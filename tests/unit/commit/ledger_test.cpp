#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "cli/ledger_file.h"
#include "cli/vm_lock.h"
#include "status_matchers.h"

namespace hv::cli {
namespace {

using ::testing::HasSubstr;

class StateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/hvpatch-state-XXXXXX";
    ASSERT_NE(mkdtemp(t), nullptr);
    dir_ = t;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

patcher::Ledger SampleLedger() {
  patcher::Ledger l;
  l.vm_identity = "uuid-1";
  l.kernel_build_id = "abcd";
  l.paused_by_hvpatch = true;
  l.was_running = true;
  l.arena = {true, 0xffffffffa6600000ull, 0xfe000000, 2 << 20, 0x1234000, 0xfe0001e3, "arena 1 2 3\n"};
  patcher::LedgerPatch p;
  p.name = "hvp_sample";
  p.build_id = "ff";
  p.state = patcher::PatchState::kApplying;
  p.functions.push_back({"cmdline_proc_show", "vmlinux", 0, 0xffffffff81000000ull, 0x40,
                         0xffffffff81000000ull, {0x0f, 0x1f, 0x44, 0, 0}, {0xe9, 1, 2, 3, 4},
                         0xffffffffa6601000ull, 0x20});
  l.patches.push_back(p);
  return l;
}

TEST_F(StateDirTest, LedgerRoundTripsThroughTheFile) {
  LedgerFile f(dir_ + "/vm.json");
  auto empty = f.Load();
  ASSERT_THAT(empty, IsOk());
  EXPECT_TRUE(empty->patches.empty());
  ASSERT_THAT(f.Save(SampleLedger()), IsOk());
  auto l = f.Load();
  ASSERT_THAT(l, IsOk());
  ASSERT_EQ(l->patches.size(), 1u);
  const auto& fn = l->patches[0].functions.at(0);
  EXPECT_EQ(fn.original, (std::vector<std::uint8_t>{0x0f, 0x1f, 0x44, 0, 0}));
  EXPECT_EQ(fn.trampoline, (std::vector<std::uint8_t>{0xe9, 1, 2, 3, 4}));
  EXPECT_EQ(l->patches[0].state, patcher::PatchState::kApplying);
  EXPECT_EQ(l->arena.pmd_entry, 0xfe0001e3u);
  EXPECT_EQ(l->arena.layout, "arena 1 2 3\n");
  EXPECT_TRUE(l->paused_by_hvpatch);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/vm.json.tmp"));
}

TEST_F(StateDirTest, AtomicReplaceRecordRoundTrips) {
  LedgerFile f(dir_ + "/vm.json");
  patcher::Ledger l = SampleLedger();
  l.patches[0].replace = true;
  l.patches[0].replaces = {"hvp_two", "hvp_meminfo"};
  ASSERT_THAT(f.Save(l), IsOk());
  auto back = f.Load();
  ASSERT_THAT(back, IsOk());
  EXPECT_TRUE(back->patches.at(0).replace);
  EXPECT_EQ(back->patches.at(0).replaces, (std::vector<std::string>{"hvp_two", "hvp_meminfo"}));
  // A plain patch writes neither field, and one without them reads as plain.
  ASSERT_THAT(f.Save(SampleLedger()), IsOk());
  back = f.Load();
  ASSERT_THAT(back, IsOk());
  EXPECT_FALSE(back->patches.at(0).replace);
  EXPECT_TRUE(back->patches.at(0).replaces.empty());
}

TEST_F(StateDirTest, BootIdentityAndArchiveHistoryRoundTrip) {
  LedgerFile f(dir_ + "/vm.json");
  patcher::Ledger in = SampleLedger();
  in.kaslr_offset = 0x2a000000;
  in.page_table_gpa = 0x2c40c000;
  in.boot_mark = 0x1234567890abcdeeull;
  in.arena.committed = true;
  in.archived.push_back({dir_ + "/vm.archived-20261202T010203Z.json", "KASLR offset 0x1, the guest's is 0x2",
                         1790000000, {"hvp_sample", "hvp_two"}, 0xffffffffa6600000ull});
  ASSERT_THAT(f.Save(in), IsOk());
  auto l = f.Load();
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->Boot(), in.Boot());
  EXPECT_TRUE(l->arena.committed);
  ASSERT_EQ(l->archived.size(), 1u);
  EXPECT_EQ(l->archived[0].path, in.archived[0].path);
  EXPECT_EQ(l->archived[0].reason, in.archived[0].reason);
  EXPECT_EQ(l->archived[0].at, 1790000000);
  EXPECT_EQ(l->archived[0].patches, (std::vector<std::string>{"hvp_sample", "hvp_two"}));
  EXPECT_EQ(l->archived[0].arena_va, 0xffffffffa6600000ull);
}

TEST_F(StateDirTest, FormatOneLedgerReadsWithAnUnknownBootIdentity) {
  // Written by hvpatch before the boot identity existed: a kept mapping counts as committed.
  std::ofstream(dir_ + "/vm.json")
      << R"({"format": 1, "vm": "v", "kernel_build_id": "ab", "paused_by_hvpatch": false, "was_running": true,
            "arena": {"mapped": true, "base_va": 1, "bar_gpa": 2, "size": 3, "pmd_entry_gpa": 4,
                      "pmd_entry": 5, "layout": ""}, "patches": []})";
  auto l = LedgerFile(dir_ + "/vm.json").Load();
  ASSERT_THAT(l, IsOk());
  EXPECT_EQ(l->kernel_build_id, "ab");
  EXPECT_EQ(l->page_table_gpa, 0u);
  EXPECT_EQ(l->boot_mark, 0u);
  EXPECT_TRUE(l->arena.committed);
  EXPECT_TRUE(l->archived.empty());
}

TEST_F(StateDirTest, ArchiveKeepsTheLedgerUnderATimestampedName) {
  LedgerFile f(dir_ + "/vm.json");
  ASSERT_THAT(f.Save(SampleLedger()), IsOk());
  auto first = f.Archive();
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(*first, ::testing::MatchesRegex(".*/vm\\.archived-[0-9]{8}T[0-9]{6}Z\\.json"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/vm.json"));
  // The next Load starts empty; the archive still holds the patches.
  auto empty = f.Load();
  ASSERT_THAT(empty, IsOk());
  EXPECT_TRUE(empty->patches.empty());
  auto kept = LedgerFile(*first).Load();
  ASSERT_THAT(kept, IsOk());
  ASSERT_EQ(kept->patches.size(), 1u);
  EXPECT_EQ(kept->patches[0].name, "hvp_sample");
  // A second archive in the same second gets its own name.
  ASSERT_THAT(f.Save(SampleLedger()), IsOk());
  auto second = f.Archive();
  ASSERT_THAT(second, IsOk());
  EXPECT_NE(*second, *first);
  EXPECT_TRUE(std::filesystem::exists(*first));
  EXPECT_TRUE(std::filesystem::exists(*second));
  // Nothing to archive is an OS error naming the file.
  EXPECT_THAT(f.Archive(), StatusIs(Code::kIo, HasSubstr("archiving ledger '" + dir_ + "/vm.json'")));
}

TEST_F(StateDirTest, CorruptLedgerIsNamed) {
  std::ofstream(dir_ + "/vm.json") << "{\"format\": 1, \"vm\": ";
  LedgerFile f(dir_ + "/vm.json");
  EXPECT_THAT(f.Load(), StatusIs(Code::kInvalidArgument, HasSubstr("ledger '" + dir_ + "/vm.json' is corrupt")));
}

TEST_F(StateDirTest, SecondLockHolderIsRefusedNamingTheFirstPid) {
  const std::string path = dir_ + "/vm.lock";
  auto first = VmLock::Acquire(path, "vm1", std::chrono::milliseconds(0));
  ASSERT_THAT(first, IsOk());
  // flock locks belong to the open file description: a child process contends like another tool.
  pid_t child = fork();
  if (child == 0) {
    auto second = VmLock::Acquire(path, "vm1", std::chrono::milliseconds(100));
    const bool ok = !second.ok() && second.status().code() == Code::kBusy &&
                    second.status().message() ==
                        "VM 'vm1' is locked by hvpatch pid " + std::to_string(getppid());
    _exit(ok ? 0 : 1);
  }
  int st = 0;
  waitpid(child, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

TEST_F(StateDirTest, LockIsReleasedWhenTheHolderDies) {
  const std::string path = dir_ + "/vm.lock";
  pid_t child = fork();
  if (child == 0) {
    auto l = VmLock::Acquire(path, "vm1", std::chrono::milliseconds(0));
    _exit(l.ok() ? 0 : 1);  // dies holding it
  }
  int st = 0;
  waitpid(child, &st, 0);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  EXPECT_THAT(VmLock::Acquire(path, "vm1", std::chrono::milliseconds(0)), IsOk());
}

TEST(StateFileStemTest, MakesAnyIdentitySafe) {
  EXPECT_EQ(StateFileStem("qmp:/tmp/x y/qmp.sock"), "qmp__tmp_x_y_qmp.sock");
  EXPECT_EQ(StateFileStem(""), "vm");
}

}  // namespace
}  // namespace hv::cli
