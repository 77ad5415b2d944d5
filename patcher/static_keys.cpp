#include "patcher/static_keys.h"

#include <algorithm>
#include <cstring>

#include "base/hex.h"

namespace hv::patcher {
namespace {

// include/linux/jump_label.h
constexpr std::uint64_t kTypeTrue = 1, kTypeLinked = 2, kTypeMask = 3;
constexpr std::uint64_t kEntryBranch = 1, kEntryInit = 2;
// Bounds on what a hostile guest can make us walk.
constexpr int kMaxNodes = 4096;
constexpr std::uint32_t kMaxEntries = 1u << 16;

// x86_nops[2] and x86_nops[5] (arch/x86/include/asm/nops.h), what objtool and the kernel write.
constexpr std::uint8_t kNop2[2] = {0x66, 0x90};
constexpr std::uint8_t kNop5[5] = {0x0f, 0x1f, 0x44, 0x00, 0x00};

std::int32_t Get32(const std::uint8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
std::int64_t Get64(const std::uint8_t* p) {
  std::int64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

std::uint8_t* LinkedAt(LinkedPatch& l, std::uint64_t va, std::uint64_t n, MemoryClass* cls) {
  for (std::size_t c = 0; c < kMemoryClasses; ++c) {
    const std::uint64_t base = l.base[c];
    const std::uint64_t size = l.bytes[c].size();
    if (va >= base && va - base <= size && n <= size - (va - base)) {
      *cls = static_cast<MemoryClass>(c);
      return l.bytes[c].data() + (va - base);
    }
  }
  return nullptr;
}

Status MutexFree(KernelWords& mem, const StaticKeyLayout& l) {
  HV_ASSIGN_OR_RETURN(std::uint64_t owner, mem.Read64(l.jump_label_mutex + l.mutex_owner));
  if (owner != 0) {
    return Busy("the guest holds jump_label_mutex (owner " + Hex(owner) + "): a static key is being switched");
  }
  return Status::Ok();
}

struct Node {
  std::uint64_t va, next, entries, mod;
};

// The node list of a linked key, bounded.
Result<std::vector<Node>> Nodes(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t key, std::uint64_t type) {
  std::vector<Node> out;
  for (std::uint64_t n = type & ~kTypeMask; n != 0;) {
    if (out.size() >= kMaxNodes) return FailedPrecondition("static key " + Hex(key) + " has a cyclic node list");
    Node node{n, 0, 0, 0};
    HV_ASSIGN_OR_RETURN(node.next, mem.Read64(n + l.node_next));
    HV_ASSIGN_OR_RETURN(node.entries, mem.Read64(n + l.node_entries));
    HV_ASSIGN_OR_RETURN(node.mod, mem.Read64(n + l.node_mod));
    out.push_back(node);
    n = node.next;
  }
  return out;
}

// The distinct keys of the (sorted) table the shadow module at `module_va` carries.
Result<std::vector<std::uint64_t>> ModuleKeys(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t module_va,
                                              std::vector<std::uint64_t>* firsts) {
  HV_ASSIGN_OR_RETURN(std::uint64_t table, mem.Read64(module_va + l.jump_entries));
  HV_ASSIGN_OR_RETURN(std::uint32_t count, mem.Read32(module_va + l.num_jump_entries));
  if (count > kMaxEntries) return FailedPrecondition("shadow module at " + Hex(module_va) + " has " + std::to_string(count) + " jump entries");
  std::vector<std::uint64_t> keys;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint64_t e = table + kJumpEntrySize * i;
    HV_ASSIGN_OR_RETURN(std::uint64_t raw, mem.Read64(e + 8));
    const std::uint64_t key = (e + 8 + raw) & ~kTypeMask;
    if (keys.empty() || keys.back() != key) {
      keys.push_back(key);
      if (firsts != nullptr) firsts->push_back(e);
    }
  }
  return keys;
}

}  // namespace

Result<StaticKeyLayout> StaticKeyLayout::Read(const KernelBtf& btf, const SymbolResolver& symbols) {
  StaticKeyLayout l;
  Status read = [&]() -> Status {
    auto off = [&](std::string_view type, std::string_view path, std::uint64_t* out) -> Status {
      HV_ASSIGN_OR_RETURN(*out, btf.Offset(type, path));
      return Status::Ok();
    };
    HV_RETURN_IF_ERROR(off("static_key", "enabled", &l.key_enabled));
    HV_RETURN_IF_ERROR(off("static_key", "type", &l.key_type));
    HV_ASSIGN_OR_RETURN(l.node_size, btf.TypeSize("static_key_mod"));
    HV_RETURN_IF_ERROR(off("static_key_mod", "next", &l.node_next));
    HV_RETURN_IF_ERROR(off("static_key_mod", "entries", &l.node_entries));
    HV_RETURN_IF_ERROR(off("static_key_mod", "mod", &l.node_mod));
    HV_RETURN_IF_ERROR(off("module", "jump_entries", &l.jump_entries));
    HV_RETURN_IF_ERROR(off("module", "num_jump_entries", &l.num_jump_entries));
    HV_RETURN_IF_ERROR(off("mutex", "owner", &l.mutex_owner));
    return Status::Ok();
  }();
  if (!read.ok()) {
    return read.WithContext("reading the guest's static key layout from BTF")
        .WithHint("static keys in patches need CONFIG_JUMP_LABEL (Linux 6.1's struct static_key_mod)");
  }
  struct Sym {
    const char* name;
    std::uint64_t* out;
  };
  for (const Sym& s : {Sym{"jump_label_mutex", &l.jump_label_mutex}, Sym{"_text", &l.vmlinux_begin},
                       Sym{"_end", &l.vmlinux_end}}) {
    auto r = symbols.Resolve(s.name, "vmlinux", 0);
    if (!r.ok()) return r.status().WithContext("finding the guest's '" + std::string(s.name) + "' for static keys");
    *s.out = r->address;
  }
  return l;
}

std::uint64_t JumpEntryCount(const PatchModule& module) {
  for (const auto& s : module.sections()) {
    if (s.name == "__jump_table") return s.size / kJumpEntrySize;
  }
  return 0;
}

Result<JumpTable> FinishJumpTable(const PatchModule& module, const PatchImage& image, LinkedPatch& linked,
                                  const StaticKeyLayout& layout, const KeyReader& read_key) {
  JumpTable out;
  const PlacedSection* placed = nullptr;
  for (const auto& p : image.sections) {
    if (module.sections()[p.section].name == "__jump_table") placed = &p;
  }
  if (placed == nullptr) return out;
  if (placed->size % kJumpEntrySize != 0) {
    return InvalidArgument("section '__jump_table' is " + std::to_string(placed->size) + " bytes, not a multiple of " +
                           std::to_string(kJumpEntrySize));
  }
  const std::uint64_t va = linked.base[static_cast<std::size_t>(placed->memory)] + placed->offset;
  MemoryClass cls;
  std::uint8_t* table = LinkedAt(linked, va, placed->size, &cls);
  if (table == nullptr) return Internal("section '__jump_table' is not in the linked image");
  struct Entry {
    std::uint64_t code, target, key;
    bool branch;
  };
  const std::size_t n = placed->size / kJumpEntrySize;
  std::vector<Entry> entries(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t at = va + i * kJumpEntrySize;
    const std::uint8_t* e = table + i * kJumpEntrySize;
    const std::uint64_t raw = at + 8 + static_cast<std::uint64_t>(Get64(e + 8));
    entries[i] = {at + static_cast<std::uint64_t>(static_cast<std::int64_t>(Get32(e))),
                  at + 4 + static_cast<std::uint64_t>(static_cast<std::int64_t>(Get32(e + 4))), raw & ~kTypeMask,
                  (raw & kEntryBranch) != 0};
    for (std::uint64_t where : {entries[i].code, entries[i].target}) {
      MemoryClass c;
      if (LinkedAt(linked, where, 1, &c) == nullptr || c != MemoryClass::kCode) {
        return InvalidArgument("__jump_table entry " + std::to_string(i) + " names " + Hex(where) +
                               ", which is not in the patch's code");
      }
    }
    if (entries[i].key < layout.vmlinux_begin || entries[i].key >= layout.vmlinux_end) {
      return Unimplemented("__jump_table entry " + std::to_string(i) + " uses the static key at " + Hex(entries[i].key) +
                           ", which is not vmlinux's (a key of a module or of the patch itself): not supported");
    }
  }
  // jump_label_sort_entries(): by key, then by code.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.key != b.key ? a.key < b.key : a.code < b.code;
  });
  for (std::size_t i = 0; i < n; ++i) {
    const Entry& e = entries[i];
    const std::uint64_t at = va + i * kJumpEntrySize;
    std::uint8_t* p = table + i * kJumpEntrySize;
    const auto code = static_cast<std::int32_t>(static_cast<std::int64_t>(e.code - at));
    const auto target = static_cast<std::int32_t>(static_cast<std::int64_t>(e.target - (at + 4)));
    // Init bit clear (jump_entry_set_init(iter, false)): our code is never init code.
    const std::uint64_t key = (e.key | (e.branch ? kEntryBranch : 0)) & ~kEntryInit;
    const auto rel = static_cast<std::int64_t>(key - (at + 8));
    std::memcpy(p, &code, 4);
    std::memcpy(p + 4, &target, 4);
    std::memcpy(p + 8, &rel, 8);
    if (out.keys.empty() || out.keys.back() != e.key) {
      HV_ASSIGN_OR_RETURN(std::int32_t enabled, read_key(e.key));
      out.keys.push_back(e.key);
      out.enabled.push_back(enabled != 0);  // static_key_count(): -1 (first enable in progress) counts as on
      out.first.push_back(at);
    }
    // The site, in its key's state: jump_label_type() = enabled ^ branch.
    const bool jump = out.enabled.back() != e.branch;
    MemoryClass c;
    std::uint8_t* site = LinkedAt(linked, e.code, 2, &c);
    std::uint8_t* site5 = LinkedAt(linked, e.code, 5, &c);
    const std::int64_t d5 = static_cast<std::int64_t>(e.target - (e.code + 5));
    const std::int64_t d2 = static_cast<std::int64_t>(e.target - (e.code + 2));
    std::size_t size = 0;
    if (site5 != nullptr && (std::memcmp(site5, kNop5, 5) == 0 || (site5[0] == 0xe9 && Get32(site5 + 1) == d5))) {
      size = 5;
    } else if (site != nullptr &&
               (std::memcmp(site, kNop2, 2) == 0 || (site[0] == 0xeb && static_cast<std::int8_t>(site[1]) == d2))) {
      size = 2;
    } else {
      return InvalidArgument("jump label site " + Hex(e.code) + " holds neither a nop nor a jmp to its target " +
                             Hex(e.target));
    }
    if (size == 5) {
      if (jump) {
        const auto d = static_cast<std::int32_t>(d5);
        site5[0] = 0xe9;
        std::memcpy(site5 + 1, &d, 4);
      } else {
        std::memcpy(site5, kNop5, 5);
      }
    } else {
      if (jump) {
        site[0] = 0xeb;
        site[1] = static_cast<std::uint8_t>(static_cast<std::int8_t>(d2));
      } else {
        std::memcpy(site, kNop2, 2);
      }
    }
  }
  out.va = va;
  out.count = static_cast<std::uint32_t>(n);
  return out;
}

