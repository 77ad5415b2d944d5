// Atomic replace (patcher/atomic_replace.h, docs/atomic-replace.md): the pure plan of what a
// replacing patch does to the patches below it, and the crash recovery of a replace that a dead
// hvpatch left half-way, over a FakeVm whose sites hold each state the pause can be killed in.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fake_vm.h"
#include "patcher/arena_layout.h"
#include "patcher/atomic_replace.h"
#include "patcher/patch_engine.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::hv::testing::FakeVm;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr std::uint64_t kCmdline = 0xffffffff81001000ull;  // the sites (old function entries)
constexpr std::uint64_t kVersion = 0xffffffff81002000ull;
constexpr std::uint64_t kMeminfo = 0xffffffff81003000ull;
constexpr std::uint64_t kArenaVa = 0xffffffff84000000ull;
constexpr std::uint64_t kBarGpa = 0x800000;
constexpr std::uint64_t kPmdGpa = 0x700000 + 8 * 32;
constexpr std::uint64_t kPmdEntry = kBarGpa | 0x63;

const std::vector<std::uint8_t> kNop = {0x0f, 0x1f, 0x44, 0x00, 0x00};
std::vector<std::uint8_t> Jmp(std::uint8_t tag) { return {0xe9, tag, 0x00, 0x00, 0x03}; }

LedgerFunction Fn(const std::string& name, std::uint64_t site, std::vector<std::uint8_t> original,
                  std::vector<std::uint8_t> trampoline, std::uint64_t new_addr) {
  LedgerFunction f;
  f.name = name;
  f.object = "vmlinux";
  f.old_addr = site;
  f.old_size = 0x80;
  f.site = site;
  f.original = std::move(original);
  f.trampoline = std::move(trampoline);
  f.new_addr = new_addr;
  f.new_size = 0x20;
  return f;
}

LedgerPatch Patch(const std::string& name, PatchState state, std::vector<LedgerFunction> fns) {
  LedgerPatch p;
  p.name = name;
  p.state = state;
  p.functions = std::move(fns);
  return p;
}

// hvp_two: cmdline and version; hvp_meminfo stacked on its cmdline and adding meminfo.
class AtomicReplacePlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = ArenaLayout::Create(kArenaVa, kBarGpa, 2 << 20);
    ASSERT_THAT(l, IsOk());
    layout_.emplace(std::move(*l));
    auto a = layout_->Allocate("hvp_two", 1, MemoryClass::kCode);
    ASSERT_THAT(a, IsOk());
    two_code_ = layout_->Va(a->offset());
    ASSERT_THAT(layout_->Allocate("hvp_two", 1, MemoryClass::kData), IsOk());
    auto b = layout_->Allocate("hvp_meminfo", 2, MemoryClass::kCode);
    ASSERT_THAT(b, IsOk());
    meminfo_code_ = layout_->Va(b->offset());
    below_.push_back(Patch("hvp_two", PatchState::kApplied,
                           {Fn("cmdline_proc_show", kCmdline, kNop, Jmp(1), two_code_),
                            Fn("version_proc_show", kVersion, kNop, Jmp(2), two_code_ + 0x40)}));
    below_.push_back(Patch("hvp_meminfo", PatchState::kApplied,
                           {Fn("cmdline_proc_show", kCmdline, Jmp(1), Jmp(3), meminfo_code_),
                            Fn("meminfo_proc_show", kMeminfo, kNop, Jmp(4), meminfo_code_ + 0x40)}));
  }

  std::optional<ArenaLayout> layout_;
  std::vector<LedgerPatch> below_;
  std::uint64_t two_code_ = 0, meminfo_code_ = 0;
};

TEST_F(AtomicReplacePlanTest, TakenSitesKeepTheKernelsOriginalAndTheRestGoBackToIt) {
  const std::vector<std::uint64_t> sites = {kCmdline};
  auto plan = PlanAtomicReplace(below_, *layout_, sites);
  ASSERT_THAT(plan, IsOk());
  EXPECT_THAT(plan->replaced, ElementsAre("hvp_two", "hvp_meminfo"));
  // cmdline is taken over: the new patch finds hvp_meminfo's jump, and keeps the kernel's nop
  // as its original, so that its own revert gives the kernel's code back.
  EXPECT_EQ(plan->current.at(kCmdline), Jmp(3));
  EXPECT_EQ(plan->originals.at(kCmdline), kNop);
  // version and meminfo are not: their top trampoline goes, the kernel's entry comes back.
  ASSERT_EQ(plan->restores.size(), 2u);
  EXPECT_EQ(plan->restores[0].va, kVersion);
  EXPECT_EQ(plan->restores[0].expected, Jmp(2));
  EXPECT_EQ(plan->restores[0].bytes, kNop);
  EXPECT_EQ(plan->restores[1].va, kMeminfo);
  EXPECT_EQ(plan->restores[1].expected, Jmp(4));
  EXPECT_EQ(plan->restores[1].bytes, kNop);
  EXPECT_THAT(plan->restored_functions, ElementsAre("version_proc_show", "meminfo_proc_show"));
  ASSERT_EQ(plan->restored_code.size(), 2u);
  EXPECT_EQ(plan->restored_code[0].begin, kVersion);
  EXPECT_EQ(plan->restored_code[0].end, kVersion + 0x80);
  // Every code run of both replaced patches must be idle (not their data).
  ASSERT_EQ(plan->busy.size(), 2u);
  EXPECT_EQ(plan->busy[0].begin, two_code_);
  EXPECT_EQ(plan->busy[0].end, two_code_ + 4096);
  EXPECT_EQ(plan->busy[1].begin, meminfo_code_);
  EXPECT_EQ(plan->busy[1].end, meminfo_code_ + 2 * 4096);
}

