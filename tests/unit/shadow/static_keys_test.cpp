#include "patcher/static_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "fake_kernel_words.h"
#include "patch/fake_resolver.h"
#include "patch/patch_files.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::hv::StatusIs;
using ::testing::HasSubstr;

constexpr std::uint64_t kText = 0xffffffff81000000ull, kEnd = 0xffffffff83000000ull;
constexpr std::uint64_t kRfsNeeded = 0xffffffff82a4c120ull;

StaticKeyLayout TestLayout() {
  StaticKeyLayout l;
  l.key_enabled = 0, l.key_type = 8;
  l.node_size = 24, l.node_next = 0, l.node_entries = 8, l.node_mod = 16;
  l.jump_entries = 0x100, l.num_jump_entries = 0x108;
  l.mutex_owner = 0;
  l.vmlinux_begin = kText, l.vmlinux_end = kEnd;
  return l;
}

// hvp_static_key.ko (images/patches): two sites on rfs_needed in hvp_static_key_cmdline_show,
// as kbuild + objtool (jump label hack) built them: +0x5 `66 90` (static_branch_unlikely,
// branch 0, target +0x2a) and +0xe `eb 23` (static_branch_likely, branch 1, target +0x33).
class JumpTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::uint8_t> ko;
    ASSERT_TRUE(testing::ReadPatchFile("hvp_static_key.ko", &ko));
    auto m = PatchModule::Load(ko, "hvp_static_key.ko");
    ASSERT_TRUE(m.ok()) << m.status().message();
    module_.emplace(std::move(*m));
    auto image = SelectImage(*module_, {.shadow_module = true});
    ASSERT_TRUE(image.ok()) << image.status().message();
    image_ = *image;
    resolver_.Add("__x86_return_thunk", 0xffffffff81e00000ull)
        .Add("seq_printf", 0xffffffff81234560ull)
        .Add("rfs_needed", kRfsNeeded);
    auto linked = Link(*module_, image_, resolver_, base_);
    ASSERT_TRUE(linked.ok()) << linked.status().message();
    linked_ = *linked;
    fn_ = linked_.functions.at(0).new_va;
  }

  std::vector<std::uint8_t> At(std::uint64_t va, std::size_t n) {
    const auto& code = linked_.bytes[0];
    const std::uint64_t off = va - linked_.base[0];
    return {code.begin() + static_cast<long>(off), code.begin() + static_cast<long>(off + n)};
  }
  // Entry i of the finished table: absolute code, target, key word.
  struct Entry {
    std::uint64_t code, target, key;
  };
  Entry EntryAt(const JumpTable& t, std::size_t i) {
    const auto& data = linked_.bytes[2];
    const std::uint64_t at = t.va + 16 * i;
    const std::uint8_t* p = data.data() + (at - linked_.base[2]);
    std::int32_t code, target;
    std::int64_t key;
    std::memcpy(&code, p, 4);
    std::memcpy(&target, p + 4, 4);
    std::memcpy(&key, p + 8, 8);
    return {at + static_cast<std::uint64_t>(static_cast<std::int64_t>(code)),
            at + 4 + static_cast<std::uint64_t>(static_cast<std::int64_t>(target)),
            at + 8 + static_cast<std::uint64_t>(key)};
  }

  std::optional<PatchModule> module_;
  PatchImage image_;
  LinkedPatch linked_;
  testing::FakeResolver resolver_;
  std::uint64_t fn_ = 0;
  std::array<std::uint64_t, kMemoryClasses> base_ = {0xffffffff86201000ull, 0xffffffff86202000ull, 0xffffffff86203000ull};
};

TEST_F(JumpTableTest, RefusedWithoutAShadowModuleAndPlacedInDataWithOne) {
  EXPECT_THAT(SelectImage(*module_),
              StatusIs(Code::kUnimplemented, HasSubstr("needs section '__jump_table' (static keys): not supported")));
  bool placed = false;
  for (const auto& p : image_.sections) {
    if (module_->sections()[p.section].name == "__jump_table") placed = p.memory == MemoryClass::kData;
  }
  EXPECT_TRUE(placed);
  EXPECT_EQ(JumpEntryCount(*module_), 2u);
}

