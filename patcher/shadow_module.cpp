#include "patcher/shadow_module.h"

#include <elf.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

#include "base/hex.h"

namespace hv::patcher {
namespace {

// include/linux/module.h: MODULE_REF_BASE is 1; one more is the reference livepatch's
// klp_enable_patch() takes on its module with try_module_get().
constexpr std::uint32_t kRefcnt = 2;
// include/linux/panic.h: TAINT_LIVEPATCH, shown as 'K' by lsmod, as for an in-guest livepatch module.
constexpr std::uint64_t kTaintLivepatch = 1ull << 15;
// Bounds on what a hostile guest can make us walk.
constexpr int kMaxListEntries = 8192;
constexpr std::uint64_t kHeaderSavedMin = 8, kHeaderSavedMax = 16, kHeaderFlags = 24, kHeaderKeyNodes = 32;
constexpr std::uint64_t kLoweredMin = 1, kRaisedMax = 2;

std::uint64_t Align8(std::uint64_t v) { return (v + 7) & ~std::uint64_t{7}; }

void Put64(std::vector<std::uint8_t>& b, std::uint64_t off, std::uint64_t v) { std::memcpy(b.data() + off, &v, 8); }
void Put32(std::vector<std::uint8_t>& b, std::uint64_t off, std::uint32_t v) { std::memcpy(b.data() + off, &v, 4); }

// The symbols the shadow module's kallsyms lists: named functions and objects in placed
// sections, except the module's plumbing (klp tables, init/exit, struct module itself).
std::vector<const ModuleSymbol*> KallsymsSymbols(const PatchModule& m, const PatchImage& image) {
  std::vector<const ModuleSymbol*> out;
  for (const auto& sym : m.symbols()) {
    if (sym.name.empty() || (sym.type != STT_FUNC && sym.type != STT_OBJECT)) continue;
    if (sym.section == SHN_UNDEF || sym.section >= m.sections().size()) continue;
    if (image.this_module && sym.section == *image.this_module) continue;
    if (image.Find(sym.section) == nullptr || m.FindMetadata(sym.section, sym.value) != nullptr) continue;
    out.push_back(&sym);
  }
  return out;
}

// kernel/module/kallsyms.c elf_type() for the sections hvpatch places (always lower case in a
// module's typetab: /proc/kallsyms upper-cases exported symbols itself).
char TypeChar(const ModuleSymbol& sym, const ModuleSection& sec) {
  if (sym.binding == STB_WEAK) return sym.type == STT_OBJECT ? 'v' : 'w';
  if (sec.executable()) return 't';
  if (sec.type == SHT_NOBITS) return 'b';
  return sec.writable() ? 'd' : 'r';
}

// One ORC entry of the patch for placed code: where its ip points, and the 6-byte orc_entry
// (s16 sp_offset, s16 bp_offset, then sp_reg:4 bp_reg:4 type:2 end:1).
constexpr std::uint64_t kOrcEntrySize = 6;
constexpr unsigned kOrcRegUndefined = 0;
struct OrcSource {
  std::uint32_t section = 0;
  std::uint64_t offset = 0;
  std::array<std::uint8_t, kOrcEntrySize> entry{};
};

// .orc_unwind_ip[i] (PC32 to code) with .orc_unwind[i], for the entries whose code is placed and
// is not the module's plumbing (init/exit code is blanked: its entries would describe int3s).
std::vector<OrcSource> CollectOrc(const PatchModule& m, const PatchImage& image) {
  std::vector<OrcSource> out;
  const ModuleSection* ips = nullptr;
  const ModuleSection* orcs = nullptr;
  for (const auto& s : m.sections()) {
    if (s.name == ".orc_unwind_ip") ips = &s;
    if (s.name == ".orc_unwind") orcs = &s;
  }
  if (ips == nullptr || orcs == nullptr || ips->size % 4 != 0 || orcs->bytes.size() != orcs->size ||
      ips->size / 4 != orcs->size / kOrcEntrySize) {
    return out;
  }
  for (const auto& r : ips->relocations) {
    if (r.offset % 4 != 0 || r.type != R_X86_64_PC32) continue;
    const ModuleSymbol& sym = m.symbols()[r.symbol];
    if (sym.section == SHN_UNDEF || sym.section >= m.sections().size()) continue;
    const PlacedSection* p = image.Find(sym.section);
    if (p == nullptr || !m.sections()[sym.section].executable()) continue;
    const std::uint64_t target = sym.value + static_cast<std::uint64_t>(r.addend);
    if (target > p->size || m.FindMetadata(sym.section, target) != nullptr) continue;
    OrcSource o{sym.section, target, {}};
    std::memcpy(o.entry.data(), orcs->bytes.data() + (r.offset / 4) * kOrcEntrySize, kOrcEntrySize);
    out.push_back(o);
  }
  return out;
}

struct TablesLayout {
  std::uint64_t use = 0, symtab = 0, typetab = 0, strtab = 0, orc_ip = 0, orc = 0, key_nodes = 0, size = 0;
};

// `key_nodes`: bytes for the static key nodes (two per jump entry: an upper bound on two per key).
TablesLayout LayTables(std::uint64_t use_size, const std::vector<const ModuleSymbol*>& syms, std::size_t orcs,
                       std::uint64_t key_nodes) {
  TablesLayout t;
  t.use = kShadowHeaderSize;
  t.symtab = Align8(t.use + use_size);
  t.typetab = t.symtab + sizeof(Elf64_Sym) * (syms.size() + 1);
  t.strtab = t.typetab + syms.size() + 1;
  std::uint64_t strings = 1;
  for (const ModuleSymbol* s : syms) strings += s->name.size() + 1;
  t.orc_ip = Align8(t.strtab + strings);
  t.orc = t.orc_ip + 4 * orcs;
  t.key_nodes = Align8(t.orc + kOrcEntrySize * orcs);
  t.size = t.key_nodes + Align8(key_nodes);
  return t;
}

Status ModuleMutexFree(KernelWords& mem, const ShadowModuleLayout& l) {
  HV_ASSIGN_OR_RETURN(std::uint64_t owner, mem.Read64(l.module_mutex + l.mutex_owner));
  if (owner != 0) {
    return Busy("the guest holds module_mutex (owner " + Hex(owner) +
                "): a module load or unload is changing the module structures");
  }
  return Status::Ok();
}

// list_add_rcu(entry, head).
Status ListAdd(KernelWords& mem, std::uint64_t entry, std::uint64_t head, std::string_view what) {
  HV_ASSIGN_OR_RETURN(std::uint64_t first, mem.Read64(head));
  HV_ASSIGN_OR_RETURN(std::uint64_t first_prev, mem.Read64(first + 8));
  if (first_prev != head) {
    return FailedPrecondition(std::string(what) + " at " + Hex(head) + " is corrupt: its first entry " + Hex(first) +
                              " points back to " + Hex(first_prev));
  }
  HV_RETURN_IF_ERROR(mem.Write64(entry, first));
  HV_RETURN_IF_ERROR(mem.Write64(entry + 8, head));
  HV_RETURN_IF_ERROR(mem.Write64(head, entry));
  return mem.Write64(first + 8, entry);
}

// list_del_rcu(entry): the entry keeps its own pointers. kNotFound when its neighbours do not
// point at it (not linked).
Status ListDel(KernelWords& mem, std::uint64_t entry, std::string_view what) {
  HV_ASSIGN_OR_RETURN(std::uint64_t next, mem.Read64(entry));
  HV_ASSIGN_OR_RETURN(std::uint64_t prev, mem.Read64(entry + 8));
  auto prev_next = mem.Read64(prev);
  auto next_prev = mem.Read64(next + 8);
  if (!prev_next.ok() || !next_prev.ok() || *prev_next != entry || *next_prev != entry) {
    return NotFound("entry " + Hex(entry) + " is not linked in " + std::string(what));
  }
  HV_RETURN_IF_ERROR(mem.Write64(prev, next));
  return mem.Write64(next + 8, prev);
}

Result<std::vector<std::uint64_t>> ListEntries(KernelWords& mem, std::uint64_t head, std::string_view what) {
  std::vector<std::uint64_t> out;
  HV_ASSIGN_OR_RETURN(std::uint64_t cur, mem.Read64(head));
  while (cur != head) {
    if (out.size() >= kMaxListEntries) {
      return FailedPrecondition(std::string(what) + " has more than " + std::to_string(kMaxListEntries) +
                                " entries: corrupt or cyclic");
    }
    out.push_back(cur);
    HV_ASSIGN_OR_RETURN(cur, mem.Read64(cur));
  }
  return out;
}

std::uint64_t TreeRoot(const ShadowModuleLayout& l, int idx) {
  return l.mod_tree + l.tree_root + l.latch_tree + 8 * static_cast<std::uint64_t>(idx);
}
std::uint64_t NodeOf(const ShadowModuleLayout& l, std::uint64_t module_va, int idx) {
  return module_va + l.core_layout + l.layout_mtn_node + l.rb_node_size * static_cast<std::uint64_t>(idx);
}

// raw_write_seqcount_latch(): readers that raced with the edit retry their lookup.
Status BumpLatch(KernelWords& mem, const ShadowModuleLayout& l) {
  const std::uint64_t seq = l.mod_tree + l.tree_root + l.latch_seq;
  HV_ASSIGN_OR_RETURN(std::uint32_t v, mem.Read32(seq));
  return mem.Write32(seq, v + 1);
}

Result<std::uint64_t> HeaderOf(KernelWords& mem, const ShadowModuleLayout& l, std::uint64_t module_va) {
  HV_ASSIGN_OR_RETURN(std::uint64_t use_link, mem.Read64(module_va + l.source_list));
  const std::uint64_t header = use_link - l.use_source_list - kShadowHeaderSize;
  char magic[8];
  HV_RETURN_IF_ERROR(mem.Read(header, {reinterpret_cast<std::uint8_t*>(magic), 8}));
  if (std::memcmp(magic, kShadowMagic, 8) != 0) {
    return FailedPrecondition("module at " + Hex(module_va) + " is not an hvpatch shadow module (no header at " +
                              Hex(header) + ")");
  }
  return header;
}

// Two static_key_mod nodes per jump entry (our node and, for a key not linked yet, vmlinux's):
// an upper bound on two per key, known before the table is sorted.
std::uint64_t KeyNodesSize(const ShadowModuleLayout& l, const PatchModule& module, const PatchImage& image) {
  for (const auto& p : image.sections) {
    if (module.sections()[p.section].name == "__jump_table") return 2 * JumpEntryCount(module) * l.keys.node_size;
  }
  return 0;
}

}  // namespace

Result<ShadowModuleLayout> ShadowModuleLayout::Read(const KernelBtf& btf, const SymbolResolver& symbols) {
  ShadowModuleLayout l;
  auto off = [&](std::string_view type, std::string_view path, std::uint64_t* out) -> Status {
    auto r = btf.Offset(type, path);
    if (!r.ok()) return r.status();
    *out = *r;
    return Status::Ok();
  };
  auto read = [&]() -> Status {
    HV_ASSIGN_OR_RETURN(l.module_size, btf.TypeSize("module"));
    HV_RETURN_IF_ERROR(off("module", "state", &l.state));
    HV_RETURN_IF_ERROR(off("module", "list", &l.list));
    HV_RETURN_IF_ERROR(off("module", "name", &l.name));
    HV_ASSIGN_OR_RETURN(l.name_size, btf.MemberSize("module", "name"));
    HV_RETURN_IF_ERROR(off("module", "taints", &l.taints));
    HV_RETURN_IF_ERROR(off("module", "klp", &l.klp));
    HV_RETURN_IF_ERROR(off("module", "core_layout", &l.core_layout));
    HV_RETURN_IF_ERROR(off("module", "init_layout", &l.init_layout));
    HV_RETURN_IF_ERROR(off("module", "kallsyms", &l.kallsyms));
    HV_RETURN_IF_ERROR(off("module", "core_kallsyms", &l.core_kallsyms));
    HV_RETURN_IF_ERROR(off("module", "bug_list", &l.bug_list));
    HV_RETURN_IF_ERROR(off("module", "num_bugs", &l.num_bugs));
    HV_RETURN_IF_ERROR(off("module", "bug_table", &l.bug_table));
    HV_RETURN_IF_ERROR(off("module", "num_exentries", &l.num_exentries));
    HV_RETURN_IF_ERROR(off("module", "extable", &l.extable));
    HV_RETURN_IF_ERROR(off("module", "source_list", &l.source_list));
    HV_RETURN_IF_ERROR(off("module", "target_list", &l.target_list));
    HV_RETURN_IF_ERROR(off("module", "refcnt", &l.refcnt));
    HV_RETURN_IF_ERROR(off("module", "arch.num_orcs", &l.num_orcs));
    HV_RETURN_IF_ERROR(off("module", "arch.orc_unwind_ip", &l.orc_unwind_ip));
    HV_RETURN_IF_ERROR(off("module", "arch.orc_unwind", &l.orc_unwind));
    HV_RETURN_IF_ERROR(off("module_layout", "base", &l.layout_base));
    HV_RETURN_IF_ERROR(off("module_layout", "size", &l.layout_size));
    HV_RETURN_IF_ERROR(off("module_layout", "text_size", &l.layout_text_size));
    HV_RETURN_IF_ERROR(off("module_layout", "ro_size", &l.layout_ro_size));
    HV_RETURN_IF_ERROR(off("module_layout", "ro_after_init_size", &l.layout_ro_after_init_size));
    HV_RETURN_IF_ERROR(off("module_layout", "mtn.mod", &l.layout_mtn_mod));
    HV_RETURN_IF_ERROR(off("module_layout", "mtn.node", &l.layout_mtn_node));
    HV_RETURN_IF_ERROR(off("mod_kallsyms", "symtab", &l.ks_symtab));
    HV_RETURN_IF_ERROR(off("mod_kallsyms", "num_symtab", &l.ks_num_symtab));
    HV_RETURN_IF_ERROR(off("mod_kallsyms", "strtab", &l.ks_strtab));
    HV_RETURN_IF_ERROR(off("mod_kallsyms", "typetab", &l.ks_typetab));
    HV_ASSIGN_OR_RETURN(l.use_size, btf.TypeSize("module_use"));
    HV_RETURN_IF_ERROR(off("module_use", "source_list", &l.use_source_list));
    HV_RETURN_IF_ERROR(off("module_use", "target_list", &l.use_target_list));
    HV_RETURN_IF_ERROR(off("module_use", "source", &l.use_source));
    HV_RETURN_IF_ERROR(off("module_use", "target", &l.use_target));
    HV_RETURN_IF_ERROR(off("rb_node", "__rb_parent_color", &l.rb.parent_color));
    HV_RETURN_IF_ERROR(off("rb_node", "rb_right", &l.rb.right));
    HV_RETURN_IF_ERROR(off("rb_node", "rb_left", &l.rb.left));
    HV_ASSIGN_OR_RETURN(l.rb_node_size, btf.TypeSize("rb_node"));
    HV_RETURN_IF_ERROR(off("latch_tree_root", "seq", &l.latch_seq));
    HV_RETURN_IF_ERROR(off("latch_tree_root", "tree", &l.latch_tree));
    HV_RETURN_IF_ERROR(off("mod_tree_root", "root", &l.tree_root));
    HV_RETURN_IF_ERROR(off("mod_tree_root", "addr_min", &l.addr_min));
    HV_RETURN_IF_ERROR(off("mod_tree_root", "addr_max", &l.addr_max));
    HV_RETURN_IF_ERROR(off("mutex", "owner", &l.mutex_owner));
    return Status::Ok();
  }();
  if (!read.ok()) {
    return read.WithContext("reading the guest's module layout from BTF")
        .WithHint("the shadow module needs CONFIG_MODULES, CONFIG_MODULE_UNLOAD, CONFIG_KALLSYMS and "
                  "CONFIG_MODULES_TREE_LOOKUP (Linux 6.1's struct module)");
  }
  struct Sym {
    const char* name;
    std::uint64_t* out;
  };
  for (const Sym& s : {Sym{"modules", &l.modules}, Sym{"mod_tree", &l.mod_tree},
                       Sym{"module_bug_list", &l.module_bug_list}, Sym{"module_mutex", &l.module_mutex}}) {
    auto r = symbols.Resolve(s.name, "vmlinux", 0);
    if (!r.ok()) return r.status().WithContext("finding the guest's '" + std::string(s.name) + "' for the shadow module");
    *s.out = r->address;
  }
  auto keys = StaticKeyLayout::Read(btf, symbols);
  if (keys.ok()) {
    l.keys = *keys;
  } else {
    l.keys_error = keys.status().message();
  }
  return l;
}

std::uint64_t ShadowTablesSize(const ShadowModuleLayout& layout, const PatchModule& module, const PatchImage& image) {
  return LayTables(layout.use_size, KallsymsSymbols(module, image), CollectOrc(module, image).size(),
                   KeyNodesSize(layout, module, image))
      .size;
}

Result<ShadowModuleImage> BuildShadowModule(const ShadowModuleLayout& l, const PatchModule& module,
                                            const PatchImage& image, const LinkedPatch& linked,
                                            const ShadowPlacement& at) {
  if (!image.this_module) {
    return FailedPrecondition("patch '" + module.name() + "' has no '.gnu.linkonce.this_module' section")
        .WithHint("build it with kbuild (modpost adds the struct module)");
  }
  const ModuleSection& ts = module.sections()[*image.this_module];
  if (ts.size != l.module_size) {
    return FailedPrecondition("patch '" + module.name() + "': its struct module is " + std::to_string(ts.size) +
                              " bytes, the guest's is " + std::to_string(l.module_size))
        .WithHint("build the patch against the guest kernel's own headers");
  }
  if (module.name().size() >= l.name_size) {
    return InvalidArgument("patch name '" + module.name() + "' is too long for struct module.name");
  }
  const auto syms = KallsymsSymbols(module, image);
  const auto orcs = CollectOrc(module, image);
  const TablesLayout t = LayTables(l.use_size, syms, orcs.size(), KeyNodesSize(l, module, image));
  ShadowModuleImage out;
  out.module.assign(l.module_size, 0);
  out.tables.assign(t.size, 0);
  out.symbols = syms.size();
  const std::uint64_t mod = at.module_va;
  auto& m = out.module;

  // struct module. Everything not set here is zero, as a fresh load's zeroed allocation is:
  // no exports, parameters, tracepoints, per-cpu area, init or exit function.
  Put32(m, l.state, 0);  // MODULE_STATE_LIVE
  Put64(m, l.list, mod + l.list);
  Put64(m, l.list + 8, mod + l.list);
  std::memcpy(m.data() + l.name, module.name().data(), module.name().size());
  Put64(m, l.taints, kTaintLivepatch);
  m[l.klp] = 1;
  const std::uint64_t core = l.core_layout;
  Put64(m, core + l.layout_base, at.code_va);
  for (std::uint64_t f : {l.layout_size, l.layout_text_size, l.layout_ro_size, l.layout_ro_after_init_size}) {
    Put32(m, core + f, static_cast<std::uint32_t>(at.code_size));
  }
  Put64(m, core + l.layout_mtn_mod, mod);
  Put64(m, l.init_layout + l.layout_mtn_mod, mod);
  Put64(m, l.kallsyms, mod + l.core_kallsyms);
  Put64(m, l.core_kallsyms + l.ks_symtab, at.tables_va + t.symtab);
  Put32(m, l.core_kallsyms + l.ks_num_symtab, static_cast<std::uint32_t>(syms.size() + 1));
  Put64(m, l.core_kallsyms + l.ks_strtab, at.tables_va + t.strtab);
  Put64(m, l.core_kallsyms + l.ks_typetab, at.tables_va + t.typetab);
  Put32(m, l.num_exentries, at.num_exentries);
  Put32(m, l.num_bugs, at.num_bugs);
  Put64(m, l.bug_table, at.bug_table_va);
  if (!orcs.empty()) {
    Put32(m, l.num_orcs, static_cast<std::uint32_t>(orcs.size()));
    Put64(m, l.orc_unwind_ip, at.tables_va + t.orc_ip);
    Put64(m, l.orc_unwind, at.tables_va + t.orc);
  }
  Put64(m, l.extable, at.extable_va);
  if (at.num_jump_entries != 0) {
    Put64(m, l.keys.jump_entries, at.jump_entries_va);
    Put32(m, l.keys.num_jump_entries, at.num_jump_entries);
  }
  Put64(m, l.bug_list, mod + l.bug_list);
  Put64(m, l.bug_list + 8, mod + l.bug_list);
  // The module uses itself: one module_use on both its lists.
  const std::uint64_t use = at.tables_va + t.use;
  Put64(m, l.source_list, use + l.use_source_list);
  Put64(m, l.source_list + 8, use + l.use_source_list);
  Put64(m, l.target_list, use + l.use_target_list);
  Put64(m, l.target_list + 8, use + l.use_target_list);
  Put32(m, l.refcnt, kRefcnt);

  // Tables: header, module_use, symtab, typetab, strtab.
  auto& tb = out.tables;
  std::memcpy(tb.data(), kShadowMagic, 8);
  Put64(tb, kHeaderKeyNodes, at.tables_va + t.key_nodes);
  Put64(tb, t.use + l.use_source_list, mod + l.source_list);
  Put64(tb, t.use + l.use_source_list + 8, mod + l.source_list);
  Put64(tb, t.use + l.use_target_list, mod + l.target_list);
  Put64(tb, t.use + l.use_target_list + 8, mod + l.target_list);
  Put64(tb, t.use + l.use_source, mod);
  Put64(tb, t.use + l.use_target, mod);
  std::uint64_t str = 1;
  for (std::size_t i = 0; i < syms.size(); ++i) {
    const ModuleSymbol& s = *syms[i];
    const PlacedSection* p = image.Find(s.section);
    Elf64_Sym e{};
    e.st_name = static_cast<std::uint32_t>(str);
    e.st_info = static_cast<unsigned char>(ELF64_ST_INFO(s.binding, s.type));
    e.st_shndx = s.section;
    e.st_value = linked.base[static_cast<std::size_t>(p->memory)] + p->offset + s.value;
    e.st_size = s.size;
    std::memcpy(tb.data() + t.symtab + sizeof(Elf64_Sym) * (i + 1), &e, sizeof(e));
    tb[t.typetab + i + 1] = static_cast<std::uint8_t>(TypeChar(s, module.sections()[s.section]));
    std::memcpy(tb.data() + t.strtab + str, s.name.data(), s.name.size());
    str += s.name.size() + 1;
  }

  // ORC: sorted by address as unwind_module_init() sorts, a "weak" section terminator (sp_reg
  // undefined, end clear) before a real entry at the same address.
  struct Orc {
    std::uint64_t ip;
    bool weak;
    std::array<std::uint8_t, kOrcEntrySize> entry;
  };
  std::vector<Orc> sorted;
  for (const OrcSource& o : orcs) {
    const PlacedSection* p = image.Find(o.section);
    const std::uint64_t ip = linked.base[static_cast<std::size_t>(p->memory)] + p->offset + o.offset;
    const unsigned sp_reg = o.entry[4] & 0xf;
    const bool end = ((o.entry[5] >> 2) & 1) != 0;
    sorted.push_back({ip, sp_reg == kOrcRegUndefined && !end, o.entry});
  }
  std::stable_sort(sorted.begin(), sorted.end(), [](const Orc& a, const Orc& b) {
    return a.ip != b.ip ? a.ip < b.ip : (a.weak && !b.weak);
  });
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    const std::uint64_t place = at.tables_va + t.orc_ip + 4 * i;
    Put32(tb, t.orc_ip + 4 * i, static_cast<std::uint32_t>(sorted[i].ip - place));
    std::memcpy(tb.data() + t.orc + kOrcEntrySize * i, sorted[i].entry.data(), kOrcEntrySize);
  }
  out.orcs = sorted.size();
  return out;
}

