#include "patcher/module_symbols.h"

#include <cctype>
#include <cstring>
#include <set>
#include <unordered_set>

#include "base/hex.h"

namespace hv::patcher {
namespace {

constexpr std::uint32_t kModuleStateUnformed = 3;  // enum module_state
constexpr std::size_t kElfSymSize = 24;             // Elf64_Sym
constexpr std::uint16_t kShnUndef = 0;
constexpr std::size_t kMaxSymbolName = 512;         // KSYM_NAME_LEN

template <typename T>
T Load(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

Result<ModuleLayout> ModuleLayout::FromBtf(const KernelBtf& btf) {
  ModuleLayout l;
#define HV_MODULE_FIELD(dst, type, path)                                          \
  do {                                                                            \
    Result<std::uint64_t> r_ = btf.Offset(type, path);                            \
    if (!r_.ok()) return r_.status().WithContext("module layout");               \
    dst = *r_;                                                                    \
  } while (0)
  HV_MODULE_FIELD(l.list, "module", "list");
  HV_MODULE_FIELD(l.name, "module", "name");
  HV_MODULE_FIELD(l.state, "module", "state");
  HV_MODULE_FIELD(l.kallsyms, "module", "kallsyms");
  HV_MODULE_FIELD(l.syms, "module", "syms");
  HV_MODULE_FIELD(l.num_syms, "module", "num_syms");
  HV_MODULE_FIELD(l.ks_symtab, "mod_kallsyms", "symtab");
  HV_MODULE_FIELD(l.ks_num_symtab, "mod_kallsyms", "num_symtab");
  HV_MODULE_FIELD(l.ks_strtab, "mod_kallsyms", "strtab");
  HV_MODULE_FIELD(l.ks_typetab, "mod_kallsyms", "typetab");
  if (btf.HasMember("kernel_symbol", "value_offset")) {
    l.ksym_relative = true;
    HV_MODULE_FIELD(l.ksym_value, "kernel_symbol", "value_offset");
    HV_MODULE_FIELD(l.ksym_name, "kernel_symbol", "name_offset");
  } else {
    l.ksym_relative = false;
    HV_MODULE_FIELD(l.ksym_value, "kernel_symbol", "value");
    HV_MODULE_FIELD(l.ksym_name, "kernel_symbol", "name");
  }
#undef HV_MODULE_FIELD
  if (auto size = btf.TypeSize("kernel_symbol"); size.ok() && *size > 0 && *size <= 64) {
    l.ksym_size = *size;
  }
  if (auto size = btf.MemberSize("module", "name"); size.ok() && *size > 0 && *size <= 256) {
    l.name_size = *size;
  }
  if (btf.HasMember("module", "core_layout.base") && btf.HasMember("module", "core_layout.size")) {
    l.core_base = *btf.Offset("module", "core_layout.base");
    l.core_size = *btf.Offset("module", "core_layout.size");
    l.has_core_layout = true;
  }
  return l;
}

Result<std::vector<GuestModule>> ModuleReader::Read(const KernelMemory& mem,
                                                    std::uint64_t modules_head) const {
  std::vector<GuestModule> out;
  std::unordered_set<std::uint64_t> seen;
  std::uint64_t node = modules_head;
  for (std::size_t steps = 0;; ++steps) {
    Result<std::uint64_t> next = mem.ReadU64(node);
    if (!next.ok()) return next.status().WithContext("walking the module list at " + Hex(node));
    node = *next;
    if (node == modules_head) return out;
    if (steps >= kMaxModules) {
      return InvalidArgument("the module list has more than " + std::to_string(kMaxModules) +
                             " entries");
    }
    if (!seen.insert(node).second) return InvalidArgument("cycle in the module list at " + Hex(node));
    const std::uint64_t module = node - layout_.list;
    Result<std::uint32_t> state = mem.ReadU32(module + layout_.state);
    if (!state.ok()) return state.status().WithContext("reading module at " + Hex(module));
    if (*state == kModuleStateUnformed) continue;  // not yet visible to kallsyms
    HV_ASSIGN_OR_RETURN(GuestModule m, ReadOne(mem, module));
    out.push_back(std::move(m));
  }
}

Result<GuestModule> ModuleReader::ReadOne(const KernelMemory& mem, std::uint64_t module) const {
  const ModuleLayout& l = layout_;
  GuestModule m;
  m.address = module;
  Result<std::string> name = mem.ReadCharArray(module + l.name, l.name_size);
  if (!name.ok()) return name.status().WithContext("reading module name at " + Hex(module));
  m.name = *name;
  auto ctx = [&](const Status& s) { return s.WithContext("module '" + m.name + "'"); };
  if (m.name.empty()) return InvalidArgument("module at " + Hex(module) + " has an empty name");
  if (l.has_core_layout) {
    Result<std::uint64_t> base = mem.ReadU64(module + l.core_base);
    Result<std::uint32_t> size = mem.ReadU32(module + l.core_size);
    if (base.ok() && size.ok()) {
      m.core_base = *base;
      m.core_size = *size;
    }
  }

  Result<std::uint64_t> ks = mem.ReadU64(module + l.kallsyms);
  if (!ks.ok()) return ctx(ks.status());
  Result<std::uint64_t> symtab = mem.ReadU64(*ks + l.ks_symtab);
  Result<std::uint32_t> num = mem.ReadU32(*ks + l.ks_num_symtab);
  Result<std::uint64_t> strtab = mem.ReadU64(*ks + l.ks_strtab);
  Result<std::uint64_t> typetab = mem.ReadU64(*ks + l.ks_typetab);
  for (const Status* s : {&symtab.status(), &num.status(), &strtab.status(), &typetab.status()}) {
    if (!s->ok()) return ctx(s->WithContext("reading mod_kallsyms"));
  }
  if (*num > kMaxSymbolsPerModule) {
    return InvalidArgument("module '" + m.name + "' num_symtab " + std::to_string(*num) +
                           " exceeds the limit of " + std::to_string(kMaxSymbolsPerModule));
  }
  std::vector<std::uint8_t> syms(kElfSymSize * *num), types(*num);
  HV_RETURN_IF_ERROR(ctx(mem.Read(*symtab, syms).WithContext("reading symtab")));
  HV_RETURN_IF_ERROR(ctx(mem.Read(*typetab, types).WithContext("reading typetab")));

  // Exported (non-GPL) symbols: shown in upper case by /proc/kallsyms.
  std::set<std::pair<std::string, std::uint64_t>> exported;
  Result<std::uint64_t> ex = mem.ReadU64(module + l.syms);
  Result<std::uint32_t> num_ex = mem.ReadU32(module + l.num_syms);
  if (!ex.ok() || !num_ex.ok()) return ctx(InvalidArgument("unreadable export table"));
  if (*num_ex > *num) {
    return InvalidArgument("module '" + m.name + "' exports " + std::to_string(*num_ex) +
                           " symbols but has " + std::to_string(*num));
  }
  if (*num_ex > 0) {
    std::vector<std::uint8_t> table(l.ksym_size * *num_ex);
    HV_RETURN_IF_ERROR(ctx(mem.Read(*ex, table).WithContext("reading the export table")));
    for (std::uint32_t i = 0; i < *num_ex; ++i) {
      const std::uint8_t* e = table.data() + l.ksym_size * i;
      const std::uint64_t entry = *ex + l.ksym_size * i;
      std::uint64_t value, name_at;
      if (l.ksym_relative) {
        value = entry + l.ksym_value + static_cast<std::int64_t>(Load<std::int32_t>(e + l.ksym_value));
        name_at = entry + l.ksym_name + static_cast<std::int64_t>(Load<std::int32_t>(e + l.ksym_name));
      } else {
        value = Load<std::uint64_t>(e + l.ksym_value);
        name_at = Load<std::uint64_t>(e + l.ksym_name);
      }
      Result<std::string> n = mem.ReadCString(name_at, kMaxSymbolName);
      if (!n.ok()) return ctx(n.status().WithContext("reading export " + std::to_string(i)));
      exported.emplace(std::move(*n), value);
    }
  }

  for (std::uint32_t i = 0; i < *num; ++i) {
    const std::uint8_t* s = syms.data() + kElfSymSize * i;
    const std::uint32_t st_name = Load<std::uint32_t>(s);
    const std::uint16_t shndx = Load<std::uint16_t>(s + 6);
    if (shndx == kShnUndef || st_name == 0) continue;
    Result<std::string> n = mem.ReadCString(*strtab + st_name, kMaxSymbolName);
    if (!n.ok()) return ctx(n.status().WithContext("reading the name of symbol " + std::to_string(i)));
    if (n->empty()) continue;
    const std::uint64_t address = Load<std::uint64_t>(s + 8);
    char type = static_cast<char>(types[i]);
    if (exported.count({*n, address})) type = static_cast<char>(std::toupper(static_cast<unsigned char>(type)));
    m.symbols.Add(*n, address, type);
  }
  return m;
}

}  // namespace hv::patcher