TEST_F(JumpTableTest, KeyOffLeavesTheSitesAsBuiltAndClearsTheInitBit) {
  ASSERT_EQ(At(fn_ + 5, 2), (std::vector<std::uint8_t>{0x66, 0x90}));
  ASSERT_EQ(At(fn_ + 0xe, 2), (std::vector<std::uint8_t>{0xeb, 0x23}));
  std::vector<std::uint64_t> asked;
  auto t = FinishJumpTable(*module_, image_, linked_, TestLayout(), [&](std::uint64_t key) -> Result<std::int32_t> {
    asked.push_back(key);
    return 0;
  });
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(asked, std::vector<std::uint64_t>{kRfsNeeded});  // once per key
  EXPECT_EQ(t->count, 2u);
  EXPECT_EQ(t->keys, std::vector<std::uint64_t>{kRfsNeeded});
  EXPECT_EQ(t->enabled, std::vector<bool>{false});
  EXPECT_EQ(t->first, std::vector<std::uint64_t>{t->va});
  // Sorted by key, then code; the key word keeps the branch bit, loses objtool's bit 1 (init).
  const Entry a = EntryAt(*t, 0), b = EntryAt(*t, 1);
  EXPECT_EQ(a.code, fn_ + 5);
  EXPECT_EQ(a.target, fn_ + 0x2a);
  EXPECT_EQ(a.key, kRfsNeeded);
  EXPECT_EQ(b.code, fn_ + 0xe);
  EXPECT_EQ(b.target, fn_ + 0x33);
  EXPECT_EQ(b.key, kRfsNeeded | 1);
  EXPECT_EQ(At(fn_ + 5, 2), (std::vector<std::uint8_t>{0x66, 0x90}));
  EXPECT_EQ(At(fn_ + 0xe, 2), (std::vector<std::uint8_t>{0xeb, 0x23}));
}

TEST_F(JumpTableTest, KeyOnWritesTheSitesInItsState) {
  // -1 (a first enable in progress) counts as on, as static_key_count() says.
  auto t = FinishJumpTable(*module_, image_, linked_, TestLayout(), [](std::uint64_t) -> Result<std::int32_t> { return -1; });
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->enabled, std::vector<bool>{true});
  EXPECT_EQ(At(fn_ + 5, 2), (std::vector<std::uint8_t>{0xeb, 0x23}));  // jmp to +0x2a
  EXPECT_EQ(At(fn_ + 0xe, 2), (std::vector<std::uint8_t>{0x66, 0x90}));
}

TEST_F(JumpTableTest, KeyOutsideVmlinuxIsRefused) {
  StaticKeyLayout l = TestLayout();
  l.vmlinux_end = kRfsNeeded;
  EXPECT_THAT(FinishJumpTable(*module_, image_, linked_, l, [](std::uint64_t) -> Result<std::int32_t> { return 0; }),
              StatusIs(Code::kUnimplemented, HasSubstr("which is not vmlinux's")));
}

TEST_F(JumpTableTest, ASiteThatIsNeitherNopNorJumpIsRefused) {
  linked_.bytes[0][fn_ + 5 - linked_.base[0]] = 0x90;
  EXPECT_THAT(FinishJumpTable(*module_, image_, linked_, TestLayout(), [](std::uint64_t) -> Result<std::int32_t> { return 0; }),
              StatusIs(Code::kInvalidArgument, HasSubstr("holds neither a nop nor a jmp")));
}

TEST(StaticCallSites, AreLeftToTheTrampolines) {
  std::vector<std::uint8_t> ko;
  ASSERT_TRUE(testing::ReadPatchFile("hvp_static_call.ko", &ko));
  auto m = PatchModule::Load(ko, "hvp_static_call.ko");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m, {.shadow_module = true});
  ASSERT_THAT(image, IsOk());
  for (const auto& p : image->sections) EXPECT_NE(m->sections()[p.section].name, ".static_call_sites");
}