Status LinkShadowModule(KernelWords& mem, const ShadowModuleLayout& l, std::uint64_t module_va,
                        const std::vector<bool>& key_states) {
  HV_RETURN_IF_ERROR(ModuleMutexFree(mem, l));
  HV_ASSIGN_OR_RETURN(std::uint64_t header, HeaderOf(mem, l, module_va));
  HV_ASSIGN_OR_RETURN(std::uint64_t base, mem.Read64(module_va + l.core_layout + l.layout_base));
  HV_ASSIGN_OR_RETURN(std::uint32_t size, mem.Read32(module_va + l.core_layout + l.layout_size));
  HV_ASSIGN_OR_RETURN(std::uint64_t linked, FindLinkedModule(mem, l, module_va, module_va + 1));
  if (linked != 0) return FailedPrecondition("shadow module at " + Hex(module_va) + " is already linked");

  // mod_update_bounds(), remembering what it was for the unlink.
  const std::uint64_t min_va = l.mod_tree + l.addr_min, max_va = l.mod_tree + l.addr_max;
  HV_ASSIGN_OR_RETURN(std::uint64_t min, mem.Read64(min_va));
  HV_ASSIGN_OR_RETURN(std::uint64_t max, mem.Read64(max_va));
  std::uint64_t flags = 0;
  HV_RETURN_IF_ERROR(mem.Write64(header + kHeaderSavedMin, min));
  HV_RETURN_IF_ERROR(mem.Write64(header + kHeaderSavedMax, max));
  if (base < min) {
    HV_RETURN_IF_ERROR(mem.Write64(min_va, base));
    flags |= kLoweredMin;
  }
  if (base + size > max) {
    HV_RETURN_IF_ERROR(mem.Write64(max_va, base + size));
    flags |= kRaisedMax;
  }
  HV_RETURN_IF_ERROR(mem.Write64(header + kHeaderFlags, flags));

  HV_RETURN_IF_ERROR(ListAdd(mem, module_va + l.list, l.modules, "the module list"));
  // latch_tree_insert(): both copies, each after a sequence bump.
  for (int idx = 0; idx < 2; ++idx) {
    HV_RETURN_IF_ERROR(BumpLatch(mem, l));
    RbTreeWriter tree(mem, TreeRoot(l, idx), l.rb);
    const std::uint64_t to_base = l.layout_mtn_node + l.rb_node_size * static_cast<std::uint64_t>(idx);
    auto node_base = [&](std::uint64_t n) { return mem.Read64(n - to_base + l.layout_base); };
    auto less = [&](std::uint64_t a, std::uint64_t b) -> Result<bool> {
      HV_ASSIGN_OR_RETURN(std::uint64_t va, node_base(a));
      HV_ASSIGN_OR_RETURN(std::uint64_t vb, node_base(b));
      return va < vb;
    };
    Status s = tree.Insert(NodeOf(l, module_va, idx), less);
    if (!s.ok()) return s.WithContext("inserting into mod_tree copy " + std::to_string(idx));
  }
  HV_RETURN_IF_ERROR(ListAdd(mem, module_va + l.bug_list, l.module_bug_list, "module_bug_list"));
  // jump_label_add_module() runs in the COMING notifier, with the module already in the tree.
  if (!key_states.empty()) {
    HV_ASSIGN_OR_RETURN(std::uint64_t nodes, mem.Read64(header + kHeaderKeyNodes));
    Status s = LinkStaticKeys(mem, l.keys, module_va, nodes, key_states);
    if (!s.ok()) return s.WithContext("linking the static keys");
  }
  return Status::Ok();
}

