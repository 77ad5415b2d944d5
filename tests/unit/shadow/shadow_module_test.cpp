#include "patcher/shadow_module.h"

#include <elf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "fake_kernel_words.h"
#include "patch/fake_resolver.h"
#include "patch/patch_files.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::hv::testing::FakeKernelWords;
using ::hv::StatusIs;
using ::testing::HasSubstr;

// A synthetic x86-64 layout (the real one comes from the guest's BTF; see the integration test).
ShadowModuleLayout TestLayout() {
  ShadowModuleLayout l;
  l.module_size = 0x380;
  l.state = 0, l.list = 8, l.name = 24, l.name_size = 56, l.taints = 0x50, l.klp = 0x58;
  l.core_layout = 0x100, l.init_layout = 0x160;
  l.kallsyms = 0x1c0, l.core_kallsyms = 0x1c8;
  l.num_bugs = 0x1f8, l.bug_list = 0x200, l.bug_table = 0x210;
  l.num_exentries = 0x218, l.extable = 0x220;
  l.source_list = 0x300, l.target_list = 0x310, l.refcnt = 0x328;
  l.layout_base = 0, l.layout_size = 8, l.layout_text_size = 12, l.layout_ro_size = 16;
  l.layout_ro_after_init_size = 20, l.layout_mtn_mod = 24, l.layout_mtn_node = 32;
  l.ks_symtab = 0, l.ks_num_symtab = 8, l.ks_strtab = 16, l.ks_typetab = 24;
  l.use_size = 48, l.use_source_list = 0, l.use_target_list = 16, l.use_source = 32, l.use_target = 40;
  l.rb = {0, 8, 16};
  l.rb_node_size = 24;
  l.latch_seq = 0, l.latch_tree = 8;
  l.tree_root = 0, l.addr_min = 24, l.addr_max = 32;
  l.mutex_owner = 0;
  return l;
}

constexpr std::uint64_t kBase = 0xffffffff80000000ull;
constexpr std::uint64_t kModules = kBase + 0x1000;
constexpr std::uint64_t kModTree = kBase + 0x1100;
constexpr std::uint64_t kBugList = kBase + 0x1200;
constexpr std::uint64_t kMutex = kBase + 0x1300;
// Modules (struct module + tables) at kBase + 0x10000 * (i + 1).
std::uint64_t ModuleVa(int i) { return kBase + 0x10000ull * static_cast<std::uint64_t>(i + 1); }

class ShadowLinkTest : public ::testing::Test {
 protected:
  ShadowLinkTest() : mem_(kBase, 0x100000), l_(TestLayout()) {
    l_.modules = kModules, l_.mod_tree = kModTree, l_.module_bug_list = kBugList, l_.module_mutex = kMutex;
    for (std::uint64_t head : {kModules, kBugList}) {
      mem_.Set64(head, head);
      mem_.Set64(head + 8, head);
    }
    mem_.Set64(kModTree + l_.addr_min, ~0ull);  // mod_tree's initial bounds
    mem_.Set64(kModTree + l_.addr_max, 0);
  }

  // A module as BuildShadowModule leaves it: core_layout and the tables header it links by.
  void MakeModule(int i, std::uint64_t code_base, std::uint32_t code_size) {
    const std::uint64_t mod = ModuleVa(i);
    const std::uint64_t tables = mod + 0x1000;
    mem_.Set64(mod + l_.core_layout + l_.layout_base, code_base);
    mem_.Set64(mod + l_.core_layout + l_.layout_size, code_size);
    mem_.Set64(mod + l_.source_list, tables + kShadowHeaderSize + l_.use_source_list);
    std::uint64_t magic;
    std::memcpy(&magic, kShadowMagic, 8);
    mem_.Set64(tables, magic);
  }

  ModuleStructures Read() {
    auto s = ReadModuleStructures(mem_, l_);
    EXPECT_TRUE(s.ok()) << s.status().message();
    return s.ok() ? *s : ModuleStructures{};
  }

  FakeKernelWords mem_;
  ShadowModuleLayout l_;
};

