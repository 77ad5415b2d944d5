// Static keys (jump labels) in a patch's new code, handled as a module load handles a module's
// `__jump_table` (Linux 6.1: kernel/jump_label.c jump_label_add_module / jump_label_del_module,
// arch/x86/kernel/jump_label.c). See docs/shadow-module.md, "Static keys".
//
//   at plan       FinishJumpTable: the placed __jump_table (struct jump_entry {s32 code, target;
//                 long key;}, all relative to the field, the key's low bits: 1 = branch, 2 =
//                 init) sorted as jump_label_sort_entries() sorts it (by key, then code, relative
//                 fields rewritten), the init bit cleared (no entry of ours is init code), and
//                 each site written in its key's state now: the same-size jmp or nop the kernel
//                 expects (2 bytes: eb rel8 / 66 90; 5 bytes: e9 rel32 / 0f 1f 44 00 00).
//   in the pause  LinkStaticKeys: jump_label_mutex must be free and every key still in the
//                 state the plan wrote; then each key gets our struct static_key_mod (mod = the
//                 shadow module) at the head of its list, and, if it was not linked yet, a node
//                 for vmlinux's own entries (mod = NULL) first, as jump_label_add_module() does.
//                 Both nodes are arena memory in the shadow module's tables.
//   at revert     UnlinkStaticKeys: our node leaves the list; if only our vmlinux node is left,
//                 the key is folded back (entries restored, LINKED cleared) as
//                 jump_label_del_module() does. The guest kfree()s the node it finds last on a
//                 list when a module of its own unloads, so a vmlinux node in arena memory must
//                 never become last while the guest can still reach it: if guest nodes joined
//                 the list meanwhile, our node stays on it as an inert tombstone (entries NULL:
//                 __jump_label_mod_update skips it; mod = our old struct module, which no module
//                 will ever be again) and the memory of both is kept for good (the caller must
//                 not retire it: `*keep_memory`).
// Only keys of vmlinux are supported: a key in a guest module would be freed with that module,
// and a key defined in the patch itself would need its own entry list; both are refused by name.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_btf.h"
#include "patcher/kernel_words.h"
#include "patcher/patch_module.h"
#include "patcher/relocator.h"
#include "patcher/symbol_resolver.h"

namespace hv::patcher {

inline constexpr std::uint64_t kJumpEntrySize = 16;

// Where things are in this guest kernel (BTF offsets, kallsyms addresses).
struct StaticKeyLayout {
  std::uint64_t key_enabled = 0, key_type = 0;                          // struct static_key
  std::uint64_t node_size = 0, node_next = 0, node_entries = 0, node_mod = 0;  // struct static_key_mod
  std::uint64_t jump_entries = 0, num_jump_entries = 0;                 // struct module
  std::uint64_t mutex_owner = 0;                                        // struct mutex
  std::uint64_t jump_label_mutex = 0;                                   // kernel/jump_label.c
  std::uint64_t vmlinux_begin = 0, vmlinux_end = 0;                     // _text, _end
  // Errors: kNotFound naming what this kernel lacks, with a hint (CONFIG_JUMP_LABEL).
  static Result<StaticKeyLayout> Read(const KernelBtf& btf, const SymbolResolver& symbols);
};

// The guest's `static_key.enabled` of the key at `key_va`.
using KeyReader = std::function<Result<std::int32_t>(std::uint64_t key_va)>;

struct JumpTable {
  std::uint64_t va = 0;  // the placed, sorted __jump_table (0: none)
  std::uint32_t count = 0;
  std::vector<std::uint64_t> keys;     // distinct keys, in table order
  std::vector<bool> enabled;           // per key: the state the sites were written in
  std::vector<std::uint64_t> first;    // per key: its first entry's address
};

// Entries (an upper bound on the keys) of the patch's __jump_table, 0 if it has none. Pure.
std::uint64_t JumpEntryCount(const PatchModule& module);

// Sorts the placed __jump_table in `linked` and writes each site in its key's state (`read_key`).
// Errors: kInvalidArgument for a table that is not whole entries, an entry outside the patch's
// code, or a site that holds neither the jmp to its target nor a nop of a jump label's size;
// kUnimplemented for a key that is not vmlinux's; read_key's errors.
Result<JumpTable> FinishJumpTable(const PatchModule& module, const PatchImage& image, LinkedPatch& linked,
                                  const StaticKeyLayout& layout, const KeyReader& read_key);

// In the pause: links the entries of the shadow module at `module_va` (its jump_entries /
// num_jump_entries are read from it) to their keys, using the node pairs at `nodes_va` (two
// nodes per key, key order). `planned` is the state each key's sites were written in.
// Errors: kBusy when the guest holds jump_label_mutex or a key changed state since the plan
// (apply again); kFailedPrecondition for a corrupt key list; memory errors.
Status LinkStaticKeys(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t module_va, std::uint64_t nodes_va,
                      const std::vector<bool>& planned);

// In the pause: undoes LinkStaticKeys (see the file comment). `*keep_memory` becomes true when a
// tombstone was left (the shadow module's data must then never be freed), false otherwise.
// A key whose list does not hold our node is left alone (never linked: e.g. an apply that died
// before its writes reached the key). Errors: kBusy (jump_label_mutex held);
// kFailedPrecondition for a corrupt list (cyclic, or our node naming another module); memory errors.
Status UnlinkStaticKeys(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t module_va, std::uint64_t nodes_va,
                        bool* keep_memory);

// One key as read back for a before/after comparison.
struct StaticKeyState {
  std::uint64_t type = 0;               // the union word: entries or node pointer, with the type bits
  std::vector<std::uint64_t> nodes;     // with LINKED: the node list
  std::vector<std::uint64_t> node_entries, node_mods;
  bool operator==(const StaticKeyState&) const = default;
};
Result<StaticKeyState> ReadStaticKey(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t key_va);

}  // namespace hv::patcher