Status UnlinkShadowModule(KernelWords& mem, const ShadowModuleLayout& l, std::uint64_t module_va,
                          bool* keep_memory) {
  HV_RETURN_IF_ERROR(ModuleMutexFree(mem, l));
  HV_ASSIGN_OR_RETURN(std::uint64_t header, HeaderOf(mem, l, module_va));
  bool keep = false;
  if (l.keys.node_size != 0) {
    // jump_label_del_module() runs in the GOING notifier, before the module leaves the tree.
    HV_ASSIGN_OR_RETURN(std::uint32_t entries, mem.Read32(module_va + l.keys.num_jump_entries));
    if (entries != 0) {
      HV_ASSIGN_OR_RETURN(std::uint64_t nodes, mem.Read64(header + kHeaderKeyNodes));
      Status s = UnlinkStaticKeys(mem, l.keys, module_va, nodes, &keep);
      if (!s.ok()) return s.WithContext("unlinking the static keys");
    }
  }
  if (keep_memory != nullptr) *keep_memory = keep;
  HV_ASSIGN_OR_RETURN(std::uint64_t base, mem.Read64(module_va + l.core_layout + l.layout_base));
  HV_ASSIGN_OR_RETURN(std::uint32_t size, mem.Read32(module_va + l.core_layout + l.layout_size));
  HV_RETURN_IF_ERROR(ListDel(mem, module_va + l.list, "the module list"));
  for (int idx = 0; idx < 2; ++idx) {
    HV_RETURN_IF_ERROR(BumpLatch(mem, l));
    RbTreeWriter tree(mem, TreeRoot(l, idx), l.rb);
    Status s = tree.Erase(NodeOf(l, module_va, idx));
    if (!s.ok()) return s.WithContext("erasing from mod_tree copy " + std::to_string(idx));
  }
  HV_RETURN_IF_ERROR(ListDel(mem, module_va + l.bug_list, "module_bug_list"));
  // The kernel never narrows the bounds; hvpatch puts back what it widened, when no load since
  // moved them further.
  HV_ASSIGN_OR_RETURN(std::uint64_t flags, mem.Read64(header + kHeaderFlags));
  const std::uint64_t min_va = l.mod_tree + l.addr_min, max_va = l.mod_tree + l.addr_max;
  HV_ASSIGN_OR_RETURN(std::uint64_t min, mem.Read64(min_va));
  HV_ASSIGN_OR_RETURN(std::uint64_t max, mem.Read64(max_va));
  if ((flags & kLoweredMin) && min == base) {
    HV_ASSIGN_OR_RETURN(std::uint64_t saved, mem.Read64(header + kHeaderSavedMin));
    HV_RETURN_IF_ERROR(mem.Write64(min_va, saved));
  }
  if ((flags & kRaisedMax) && max == base + size) {
    HV_ASSIGN_OR_RETURN(std::uint64_t saved, mem.Read64(header + kHeaderSavedMax));
    HV_RETURN_IF_ERROR(mem.Write64(max_va, saved));
  }
  return KeepBoundsCovering(mem, l);
}