TEST_F(ShadowLinkTest, LinkPutsTheModuleWhereALoadWouldAndUnlinkRestoresEverything) {
  // Five loaded modules in the module area, in load order.
  const std::uint64_t area = 0xffffffffc0000000ull;
  const std::uint64_t bases[] = {area + 0x5000, area + 0x1000, area + 0x9000, area + 0x3000, area + 0x7000};
  for (int i = 0; i < 5; ++i) {
    MakeModule(i, bases[i], 0x1000);
    ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(i)).ok());
  }
  const ModuleStructures before = Read();
  ASSERT_EQ(before.modules.size(), 5u);
  EXPECT_EQ(before.modules.front(), ModuleVa(4));  // list_add_rcu: newest first
  EXPECT_EQ(before.addr_min, area + 0x1000);
  EXPECT_EQ(before.addr_max, area + 0xa000);
  const std::uint32_t seq_before = static_cast<std::uint32_t>(mem_.Get64(kModTree + l_.latch_seq));
  EXPECT_EQ(seq_before, 10u);  // two bumps per insert

  // The patch's code sits in the arena, below the module area.
  const std::uint64_t code = 0xffffffff86200000ull;
  MakeModule(5, code, 0x2000);
  ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(5)).ok());
  const ModuleStructures linked = Read();
  EXPECT_EQ(linked.modules.front(), ModuleVa(5));
  EXPECT_EQ(linked.bug_modules.front(), ModuleVa(5));
  EXPECT_EQ(linked.addr_min, code);
  EXPECT_EQ(linked.addr_max, area + 0xa000);
  for (int idx = 0; idx < 2; ++idx) {
    ASSERT_EQ(linked.tree[idx].size(), 6u);
    // Lowest base first: the shadow module's node of this copy.
    EXPECT_EQ(linked.tree[idx].front(), ModuleVa(5) + l_.core_layout + l_.layout_mtn_node + 24u * idx);
  }
  auto found = FindLinkedModule(mem_, l_, ModuleVa(5), ModuleVa(5) + 0x2000);
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(*found, ModuleVa(5));

  ASSERT_TRUE(UnlinkShadowModule(mem_, l_, ModuleVa(5)).ok());
  EXPECT_EQ(Read(), before);
  EXPECT_EQ(mem_.Get64(kModTree + l_.latch_seq) & 0xffffffff, seq_before + 4u);
  found = FindLinkedModule(mem_, l_, ModuleVa(5), ModuleVa(5) + 0x2000);
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(*found, 0u);
}

TEST_F(ShadowLinkTest, UnlinkKeepsBoundsThatALaterLoadMoved) {
  MakeModule(0, 0xffffffff86200000ull, 0x1000);
  ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(0)).ok());
  EXPECT_EQ(mem_.Get64(kModTree + l_.addr_max), 0xffffffff86201000ull);
  MakeModule(1, 0xffffffffc0001000ull, 0x1000);  // a module loaded after the patch
  ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(1)).ok());
  ASSERT_TRUE(UnlinkShadowModule(mem_, l_, ModuleVa(0)).ok());
  // hvpatch lowered it first: put back, but not past the later module, which stays covered.
  EXPECT_EQ(mem_.Get64(kModTree + l_.addr_min), 0xffffffffc0001000ull);
  EXPECT_EQ(mem_.Get64(kModTree + l_.addr_max), 0xffffffffc0002000ull);  // the later load's
  EXPECT_EQ(Read().modules, std::vector<std::uint64_t>{ModuleVa(1)});
}

// Two patches in the arena, the first one lower. Unlinking the first (a revert out of order, or
// an atomic replace unlinking the module it replaces after linking its own) must leave the
// second covered, and the second's unlink then puts back the kernel's own bounds.
TEST_F(ShadowLinkTest, UnlinkOfALowerPatchKeepsAHigherOneCoveredInEitherOrder) {
  const std::uint64_t area = 0xffffffffc0000000ull;
  MakeModule(0, area + 0x4000, 0x1000);  // the kernel's own module
  ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(0)).ok());
  const ModuleStructures kernel_only = Read();
  const std::uint64_t a = 0xffffffff86200000ull, b = 0xffffffff86203000ull;
  for (bool lower_first : {true, false}) {
    SCOPED_TRACE(lower_first ? "lower one unlinked first" : "higher one unlinked first");
    MakeModule(1, a, 0x2000);
    MakeModule(2, b, 0x1000);
    ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(1)).ok());
    ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(2)).ok());
    EXPECT_EQ(mem_.Get64(kModTree + l_.addr_min), a);
    ASSERT_TRUE(UnlinkShadowModule(mem_, l_, ModuleVa(lower_first ? 1 : 2)).ok());
    EXPECT_EQ(mem_.Get64(kModTree + l_.addr_min), lower_first ? b : a) << "the one still linked is covered";
    ASSERT_TRUE(UnlinkShadowModule(mem_, l_, ModuleVa(lower_first ? 2 : 1)).ok());
    const ModuleStructures after = Read();
    EXPECT_EQ(after.addr_min, kernel_only.addr_min);
    EXPECT_EQ(after.addr_max, kernel_only.addr_max);
    EXPECT_EQ(after.modules, kernel_only.modules);
  }
}