Status LinkStaticKeys(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t module_va, std::uint64_t nodes_va,
                      const std::vector<bool>& planned) {
  HV_RETURN_IF_ERROR(MutexFree(mem, l));
  std::vector<std::uint64_t> firsts;
  HV_ASSIGN_OR_RETURN(std::vector<std::uint64_t> keys, ModuleKeys(mem, l, module_va, &firsts));
  if (keys.size() != planned.size()) {
    return Internal("the shadow module has " + std::to_string(keys.size()) + " static keys, the plan " +
                    std::to_string(planned.size()));
  }
  for (std::size_t k = 0; k < keys.size(); ++k) {
    const std::uint64_t key = keys[k];
    HV_ASSIGN_OR_RETURN(std::uint32_t enabled, mem.Read32(key + l.key_enabled));
    if ((enabled != 0) != planned[k]) {
      return Busy("static key " + Hex(key) + " was switched " + (planned[k] ? "off" : "on") +
                  " after the patch was planned (its code was written for the old state): apply again");
    }
    HV_ASSIGN_OR_RETURN(std::uint64_t type, mem.Read64(key + l.key_type));
    const std::uint64_t own = nodes_va + 2 * k * l.node_size;
    const std::uint64_t vm = own + l.node_size;
    std::uint64_t head = type & ~kTypeMask;
    if ((type & kTypeLinked) == 0) {
      // jump_label_add_module(): the key's own entries move into a node of their own (mod NULL).
      HV_RETURN_IF_ERROR(mem.Write64(vm + l.node_next, 0));
      HV_RETURN_IF_ERROR(mem.Write64(vm + l.node_entries, head));
      HV_RETURN_IF_ERROR(mem.Write64(vm + l.node_mod, 0));
      head = vm;
    } else if (head == 0) {
      return FailedPrecondition("static key " + Hex(key) + " is linked but has no node list");
    }
    HV_RETURN_IF_ERROR(mem.Write64(own + l.node_next, head));
    HV_RETURN_IF_ERROR(mem.Write64(own + l.node_entries, firsts[k]));
    HV_RETURN_IF_ERROR(mem.Write64(own + l.node_mod, module_va));
    HV_RETURN_IF_ERROR(mem.Write64(key + l.key_type, own | (type & kTypeTrue) | kTypeLinked));
  }
  return Status::Ok();
}

