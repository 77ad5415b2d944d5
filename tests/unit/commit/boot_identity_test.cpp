// The patch engine's boot identity (patcher/ledger.h BootIdentity, docs/transaction.md): a
// ledger of another boot is archived and never acted on, one of this boot is kept, over a
// FakeVm whose "guest" is reshaped the way each lifecycle event reshapes a real one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>

#include "patcher/arena_layout.h"

#include "fake_vm.h"
#include "patcher/patch_engine.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::hv::testing::FakeVm;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr std::uint64_t kSite = 0xffffffff81001000ull;
constexpr std::uint64_t kArenaVa = 0xffffffff84000000ull;
constexpr std::uint64_t kBarGpa = 0x800000;
constexpr std::uint64_t kPmdGpa = 0x700000 + 8 * 32;
constexpr std::uint64_t kPmdEntry = kBarGpa | 0x63;
constexpr std::uint64_t kMark = 0x5eed5eed5eed5eecull;

class FakeKernel : public KernelView {
 public:
  Result<ResolvedSymbol> Resolve(std::string_view name, std::string_view, std::uint64_t) const override {
    return NotFound("no symbol '" + std::string(name) + "'");
  }
  std::string BuildId() const override { return build_id; }
  vmm::PagingMode KernelPaging() const override { return mode; }
  std::uint64_t ImageEnd() const override { return 0xffffffff83000000ull; }
  std::uint64_t KaslrOffset() const override { return kaslr; }
  std::uint64_t PageTableGpa() const override { return page_tables; }

  std::string build_id = "b1d";
  std::uint64_t kaslr = 0x2a000000;
  std::uint64_t page_tables = 0x1000;
  vmm::PagingMode mode;
};

class NoStacks : public StackSource {
 public:
  Result<std::vector<StackRegion>> Collect(std::span<const vmm::VcpuState>) override {
    return std::vector<StackRegion>{};
  }
};

class MemoryStore : public LedgerStore {
 public:
  Result<Ledger> Load() override { return saved ? *saved : Ledger{}; }
  Status Save(const Ledger& l) override {
    saved = l;
    return Status::Ok();
  }
  Result<std::string> Archive() override {
    if (!saved) return ErrnoError("archiving the ledger", ENOENT);
    archives.push_back(*saved);
    saved.reset();
    return "/state/vm.archived-" + std::to_string(archives.size()) + ".json";
  }
  std::string Describe() const override { return "memory"; }

  std::optional<Ledger> saved;
  std::vector<Ledger> archives;
};

class BootIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vm_.MapRange(kSite, 4096);
    kernel_.mode = vm_.Mode();
    // This boot's guest: the trampoline at the site, hvpatch's PMD entry and boot mark.
    vm_.PokeVirt(kSite, kTrampoline);
    vm_.SetQ(kPmdGpa, kPmdEntry);
    vm_.SetQ(kBarGpa, kMark);
    Ledger l;
    l.vm_identity = "fake-vm";
    l.kernel_build_id = kernel_.build_id;
    l.kaslr_offset = kernel_.kaslr;
    l.page_table_gpa = kernel_.page_tables;
    l.boot_mark = kMark;
    auto layout = ArenaLayout::Create(kArenaVa, kBarGpa, 2 << 20);
    ASSERT_THAT(layout, IsOk());
    l.arena = {true, kArenaVa, kBarGpa, 2 << 20, kPmdGpa, kPmdEntry, layout->Serialize(), true};
    LedgerPatch p;
    p.name = "hvp_sample";
    p.state = PatchState::kApplied;
    LedgerFunction f;
    f.name = "cmdline_proc_show";
    f.site = kSite;
    f.original = kNop;
    f.trampoline = kTrampoline;
    f.new_addr = kArenaVa + 0x1000;
    f.new_size = 16;
    p.functions.push_back(f);
    l.patches.push_back(p);
    store_.saved = l;
  }

  PatchEngine Engine() { return PatchEngine(vm_, kernel_, stacks_, store_); }

  const std::vector<std::uint8_t> kNop = {0x0f, 0x1f, 0x44, 0x00, 0x00};
  const std::vector<std::uint8_t> kTrampoline = {0xe9, 0xfb, 0xef, 0xff, 0x02};
  FakeVm vm_;
  FakeKernel kernel_;
  NoStacks stacks_;
  MemoryStore store_;
};

TEST_F(BootIdentityTest, SameBootKeepsTheLedger) {
  auto engine = Engine();
  auto notes = engine.Recover();
  ASSERT_THAT(notes, IsOk());
  EXPECT_THAT(*notes, IsEmpty());
  EXPECT_EQ(engine.ForeignBootReason(*store_.saved), "");
  EXPECT_THAT(store_.archives, IsEmpty());
  auto listed = engine.List();
  ASSERT_THAT(listed, IsOk());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_TRUE((*listed)[0].consistent);
}