Status KeepBoundsCovering(KernelWords& mem, const ShadowModuleLayout& l) {
  // What the bounds just put back were before this module's link does not cover a module linked
  // since without moving them: another hvpatch module above this one (patches are reverted in
  // any order, and an atomic replace unlinks the replaced modules after linking its own), or a
  // module the kernel loaded above the arena but below the old bound. Each must stay inside,
  // or __module_address() misses it (exception table, kallsyms, BUG lookups).
  const std::uint64_t min_va = l.mod_tree + l.addr_min, max_va = l.mod_tree + l.addr_max;
  HV_ASSIGN_OR_RETURN(std::uint64_t min, mem.Read64(min_va));
  HV_ASSIGN_OR_RETURN(std::uint64_t max, mem.Read64(max_va));
  HV_ASSIGN_OR_RETURN(auto mods, ListEntries(mem, l.modules, "the module list"));
  struct Linked {
    std::uint64_t mod, base, end, header;  // header 0: a module the kernel loaded
  };
  std::optional<Linked> lowest, highest;  // of hvpatch's own modules
  for (std::uint64_t e : mods) {
    const std::uint64_t mod = e - l.list;
    HV_ASSIGN_OR_RETURN(std::uint64_t base, mem.Read64(mod + l.core_layout + l.layout_base));
    HV_ASSIGN_OR_RETURN(std::uint32_t size, mem.Read32(mod + l.core_layout + l.layout_size));
    auto header = HeaderOf(mem, l, mod);
    const Linked m{mod, base, base + size, header.ok() ? *header : 0};
    if (m.header == 0) {
      // The kernel's own: as mod_update_bounds() would have it.
      min = std::min(min, m.base);
      max = std::max(max, m.end);
      continue;
    }
    if (!lowest || m.base < lowest->base) lowest = m;
    if (!highest || m.end > highest->end) highest = m;
  }
  // The lowest (highest) hvpatch module takes the widening over, with the record its own unlink
  // puts back; the others lie inside it.
  if (lowest && lowest->base < min) {
    HV_ASSIGN_OR_RETURN(std::uint64_t flags, mem.Read64(lowest->header + kHeaderFlags));
    HV_RETURN_IF_ERROR(mem.Write64(lowest->header + kHeaderSavedMin, min));
    HV_RETURN_IF_ERROR(mem.Write64(lowest->header + kHeaderFlags, flags | kLoweredMin));
    min = lowest->base;
  }
  if (highest && highest->end > max) {
    HV_ASSIGN_OR_RETURN(std::uint64_t flags, mem.Read64(highest->header + kHeaderFlags));
    HV_RETURN_IF_ERROR(mem.Write64(highest->header + kHeaderSavedMax, max));
    HV_RETURN_IF_ERROR(mem.Write64(highest->header + kHeaderFlags, flags | kRaisedMax));
    max = highest->end;
  }
  HV_ASSIGN_OR_RETURN(std::uint64_t min_now, mem.Read64(min_va));
  HV_ASSIGN_OR_RETURN(std::uint64_t max_now, mem.Read64(max_va));
  if (min != min_now) HV_RETURN_IF_ERROR(mem.Write64(min_va, min));
  if (max != max_now) HV_RETURN_IF_ERROR(mem.Write64(max_va, max));
  return Status::Ok();
}

