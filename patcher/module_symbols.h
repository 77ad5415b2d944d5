// Symbols of the guest's loaded modules, from the kernel's own module list.
//
// Linux 6.1 (kernel/module/kallsyms.c): `modules` is the list head of struct module.list. Each
// module's `kallsyms` points at its struct mod_kallsyms {symtab, num_symtab, strtab, typetab}:
// an Elf64_Sym array, its string table and one nm-style type letter per symbol (lower case).
// /proc/kallsyms shows a symbol in upper case when the module exports it under that name and
// value through its non-GPL table (is_exported(): mod->syms[0..num_syms), struct kernel_symbol
// with 32-bit place-relative offsets on x86-64), and skips modules still MODULE_STATE_UNFORMED
// and symbols with no name. Undefined (SHN_UNDEF) entries are skipped too: /proc/kallsyms only
// lists the core symbols, which exclude them, and livepatch's module sympos ignores them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_btf.h"
#include "patcher/kernel_memory.h"
#include "patcher/symbol_table.h"

namespace hv::patcher {

struct ModuleLayout {
  std::uint64_t list = 0, name = 0, name_size = 56, state = 0, kallsyms = 0;
  std::uint64_t ks_symtab = 0, ks_num_symtab = 0, ks_strtab = 0, ks_typetab = 0;
  std::uint64_t syms = 0, num_syms = 0;
  std::uint64_t ksym_size = 12;  // struct kernel_symbol
  bool ksym_relative = true;     // value_offset/name_offset (PREL32) or value/name pointers
  std::uint64_t ksym_value = 0, ksym_name = 4;
  std::uint64_t core_base = 0, core_size = 0;  // core_layout.base/size, to bound the last size
  bool has_core_layout = false;

  // Errors: kNotFound naming the first missing struct module member.
  static Result<ModuleLayout> FromBtf(const KernelBtf& btf);
};

struct GuestModule {
  std::string name;
  std::uint64_t address = 0;  // struct module
  std::uint64_t core_base = 0, core_size = 0;
  SymbolList symbols;  // symtab order, defined and named ones only
};

class ModuleReader {
 public:
  static constexpr std::size_t kMaxModules = 8192;
  static constexpr std::uint32_t kMaxSymbolsPerModule = 1u << 20;

  explicit ModuleReader(ModuleLayout layout) : layout_(std::move(layout)) {}

  // Walks the list at `modules_head` (the `modules` symbol). Errors (kInvalidArgument): a cycle,
  // more than kMaxModules modules, a num_symtab over kMaxSymbolsPerModule; read errors with the
  // module named in the context.
  Result<std::vector<GuestModule>> Read(const KernelMemory& mem, std::uint64_t modules_head) const;

 private:
  Result<GuestModule> ReadOne(const KernelMemory& mem, std::uint64_t module) const;

  ModuleLayout layout_;
};

}  // namespace hv::patcher