TEST_F(ShadowLinkTest, HeldModuleMutexIsBusyAndStagesNothing) {
  MakeModule(0, 0xffffffff86200000ull, 0x1000);
  mem_.Set64(kMutex + l_.mutex_owner, 0xffff888004a1c000ull);
  StagedKernelWords staged(mem_);
  EXPECT_THAT(LinkShadowModule(staged, l_, ModuleVa(0)), StatusIs(Code::kBusy, HasSubstr("module_mutex")));
  EXPECT_TRUE(staged.writes().empty());
}

TEST_F(ShadowLinkTest, DoubleLinkAndUnlinkOfAnUnlinkedModuleAreRefused) {
  MakeModule(0, 0xffffffff86200000ull, 0x1000);
  ASSERT_TRUE(LinkShadowModule(mem_, l_, ModuleVa(0)).ok());
  EXPECT_THAT(LinkShadowModule(mem_, l_, ModuleVa(0)), StatusIs(Code::kFailedPrecondition, HasSubstr("already linked")));
  MakeModule(1, 0xffffffff86300000ull, 0x1000);
  mem_.Set64(ModuleVa(1) + l_.list, ModuleVa(1) + l_.list);
  mem_.Set64(ModuleVa(1) + l_.list + 8, ModuleVa(1) + l_.list);
  // A self-pointing list head looks linked to list_del's neighbour check, so point it elsewhere.
  mem_.Set64(ModuleVa(1) + l_.list, kModules);
  EXPECT_THAT(UnlinkShadowModule(mem_, l_, ModuleVa(1)), StatusIs(Code::kNotFound, HasSubstr("not linked")));
}

TEST_F(ShadowLinkTest, AModuleWithoutTheHeaderIsNotOurs) {
  mem_.Set64(ModuleVa(0) + l_.source_list, ModuleVa(0) + 0x1000 + kShadowHeaderSize);
  EXPECT_THAT(LinkShadowModule(mem_, l_, ModuleVa(0)),
              StatusIs(Code::kFailedPrecondition, HasSubstr("not an hvpatch shadow module")));
}

TEST_F(ShadowLinkTest, CorruptModuleListIsRefused) {
  MakeModule(0, 0xffffffff86200000ull, 0x1000);
  mem_.Set64(kModules, kBase + 0x3000);  // first entry does not point back to the head
  mem_.Set64(kBase + 0x3000, kModules);
  mem_.Set64(kBase + 0x3008, kBase + 0x4000);
  EXPECT_THAT(LinkShadowModule(mem_, l_, ModuleVa(0)),
              StatusIs(Code::kFailedPrecondition, HasSubstr("the module list at 0xffffffff80001000 is corrupt")));
}

