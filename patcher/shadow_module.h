// The shadow module: for each applied patch, a `struct module` in the arena's data pages that the
// guest kernel treats as a loaded module, so its own lookups cover the patch's code (see
// docs/shadow-module.md). hvpatch loads no module; this gives the guest what a module load
// (kernel/module/main.c, load_module -> add_unformed_module / complete_formation) would have:
//
//   struct module        in the patch's own `.gnu.linkonce.this_module` section, placed in arena
//                        data, so THIS_MODULE resolves to it; name = the patch name, state LIVE,
//                        core_layout = the patch's code pages, kallsyms = its symbols.
//   tables               after the image in the same data run: a header (hvpatch's record of
//                        what the link changed), the module_use that holds the module, the
//                        kallsyms symtab/strtab/typetab, and the ORC tables (.orc_unwind_ip and
//                        .orc_unwind entries of the placed code, sorted as unwind_module_init()
//                        sorts them) in mod->arch.
//   links (in the pause) list_add_rcu into `modules`; latch_tree_insert into both copies of
//                        `mod_tree` (RbTreeWriter) with its sequence count bumped as the latch
//                        writer does; mod_tree.addr_min/addr_max widened; list_add_rcu into
//                        `module_bug_list`.
//
// Every offset comes from the guest's BTF and every kernel address from its kallsyms. A patch
// built against other headers is refused: its `.gnu.linkonce.this_module` must be exactly
// sizeof(struct module) of the guest.
//
// The guest cannot remove it: its refcount is one (as in-guest livepatch holds its module), and it
// uses itself (a module_use on its own source_list), which delete_module() refuses before it
// looks at the force flag (-EWOULDBLOCK, "in use"), so even `rmmod -f` cannot free arena memory.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_btf.h"
#include "patcher/kernel_words.h"
#include "patcher/patch_module.h"
#include "patcher/rbtree_writer.h"
#include "patcher/relocator.h"
#include "patcher/static_keys.h"
#include "patcher/symbol_resolver.h"

namespace hv::patcher {

// Where things are in this guest kernel: BTF offsets and kallsyms addresses.
struct ShadowModuleLayout {
  // struct module
  std::uint64_t module_size = 0;
  std::uint64_t state = 0, list = 0, name = 0, name_size = 0, taints = 0, klp = 0;
  std::uint64_t core_layout = 0, init_layout = 0;
  std::uint64_t kallsyms = 0, core_kallsyms = 0;
  std::uint64_t bug_list = 0, num_bugs = 0, bug_table = 0;
  std::uint64_t num_exentries = 0, extable = 0;
  std::uint64_t source_list = 0, target_list = 0, refcnt = 0;
  std::uint64_t num_orcs = 0, orc_unwind_ip = 0, orc_unwind = 0;  // arch (CONFIG_UNWINDER_ORC)
  // struct module_layout
  std::uint64_t layout_base = 0, layout_size = 0, layout_text_size = 0, layout_ro_size = 0,
                layout_ro_after_init_size = 0, layout_mtn_mod = 0, layout_mtn_node = 0;
  // struct mod_kallsyms
  std::uint64_t ks_symtab = 0, ks_num_symtab = 0, ks_strtab = 0, ks_typetab = 0;
  // struct module_use
  std::uint64_t use_size = 0, use_source_list = 0, use_target_list = 0, use_source = 0, use_target = 0;
  // struct rb_node, struct latch_tree_root, struct mod_tree_root, struct mutex
  RbNodeLayout rb;
  std::uint64_t rb_node_size = 0;
  std::uint64_t latch_seq = 0, latch_tree = 0;
  std::uint64_t tree_root = 0, addr_min = 0, addr_max = 0;
  std::uint64_t mutex_owner = 0;
  // Guest addresses (kallsyms): LIST_HEAD(modules), mod_tree, lib/bug.c's module_bug_list,
  // module_mutex.
  std::uint64_t modules = 0, mod_tree = 0, module_bug_list = 0, module_mutex = 0;
  // Static keys (static_keys.h); `keys_error` says why not when this kernel lacks them (a patch
  // with a __jump_table is then refused with it).
  StaticKeyLayout keys;
  std::string keys_error;