// Fake kernel memory: a key, the shadow module (jump_entries), its node area, guest nodes.
class KeyLinkTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kBase = 0xffffffff82000000ull;
  static constexpr std::uint64_t kKey = kBase + 0x100;
  static constexpr std::uint64_t kKeyEntries = kBase + 0x2000;  // vmlinux's entries for the key
  static constexpr std::uint64_t kMutex = kBase + 0x200;
  static constexpr std::uint64_t kModule = kBase + 0x1000;
  static constexpr std::uint64_t kTable = kBase + 0x3000;  // our sorted entries
  static constexpr std::uint64_t kNodes = kBase + 0x4000;
  static constexpr std::uint64_t kGuest = kBase + 0x5000;  // guest-allocated nodes

  KeyLinkTest() : mem_(kBase, 0x10000), l_(TestLayout()) {
    l_.jump_label_mutex = kMutex;
    l_.vmlinux_begin = kBase;
    l_.vmlinux_end = kBase + 0x10000;
    mem_.Set64(kKey + l_.key_type, kKeyEntries | 1);  // DEFINE_STATIC_KEY_TRUE-style type bit
    Set32(kKey + l_.key_enabled, 1);
    mem_.Set64(kModule + l_.jump_entries, kTable);
    Set32(kModule + l_.num_jump_entries, 2);
    for (int i = 0; i < 2; ++i) mem_.Set64(kTable + 16 * i + 8, kKey - (kTable + 16 * i + 8) + static_cast<std::uint64_t>(i));
  }
  void Set32(std::uint64_t va, std::uint32_t v) {
    std::uint8_t b[4];
    std::memcpy(b, &v, 4);
    ASSERT_THAT(mem_.Write(va, b), IsOk());
  }
  void Node(std::uint64_t at, std::uint64_t next, std::uint64_t entries, std::uint64_t mod) {
    mem_.Set64(at + l_.node_next, next);
    mem_.Set64(at + l_.node_entries, entries);
    mem_.Set64(at + l_.node_mod, mod);
  }
  StaticKeyState Key() {
    auto s = ReadStaticKey(mem_, l_, kKey);
    EXPECT_THAT(s, IsOk());
    return s.ok() ? *s : StaticKeyState{};
  }
  // The guest loads a module that uses the key: its node goes first (jump_label_add_module).
  void GuestJoins(std::uint64_t node, std::uint64_t mod) {
    const std::uint64_t type = mem_.Get64(kKey + l_.key_type);
    Node(node, type & ~std::uint64_t{3}, kBase + 0x6000, mod);
    mem_.Set64(kKey + l_.key_type, node | (type & 3));
  }
  // The guest unloads it: jump_label_del_module(), including the fold of a lone node.
  void GuestLeaves(std::uint64_t node) {
    const std::uint64_t type = mem_.Get64(kKey + l_.key_type);
    ASSERT_EQ(type & ~std::uint64_t{3}, node) << "the test's guest node is first";
    const std::uint64_t next = mem_.Get64(node + l_.node_next);
    mem_.Set64(kKey + l_.key_type, next | (type & 3));
    if (mem_.Get64(next + l_.node_next) == 0) {
      freed_.push_back(next);
      mem_.Set64(kKey + l_.key_type, mem_.Get64(next + l_.node_entries) | (type & 1));
    }
  }

  hv::testing::FakeKernelWords mem_;
  StaticKeyLayout l_;
  std::vector<std::uint64_t> freed_;  // nodes the guest would kfree() in a fold
};

TEST_F(KeyLinkTest, AnUnlinkedKeyGetsOurNodeAndVmlinuxsAndIsFoldedBackAtUnlink) {
  const StaticKeyState before = Key();
  ASSERT_THAT(LinkStaticKeys(mem_, l_, kModule, kNodes, {true}), IsOk());
  const StaticKeyState linked = Key();
  EXPECT_EQ(linked.type, kNodes | 2 | 1);
  EXPECT_EQ(linked.nodes, (std::vector<std::uint64_t>{kNodes, kNodes + 24}));
  EXPECT_EQ(linked.node_entries, (std::vector<std::uint64_t>{kTable, kKeyEntries}));
  EXPECT_EQ(linked.node_mods, (std::vector<std::uint64_t>{kModule, 0}));
  bool keep = true;
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep), IsOk());
  EXPECT_FALSE(keep);
  EXPECT_EQ(Key(), before);
}

TEST_F(KeyLinkTest, HeldMutexOrASwitchedKeyIsBusy) {
  mem_.Set64(kMutex, 0xffff888001234500ull);
  hv::testing::FakeKernelWords copy = mem_;
  StagedKernelWords staged(copy);
  EXPECT_THAT(LinkStaticKeys(staged, l_, kModule, kNodes, {true}), StatusIs(Code::kBusy, HasSubstr("jump_label_mutex")));
  mem_.Set64(kMutex, 0);
  EXPECT_THAT(LinkStaticKeys(mem_, l_, kModule, kNodes, {false}),
              StatusIs(Code::kBusy, HasSubstr("was switched on after the patch was planned")));
}