// The struct module and tables built from the real kbuild-built test patch.
TEST(ShadowModuleBuild, StructModuleAndKallsymsFromTheTestPatch) {
  std::vector<std::uint8_t> ko;
  ASSERT_TRUE(testing::ReadPatchFile("hvp_this_module.ko", &ko));
  auto m = PatchModule::Load(ko, "hvp_this_module.ko");
  ASSERT_TRUE(m.ok()) << m.status().message();
  auto image = SelectImage(*m, {.shadow_module = true});
  ASSERT_TRUE(image.ok()) << image.status().message();
  ASSERT_TRUE(image->this_module.has_value());
  testing::FakeResolver resolver;
  resolver.Add("module_refcount", 0xffffffff81100000ull).Add("seq_printf", 0xffffffff81200000ull)
      .Add("__x86_return_thunk", 0xffffffff81e00000ull);
  const std::array<std::uint64_t, kMemoryClasses> base = {0xffffffff86201000ull, 0xffffffff86202000ull,
                                                          0xffffffff86203000ull};
  auto linked = Link(*m, *image, resolver, base);
  ASSERT_TRUE(linked.ok()) << linked.status().message();
  ShadowModuleLayout l = TestLayout();
  const PlacedSection* tm = image->Find(*image->this_module);
  ASSERT_NE(tm, nullptr);
  ShadowPlacement at{base[2] + tm->offset, base[2] + 0x400, base[0], 0x1000};
  auto shadow = BuildShadowModule(l, *m, *image, *linked, at);
  ASSERT_TRUE(shadow.ok()) << shadow.status().message();
  const auto& mod = shadow->module;
  ASSERT_EQ(mod.size(), 0x380u);
  EXPECT_STREQ(reinterpret_cast<const char*>(mod.data() + l.name), "hvp_this_module");
  std::uint32_t refcnt, size;
  std::memcpy(&refcnt, mod.data() + l.refcnt, 4);
  EXPECT_EQ(refcnt, 2u);  // MODULE_REF_BASE + the reference livepatch would hold
  std::memcpy(&size, mod.data() + l.core_layout + l.layout_text_size, 4);
  EXPECT_EQ(size, 0x1000u);
  std::uint64_t kallsyms, symtab, strtab, typetab;
  std::memcpy(&kallsyms, mod.data() + l.kallsyms, 8);
  EXPECT_EQ(kallsyms, at.module_va + l.core_kallsyms);
  std::memcpy(&symtab, mod.data() + l.core_kallsyms + l.ks_symtab, 8);
  std::memcpy(&strtab, mod.data() + l.core_kallsyms + l.ks_strtab, 8);
  std::memcpy(&typetab, mod.data() + l.core_kallsyms + l.ks_typetab, 8);
  std::uint32_t n;
  std::memcpy(&n, mod.data() + l.core_kallsyms + l.ks_num_symtab, 4);
  ASSERT_EQ(n, shadow->symbols + 1);
  // The new function is in the symbol table, at its arena address, type 't'.
  const auto& tb = shadow->tables;
  bool found = false;
  for (std::uint32_t i = 1; i < n; ++i) {
    Elf64_Sym e;
    std::memcpy(&e, tb.data() + (symtab - at.tables_va) + i * sizeof(e), sizeof(e));
    const char* name = reinterpret_cast<const char*>(tb.data() + (strtab - at.tables_va) + e.st_name);
    EXPECT_NE(std::string(name), "hvp_this_module_init") << "init code is never copied";
    EXPECT_NE(e.st_shndx, SHN_UNDEF);
    if (std::string(name) == "hvp_this_module_cmdline_show") {
      found = true;
      EXPECT_EQ(e.st_value, linked->functions[0].new_va);
      EXPECT_EQ(tb[(typetab - at.tables_va) + i], 't');
    }
  }
  EXPECT_TRUE(found);

  // ORC: the entries of the copied code, sorted, one at the new function's first byte.
  l.num_orcs = 0x230, l.orc_unwind_ip = 0x238, l.orc_unwind = 0x240;
  shadow = BuildShadowModule(l, *m, *image, *linked, at);
  ASSERT_TRUE(shadow.ok());
  std::uint32_t orcs;
  std::uint64_t orc_ip, orc;
  std::memcpy(&orcs, shadow->module.data() + l.num_orcs, 4);
  std::memcpy(&orc_ip, shadow->module.data() + l.orc_unwind_ip, 8);
  std::memcpy(&orc, shadow->module.data() + l.orc_unwind, 8);
  ASSERT_EQ(orcs, shadow->orcs);
  ASSERT_GE(orcs, 2u);
  EXPECT_EQ(orc, orc_ip + 4 * orcs);
  std::vector<std::uint64_t> ips;
  for (std::uint32_t i = 0; i < orcs; ++i) {
    std::int32_t rel;
    std::memcpy(&rel, shadow->tables.data() + (orc_ip - at.tables_va) + 4 * i, 4);
    ips.push_back(orc_ip + 4 * i + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel)));
  }
  EXPECT_TRUE(std::is_sorted(ips.begin(), ips.end()));
  EXPECT_NE(std::find(ips.begin(), ips.end(), linked->functions[0].new_va), ips.end());
  for (std::uint64_t ip : ips) {
    EXPECT_GE(ip, base[0]);
    EXPECT_LE(ip, base[0] + 0x1000);
  }

  l.module_size = 0x3c0;  // a guest whose struct module differs from the headers' one
  EXPECT_THAT(BuildShadowModule(l, *m, *image, *linked, at),
              StatusIs(Code::kFailedPrecondition, HasSubstr("its struct module is 896 bytes, the guest's is 960")));
}