  // Errors: kNotFound naming the type, member or symbol this kernel lacks (e.g. a kernel without
  // CONFIG_MODULES_TREE_LOOKUP has no mod_tree_root.root), with a hint.
  static Result<ShadowModuleLayout> Read(const KernelBtf& btf, const SymbolResolver& symbols);
};

// The first bytes of the tables area: what hvpatch needs at unlink, kept in guest memory with
// the module so a revert needs nothing from the ledger.
inline constexpr std::uint64_t kShadowHeaderSize = 64;
inline constexpr char kShadowMagic[8] = {'h', 'v', 'p', 's', 'h', 'd', 'w', '1'};

// Where the plan put the shadow module.
struct ShadowPlacement {
  std::uint64_t module_va = 0;  // struct module (the placed .gnu.linkonce.this_module)
  std::uint64_t tables_va = 0;  // tables area (8-byte aligned)
  std::uint64_t code_va = 0;    // the patch's code run: the module's core_layout
  std::uint64_t code_size = 0;
  std::uint64_t extable_va = 0;  // the sorted __ex_table (kernel_tables.h), or 0
  std::uint32_t num_exentries = 0;
  std::uint64_t bug_table_va = 0;  // the placed __bug_table, or 0
  std::uint32_t num_bugs = 0;
  std::uint64_t jump_entries_va = 0;  // the sorted __jump_table (static_keys.h), or 0
  std::uint32_t num_jump_entries = 0;
};

// The shadow module's bytes, ready to copy into the arena data.
struct ShadowModuleImage {
  std::vector<std::uint8_t> module;  // layout.module_size bytes, for placement.module_va
  std::vector<std::uint8_t> tables;  // for placement.tables_va
  std::size_t symbols = 0;           // kallsyms entries (without the null entry)
  std::size_t orcs = 0;              // ORC entries
};

// Size of the tables area for `module` placed as `image` (pure: it depends on the module only,
// so the plan can reserve it before the addresses are known).
std::uint64_t ShadowTablesSize(const ShadowModuleLayout& layout, const PatchModule& module,
                               const PatchImage& image);

// Builds the struct module and the tables. `linked` gives every section's address.
// Errors: kFailedPrecondition when the patch's `.gnu.linkonce.this_module` is not
// sizeof(struct module) of the guest (built against other headers), or missing.
Result<ShadowModuleImage> BuildShadowModule(const ShadowModuleLayout& layout, const PatchModule& module,
                                            const PatchImage& image, const LinkedPatch& linked,
                                            const ShadowPlacement& placement);

// Inside the pause: links the shadow module at `module_va` (already written, with its tables)
// into the guest's module structures, through `mem` (stage the writes: nothing here is
// all-or-nothing by itself), and its jump entries to their static keys (LinkStaticKeys, with
// `key_states` the state the plan wrote each key's sites in).
// Errors: kBusy when the guest holds module_mutex (a module load or unload is half-way through
// these structures: retry) or jump_label_mutex, or a key changed state since the plan;
// kFailedPrecondition for a corrupt list or tree, or the module already linked; memory errors.
Status LinkShadowModule(KernelWords& mem, const ShadowModuleLayout& layout, std::uint64_t module_va,
                        const std::vector<bool>& key_states = {});

// Inside the pause: undoes LinkShadowModule for the module at `module_va`: list_del_rcu from
// both lists, latch_tree_erase from both trees, and the bounds it widened put back (when no
// later load moved them), and its static keys unlinked first (UnlinkStaticKeys). The arena bytes
// are left as they are (a reader the pause caught on the module walks on through its unchanged
// `next` pointers, as after list_del_rcu). `*keep_memory` (when given) becomes true when a static
// key keeps a tombstone node in the module's data: that data must then never be freed.
// Errors: as LinkShadowModule; kNotFound when the module is not linked.
Status UnlinkShadowModule(KernelWords& mem, const ShadowModuleLayout& layout, std::uint64_t module_va,
                          bool* keep_memory = nullptr);
// Part of UnlinkShadowModule: widens mod_tree's bounds again for every module still linked that
// the bounds put back leave outside (as mod_update_bounds() would); the lowest (highest) hvpatch
// module takes the widening over in its header, so its own unlink puts back the kernel's bound.
Status KeepBoundsCovering(KernelWords& mem, const ShadowModuleLayout& layout);

// The guest's module structures, as read for a before/after comparison.
struct ModuleStructures {
  std::vector<std::uint64_t> modules;      // struct module addresses, list order
  std::vector<std::uint64_t> bug_modules;  // module_bug_list order
  std::vector<std::uint64_t> tree[2];      // in-order rb_node addresses of mod_tree's two copies
  std::uint64_t addr_min = 0, addr_max = 0;
  bool operator==(const ModuleStructures&) const = default;
};
Result<ModuleStructures> ReadModuleStructures(KernelWords& mem, const ShadowModuleLayout& layout);

// The struct module in `modules` that lies in [begin, end) (a patch's arena data), or 0.
Result<std::uint64_t> FindLinkedModule(KernelWords& mem, const ShadowModuleLayout& layout, std::uint64_t begin,
                                       std::uint64_t end);

}  // namespace hv::patcher