TEST_F(AtomicReplacePlanTest, NewFunctionsOutsideTheReplacedPatchesAreNotTouched) {
  const std::vector<std::uint64_t> sites = {kCmdline, kVersion, kMeminfo, 0xffffffff81009000ull};
  auto plan = PlanAtomicReplace(below_, *layout_, sites);
  ASSERT_THAT(plan, IsOk());
  EXPECT_TRUE(plan->restores.empty());
  EXPECT_EQ(plan->originals.size(), 3u);
  EXPECT_EQ(plan->current.at(kVersion), Jmp(2));
  EXPECT_EQ(plan->originals.count(0xffffffff81009000ull), 0u);
}

TEST_F(AtomicReplacePlanTest, AnUnfinishedPatchCannotBeReplaced) {
  below_[1].state = PatchState::kReverting;
  const std::vector<std::uint64_t> sites = {kCmdline};
  EXPECT_THAT(PlanAtomicReplace(below_, *layout_, sites),
              StatusIs(Code::kFailedPrecondition, HasSubstr("patch 'hvp_meminfo' is reverting, it cannot be replaced")));
}

TEST_F(AtomicReplacePlanTest, ALedgerThatIsNotOneStackIsRefused) {
  below_[1].functions[0].original = Jmp(9);  // says it found something hvp_two never wrote
  const std::vector<std::uint64_t> sites = {kCmdline};
  EXPECT_THAT(PlanAtomicReplace(below_, *layout_, sites),
              StatusIs(Code::kFailedPrecondition,
                       HasSubstr("patch 'hvp_meminfo' found e9 09 00 00 03 at 0xffffffff81001000 ('cmdline_proc_show'), "
                                 "but the patch below it wrote e9 01 00 00 03")));
}

// ---- recovery of an interrupted replace, through the engine ----

class FakeKernel : public KernelView {
 public:
  Result<ResolvedSymbol> Resolve(std::string_view name, std::string_view, std::uint64_t) const override {
    return NotFound("no symbol '" + std::string(name) + "'");
  }
  std::string BuildId() const override { return "b1d"; }
  vmm::PagingMode KernelPaging() const override { return mode; }
  std::uint64_t ImageEnd() const override { return 0xffffffff83000000ull; }
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
  Result<Ledger> Load() override { return saved; }
  Status Save(const Ledger& l) override {
    saved = l;
    return Status::Ok();
  }
  Result<std::string> Archive() override { return Internal("not expected"); }
  std::string Describe() const override { return "memory"; }
  Ledger saved;
};

// The ledger as the apply wrote it ahead of the pause: hvp_two applied (cmdline, version),
// hvp_replace applying, replacing it, with cmdline only.
class ReplaceRecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vm_.MapRange(kCmdline, 4096);
    vm_.MapRange(kVersion, 4096);
    kernel_.mode = vm_.Mode();
    vm_.SetQ(kPmdGpa, kPmdEntry);
    auto layout = ArenaLayout::Create(kArenaVa, kBarGpa, 2 << 20);
    ASSERT_THAT(layout, IsOk());
    ASSERT_THAT(layout->Allocate("hvp_two", 1, MemoryClass::kCode), IsOk());
    ASSERT_THAT(layout->Allocate("hvp_replace", 1, MemoryClass::kCode), IsOk());
    Ledger& l = store_.saved;
    l.vm_identity = "fake-vm";
    l.kernel_build_id = "b1d";
    l.arena = {true, kArenaVa, kBarGpa, 2 << 20, kPmdGpa, kPmdEntry, layout->Serialize(), true};
    l.patches.push_back(Patch("hvp_two", PatchState::kApplied,
                              {Fn("cmdline_proc_show", kCmdline, kNop, Jmp(1), kArenaVa + 0x1000),
                               Fn("version_proc_show", kVersion, kNop, Jmp(2), kArenaVa + 0x1040)}));
    LedgerPatch r = Patch("hvp_replace", PatchState::kApplying,
                          {Fn("cmdline_proc_show", kCmdline, kNop, Jmp(5), kArenaVa + 0x2000)});
    r.replace = true;
    r.replaces = {"hvp_two"};
    l.patches.push_back(r);
  }

  // The guest as the killed pause left it.
  void Guest(const std::vector<std::uint8_t>& cmdline, const std::vector<std::uint8_t>& version) {
    vm_.PokeVirt(kCmdline, cmdline);
    vm_.PokeVirt(kVersion, version);
  }

  Result<std::vector<std::string>> Recover() {
    PatchEngine engine(vm_, kernel_, stacks_, store_);
    return engine.Recover();
  }

  std::vector<std::string> Names() const {
    std::vector<std::string> out;
    for (const auto& p : store_.saved.patches) out.push_back(p.name + ":" + std::string(PatchStateName(p.state)));
    return out;
  }
  std::vector<std::string> Owners() const {
    auto layout = ArenaLayout::Deserialize(store_.saved.arena.layout);
    std::vector<std::string> out;
    if (layout.ok()) {
      for (const auto& a : layout->allocations()) out.push_back(a.owner);
    }
    return out;
  }

  FakeVm vm_;
  FakeKernel kernel_;
  NoStacks stacks_;
  MemoryStore store_;
};