TEST(ShadowModuleBuild, WithoutShadowTHIS_MODULEIsStillRefused) {
  std::vector<std::uint8_t> ko;
  ASSERT_TRUE(testing::ReadPatchFile("hvp_this_module.ko", &ko));
  auto m = PatchModule::Load(ko, "hvp_this_module.ko");
  ASSERT_TRUE(m.ok());
  EXPECT_THAT(SelectImage(*m), StatusIs(Code::kUnimplemented, HasSubstr("'.gnu.linkonce.this_module'")));
}

}  // namespace
}  // namespace hv::patcher

namespace hv::patcher {
namespace {

// The shadow module links its jump entries to their keys after the lists, unlinks them first,
// and a tombstone left at the unlink is found again from the module's own bytes (what decides
// that its data is never freed, also in a crash recovery that finds the module unlinked).
TEST_F(ShadowLinkTest, StaticKeysAreLinkedWithTheModuleAndATombstoneIsFoundInItsData) {
  auto Held = [](KernelWords& mem, const ShadowModuleLayout& l, std::uint64_t begin, std::uint64_t end) {
    auto r = HoldsKeyTombstone(mem, l, begin, end);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::optional<bool>(*r) : std::nullopt;
  };
  const std::uint64_t key = kBase + 0x1400, vmlinux_entries = kBase + 0x1500, guest_node = kBase + 0x1700;
  l_.keys.key_enabled = 0, l_.keys.key_type = 8;
  l_.keys.node_size = 24, l_.keys.node_next = 0, l_.keys.node_entries = 8, l_.keys.node_mod = 16;
  l_.keys.jump_entries = 0x340, l_.keys.num_jump_entries = 0x348;
  l_.keys.jump_label_mutex = kBase + 0x1600;
  l_.keys.vmlinux_begin = kBase, l_.keys.vmlinux_end = kBase + 0x2000;
  mem_.Set64(key + 8, vmlinux_entries);
  auto make = [&](int i) {
    MakeModule(i, 0xffffffffa0000000ull + 0x10000ull * static_cast<std::uint64_t>(i), 0x1000);
    const std::uint64_t mod = ModuleVa(i), tables = mod + 0x1000, table = mod + 0x2000;
    mem_.Set64(tables + 32, tables + 0x200);                                   // the key nodes
    mem_.Set64(tables + kShadowHeaderSize + l_.use_source, mod);               // module_use.source
    mem_.Set64(mod + l_.keys.jump_entries, table);
    mem_.Set64(mod + l_.keys.num_jump_entries, 1);
    mem_.Set64(table + 8, key - (table + 8));
  };
  make(0);
  ASSERT_THAT(LinkShadowModule(mem_, l_, ModuleVa(0), {false}), IsOk());
  EXPECT_EQ(mem_.Get64(key + 8), (ModuleVa(0) + 0x1200) | 2);
  // A guest module joins the key.
  mem_.Set64(guest_node, ModuleVa(0) + 0x1200);
  mem_.Set64(guest_node + 8, kBase + 0x1800);
  mem_.Set64(guest_node + 16, 0xffffffffc0001000ull);
  mem_.Set64(key + 8, guest_node | 2);
  bool keep = false;
  ASSERT_THAT(UnlinkShadowModule(mem_, l_, ModuleVa(0), &keep), IsOk());
  EXPECT_TRUE(keep);
  EXPECT_EQ(Held(mem_, l_, ModuleVa(0), ModuleVa(0) + 0x10000), std::optional<bool>(true));

  // Another patch on the same key: linked beside, unlinked alone, nothing kept.
  make(1);
  ASSERT_THAT(LinkShadowModule(mem_, l_, ModuleVa(1), {false}), IsOk());
  ASSERT_THAT(UnlinkShadowModule(mem_, l_, ModuleVa(1), &keep), IsOk());
  EXPECT_FALSE(keep);
  EXPECT_EQ(Held(mem_, l_, ModuleVa(1), ModuleVa(1) + 0x10000), std::optional<bool>(false));
  EXPECT_EQ(mem_.Get64(key + 8), guest_node | 2);
  // A run without a shadow module holds none.
  EXPECT_EQ(Held(mem_, l_, kBase + 0x80000, kBase + 0x81000), std::optional<bool>(false));
}

}  // namespace
}  // namespace hv::patcher