Result<ModuleStructures> ReadModuleStructures(KernelWords& mem, const ShadowModuleLayout& l) {
  ModuleStructures s;
  HV_ASSIGN_OR_RETURN(auto mods, ListEntries(mem, l.modules, "the module list"));
  for (std::uint64_t e : mods) s.modules.push_back(e - l.list);
  HV_ASSIGN_OR_RETURN(auto bugs, ListEntries(mem, l.module_bug_list, "module_bug_list"));
  for (std::uint64_t e : bugs) s.bug_modules.push_back(e - l.bug_list);
  for (int idx = 0; idx < 2; ++idx) {
    RbTreeWriter tree(mem, TreeRoot(l, idx), l.rb);
    HV_ASSIGN_OR_RETURN(s.tree[idx], tree.InOrder());
  }
  HV_ASSIGN_OR_RETURN(s.addr_min, mem.Read64(l.mod_tree + l.addr_min));
  HV_ASSIGN_OR_RETURN(s.addr_max, mem.Read64(l.mod_tree + l.addr_max));
  return s;
}

Result<std::uint64_t> FindLinkedModule(KernelWords& mem, const ShadowModuleLayout& l, std::uint64_t begin,
                                       std::uint64_t end) {
  HV_ASSIGN_OR_RETURN(auto entries, ListEntries(mem, l.modules, "the module list"));
  for (std::uint64_t e : entries) {
    const std::uint64_t mod = e - l.list;
    if (mod >= begin && mod < end) return mod;
  }
  return std::uint64_t{0};
}

}  // namespace hv::patcher