TEST_F(BootIdentityTest, MovedKernelIsAnotherBootArchivedWithoutAGuestWrite) {
  kernel_.kaslr = 0x31000000;  // a reboot: KASLR moved the kernel
  vm_.running_ = false;        // and a pause the old ledger recorded must not be undone
  store_.saved->paused_by_hvpatch = true;
  store_.saved->was_running = true;
  auto engine = Engine();
  auto notes = engine.Recover();
  ASSERT_THAT(notes, IsOk());
  ASSERT_EQ(notes->size(), 1u);
  EXPECT_EQ((*notes)[0],
            "the ledger of an earlier boot of this VM (KASLR offset 0x2a000000, the guest's is 0x31000000) was "
            "archived as '/state/vm.archived-1.json'; its patches (hvp_sample) went with that boot, and the VM is "
            "treated as unpatched");
  EXPECT_THAT(vm_.log, IsEmpty()) << "written on behalf of another boot";
  EXPECT_FALSE(vm_.running_) << "resumed on behalf of another boot";
  ASSERT_EQ(store_.archives.size(), 1u);
  EXPECT_EQ(store_.archives[0].patches.size(), 1u);
  // The fresh ledger is this boot's and remembers the archive.
  ASSERT_TRUE(store_.saved.has_value());
  EXPECT_TRUE(store_.saved->patches.empty());
  EXPECT_FALSE(store_.saved->arena.mapped);
  EXPECT_EQ(store_.saved->kaslr_offset, 0x31000000u);
  ASSERT_EQ(store_.saved->archived.size(), 1u);
  EXPECT_EQ(store_.saved->archived[0].patches, std::vector<std::string>{"hvp_sample"});
  EXPECT_EQ(store_.saved->archived[0].arena_va, kArenaVa);
  auto listed = engine.List();
  ASSERT_THAT(listed, IsOk());
  EXPECT_THAT(*listed, IsEmpty());
  // Revert of the patch that went with the old boot: done, nothing written.
  auto reverted = engine.Revert({"hvp_sample", {1, std::chrono::milliseconds(0)}});
  ASSERT_THAT(reverted, IsOk());
  EXPECT_THAT(reverted->gone_with_boot, HasSubstr("ledger archived as '/state/vm.archived-1.json': KASLR offset"));
  EXPECT_THAT(vm_.log, IsEmpty());
  // A patch that was never applied anywhere is still not found.
  EXPECT_THAT(engine.Revert({"other", {1, std::chrono::milliseconds(0)}}), StatusIs(Code::kNotFound, HasSubstr("patch 'other' is not applied")));
}

TEST_F(BootIdentityTest, PmdEntryGoneIsAnotherBootEvenWithTheSameKaslr) {
  vm_.SetQ(kPmdGpa, 0);  // nokaslr reboot: same addresses, page tables rebuilt from the image
  auto engine = Engine();
  auto notes = engine.Recover();
  ASSERT_THAT(notes, IsOk());
  ASSERT_EQ(notes->size(), 1u);
  EXPECT_THAT((*notes)[0], HasSubstr("the arena's PMD entry at 0x700100 is 0x0, not 0x800063"));
  EXPECT_THAT(vm_.log, IsEmpty());
}

TEST_F(BootIdentityTest, AnotherBootMarkIsAnotherBoot) {
  vm_.SetQ(kBarGpa, 0x1234);  // the arena was mapped again, by another ledger
  auto engine = Engine();
  EXPECT_THAT(engine.ForeignBootReason(*store_.saved),
              HasSubstr("hvpatch's boot mark in the arena is 0x1234, the ledger's is 0x5eed5eed5eed5eec"));
}

TEST_F(BootIdentityTest, BuildIdAndPageTablesAreCompared) {
  auto engine = Engine();
  kernel_.page_tables = 0x2000;
  EXPECT_THAT(engine.ForeignBootReason(*store_.saved), HasSubstr("kernel page tables at 0x1000, the guest's are at 0x2000"));
  kernel_.build_id = "other";
  EXPECT_THAT(engine.ForeignBootReason(*store_.saved), HasSubstr("kernel build-id b1d, the guest runs other"));
}

TEST_F(BootIdentityTest, FirstApplyKilledBeforeItsPmdWriteIsStillThisBoot) {
  // The mapping was recorded ahead but never written: no PMD entry proves nothing.
  store_.saved->arena.committed = false;
  store_.saved->patches[0].state = PatchState::kApplying;
  vm_.SetQ(kPmdGpa, 0);
  vm_.PokeVirt(kSite, kNop);
  auto engine = Engine();
  EXPECT_EQ(engine.ForeignBootReason(*store_.saved), "");
  auto notes = engine.Recover();
  ASSERT_THAT(notes, IsOk());
  ASSERT_EQ(notes->size(), 1u);
  EXPECT_EQ((*notes)[0], "recovered patch 'hvp_sample' interrupted while applying: fully reverted");
  EXPECT_THAT(store_.archives, IsEmpty());
  EXPECT_THAT(vm_.log, IsEmpty());
}

TEST_F(BootIdentityTest, AnEmptyLedgerOfAnotherBootIsJustReplaced) {
  store_.saved->patches.clear();
  store_.saved->arena = {};
  kernel_.kaslr = 0x1000000;
  auto engine = Engine();
  auto notes = engine.Recover();
  ASSERT_THAT(notes, IsOk());
  EXPECT_THAT(*notes, IsEmpty());
  EXPECT_THAT(store_.archives, IsEmpty());
  auto current = engine.CurrentLedger();
  ASSERT_THAT(current, IsOk());
  EXPECT_EQ(current->kaslr_offset, 0x1000000u);
}

}  // namespace
}  // namespace hv::patcher