TEST_F(KeyLinkTest, ALinkedKeyGetsOurNodeOnlyAndLosesItAtUnlink) {
  // Linked already by a guest module: [guest module, guest's vmlinux node].
  Node(kGuest + 0x40, 0, kKeyEntries, 0);
  mem_.Set64(kKey + l_.key_type, (kGuest + 0x40) | 2 | 1);
  GuestJoins(kGuest, 0xffffffffc0001000ull);
  const StaticKeyState before = Key();
  ASSERT_THAT(LinkStaticKeys(mem_, l_, kModule, kNodes, {true}), IsOk());
  EXPECT_EQ(Key().nodes, (std::vector<std::uint64_t>{kNodes, kGuest, kGuest + 0x40}));
  bool keep = true;
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep), IsOk());
  EXPECT_FALSE(keep);
  EXPECT_EQ(Key(), before);
}

TEST_F(KeyLinkTest, AGuestVmlinuxNodeLeftAloneIsFoldedAsTheKernelWould) {
  Node(kGuest + 0x40, 0, kKeyEntries, 0);
  mem_.Set64(kKey + l_.key_type, (kGuest + 0x40) | 2 | 1);
  GuestJoins(kGuest, 0xffffffffc0001000ull);
  ASSERT_THAT(LinkStaticKeys(mem_, l_, kModule, kNodes, {true}), IsOk());
  // The guest module leaves while we are linked: two nodes stay, no fold.
  const std::uint64_t type = mem_.Get64(kKey + l_.key_type);
  mem_.Set64(kNodes + l_.node_next, kGuest + 0x40);  // unlinked from the middle
  EXPECT_EQ(type & ~std::uint64_t{3}, kNodes);
  bool keep = true;
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep), IsOk());
  EXPECT_FALSE(keep);
  EXPECT_EQ(mem_.Get64(kKey + l_.key_type), kKeyEntries | 1) << "entries restored, LINKED cleared";
}

TEST_F(KeyLinkTest, AGuestNodeBesideOursLeavesATombstoneTheGuestNeverFrees) {
  ASSERT_THAT(LinkStaticKeys(mem_, l_, kModule, kNodes, {true}), IsOk());
  GuestJoins(kGuest, 0xffffffffc0001000ull);
  bool keep = false;
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep), IsOk());
  EXPECT_TRUE(keep);
  StaticKeyState s = Key();
  EXPECT_EQ(s.nodes, (std::vector<std::uint64_t>{kGuest, kNodes, kNodes + 24}));
  EXPECT_EQ(s.node_entries[1], 0u) << "inert";
  EXPECT_EQ(s.node_mods[1], kModule);
  // The guest module unloads: two of ours are left, nothing is folded or freed.
  GuestLeaves(kGuest);
  EXPECT_TRUE(freed_.empty());
  EXPECT_EQ(Key().nodes, (std::vector<std::uint64_t>{kNodes, kNodes + 24}));
  // A later patch links beside the tombstone and unlinks without touching it.
  const std::uint64_t module2 = kBase + 0x1800, nodes2 = kBase + 0x4800;
  mem_.Set64(module2 + l_.jump_entries, kTable);
  Set32(module2 + l_.num_jump_entries, 2);
  const StaticKeyState tomb = Key();
  ASSERT_THAT(LinkStaticKeys(mem_, l_, module2, nodes2, {true}), IsOk());
  EXPECT_EQ(Key().nodes.size(), 3u);
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, module2, nodes2, &keep), IsOk());
  EXPECT_FALSE(keep);
  EXPECT_EQ(Key(), tomb);
  // Unlinking the tombstoned module again changes nothing.
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep), IsOk());
  EXPECT_EQ(Key(), tomb);
}

TEST_F(KeyLinkTest, UnlinkLeavesKeysWithoutOurNodeAlone) {
  bool keep = true;
  const StaticKeyState unlinked = Key();
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep), IsOk());
  EXPECT_FALSE(keep);
  EXPECT_EQ(Key(), unlinked);
  Node(kGuest + 0x40, 0, kKeyEntries, 0);
  mem_.Set64(kKey + l_.key_type, (kGuest + 0x40) | 2 | 1);
  GuestJoins(kGuest, 0xffffffffc0001000ull);
  const StaticKeyState linked = Key();
  ASSERT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep), IsOk());
  EXPECT_EQ(Key(), linked);
  // Our node's address naming another module: corrupt.
  Node(kNodes, kGuest, kTable, 0xffffffffc0002000ull);
  mem_.Set64(kKey + l_.key_type, kNodes | 2 | 1);
  EXPECT_THAT(UnlinkStaticKeys(mem_, l_, kModule, kNodes, &keep),
              StatusIs(Code::kFailedPrecondition, HasSubstr("for module 0xffffffffc0002000")));
}

}  // namespace
}  // namespace hv::patcher