Status UnlinkStaticKeys(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t module_va, std::uint64_t nodes_va,
                        bool* keep_memory) {
  *keep_memory = false;
  HV_RETURN_IF_ERROR(MutexFree(mem, l));
  HV_ASSIGN_OR_RETURN(std::vector<std::uint64_t> keys, ModuleKeys(mem, l, module_va, nullptr));
  for (std::size_t k = 0; k < keys.size(); ++k) {
    const std::uint64_t key = keys[k];
    const std::uint64_t own = nodes_va + 2 * k * l.node_size;
    const std::uint64_t vm = own + l.node_size;
    // A key without our node was never linked to this module: LinkStaticKeys writes the key
    // word after the nodes, so an apply that died in the middle of its writes leaves each key
    // either untouched or linked (crash recovery undoes such an apply with this function).
    HV_ASSIGN_OR_RETURN(std::uint64_t type, mem.Read64(key + l.key_type));
    if ((type & kTypeLinked) == 0) continue;
    HV_ASSIGN_OR_RETURN(std::vector<Node> nodes, Nodes(mem, l, key, type));
    auto it = std::find_if(nodes.begin(), nodes.end(), [&](const Node& n) { return n.va == own; });
    if (it == nodes.end()) continue;
    if (it->mod != module_va) {
      return FailedPrecondition("static key " + Hex(key) + " lists node " + Hex(own) + " of the shadow module at " +
                                Hex(module_va) + " for module " + Hex(it->mod));
    }
    if (it->entries == 0) continue;  // a tombstone already (an interrupted revert's)
    std::vector<Node> others;
    for (const Node& n : nodes) {
      if (n.va != own) others.push_back(n);
    }
    const bool vm_is_ours = std::any_of(others.begin(), others.end(), [&](const Node& n) { return n.va == vm; });
    if (vm_is_ours && others.size() >= 2) {
      // Guest nodes joined: the guest would kfree our vmlinux node once it is last. Keep two of
      // ours on the list for good, the own node inert.
      HV_RETURN_IF_ERROR(mem.Write64(own + l.node_entries, 0));
      *keep_memory = true;
      continue;
    }
    if (others.empty()) return FailedPrecondition("static key " + Hex(key) + " lists only the shadow module");
    // Unlink our node (static_key_set_mod() keeps the type bits).
    if (it == nodes.begin()) {
      HV_RETURN_IF_ERROR(mem.Write64(key + l.key_type, it->next | (type & kTypeMask)));
    } else {
      HV_RETURN_IF_ERROR(mem.Write64((it - 1)->va + l.node_next, it->next));
    }
    if (others.size() == 1) {
      // Fold back, as jump_label_del_module() does when one node is left. A guest-allocated
      // node (the key was linked before the apply) is left to leak: the host cannot kfree().
      HV_RETURN_IF_ERROR(mem.Write64(key + l.key_type, others[0].entries | (type & kTypeTrue)));
    }
  }
  return Status::Ok();
}

Result<StaticKeyState> ReadStaticKey(KernelWords& mem, const StaticKeyLayout& l, std::uint64_t key_va) {
  StaticKeyState s;
  HV_ASSIGN_OR_RETURN(s.type, mem.Read64(key_va + l.key_type));
  if (s.type & kTypeLinked) {
    HV_ASSIGN_OR_RETURN(std::vector<Node> nodes, Nodes(mem, l, key_va, s.type));
    for (const Node& n : nodes) {
      s.nodes.push_back(n.va);
      s.node_entries.push_back(n.entries);
      s.node_mods.push_back(n.mod);
    }
  }
  return s;
}

}  // namespace hv::patcher