TEST_F(ReplaceRecoveryTest, EveryWriteDoneIsFinished) {
  Guest(Jmp(5), kNop);
  auto notes = Recover();
  ASSERT_THAT(notes, IsOk());
  EXPECT_THAT(*notes, ElementsAre("recovered patch 'hvp_replace' interrupted while applying: fully applied "
                                  "(replaced 'hvp_two')"));
  EXPECT_THAT(Names(), ElementsAre("hvp_replace:applied"));
  EXPECT_THAT(store_.saved.patches[0].replaces, ElementsAre("hvp_two"));
  EXPECT_THAT(Owners(), ElementsAre("hvp_replace"));  // hvp_two's pages freed
  EXPECT_EQ(vm_.PeekVirt(kCmdline, 5), Jmp(5));
  EXPECT_EQ(vm_.PeekVirt(kVersion, 5), kNop);
}

TEST_F(ReplaceRecoveryTest, KilledAfterTheNewTrampolineIsUndoneToTheReplacedPatch) {
  Guest(Jmp(5), Jmp(2));  // version not restored yet
  auto notes = Recover();
  ASSERT_THAT(notes, IsOk());
  EXPECT_THAT(*notes, ElementsAre("recovered patch 'hvp_replace' interrupted while applying: fully reverted "
                                  "('hvp_two' kept)"));
  EXPECT_THAT(Names(), ElementsAre("hvp_two:applied"));
  EXPECT_THAT(Owners(), ElementsAre("hvp_two"));
  EXPECT_EQ(vm_.PeekVirt(kCmdline, 5), Jmp(1)) << "hvp_two's jump, not the kernel's nop";
  EXPECT_EQ(vm_.PeekVirt(kVersion, 5), Jmp(2));
}

TEST_F(ReplaceRecoveryTest, ARestoreWithoutTheNewTrampolineIsUndoneToo) {
  Guest(Jmp(1), kNop);
  auto notes = Recover();
  ASSERT_THAT(notes, IsOk());
  EXPECT_THAT(Names(), ElementsAre("hvp_two:applied"));
  EXPECT_EQ(vm_.PeekVirt(kCmdline, 5), Jmp(1));
  EXPECT_EQ(vm_.PeekVirt(kVersion, 5), Jmp(2));
}

TEST_F(ReplaceRecoveryTest, KilledBeforeAnyWriteLeavesTheReplacedPatch) {
  Guest(Jmp(1), Jmp(2));
  auto notes = Recover();
  ASSERT_THAT(notes, IsOk());
  EXPECT_THAT(Names(), ElementsAre("hvp_two:applied"));
  EXPECT_EQ(vm_.PeekVirt(kCmdline, 5), Jmp(1));
  EXPECT_EQ(vm_.PeekVirt(kVersion, 5), Jmp(2));
  // And a second recovery has nothing left to do.
  auto again = Recover();
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->empty());
}

TEST_F(ReplaceRecoveryTest, RevertOfAReplacedPatchNamesTheOneThatReplacedIt) {
  Guest(Jmp(5), kNop);
  ASSERT_THAT(Recover(), IsOk());
  PatchEngine engine(vm_, kernel_, stacks_, store_);
  EXPECT_THAT(engine.Revert({"hvp_two", {1, std::chrono::milliseconds(0)}}),
              StatusIs(Code::kNotFound, HasSubstr("patch 'hvp_two' was replaced by 'hvp_replace' (atomic replace)")));
  // Reverting the replacing patch gives the kernel's code back everywhere.
  auto reverted = engine.Revert({"hvp_replace", {1, std::chrono::milliseconds(0)}});
  ASSERT_THAT(reverted, IsOk());
  EXPECT_EQ(vm_.PeekVirt(kCmdline, 5), kNop);
  EXPECT_EQ(vm_.PeekVirt(kVersion, 5), kNop);
  EXPECT_TRUE(store_.saved.patches.empty());
}

}  // namespace
}  // namespace hv::patcher
