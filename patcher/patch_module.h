// A livepatch-style kernel module (.ko), read from untrusted bytes: its sections, symbols and
// relocations, and the klp_patch -> klp_object[] -> klp_func[] tables that say which guest
// functions it replaces.
//
// The klp structures are read with the layout of Linux 6.1's include/linux/livepatch.h on x86-64
// (the headers the test guest's patches build against). The offsets are the ABI of those headers:
//   struct klp_func   (152 bytes): old_name @0, new_func @8, old_sympos @16, then internal state
//                     (old_func, kobject (64 bytes), two list_heads, old/new_size, three bools).
//   struct klp_object (168 bytes): name @0, funcs @8, callbacks @16 (pre_patch, post_patch,
//                     pre_unpatch, post_unpatch, post_unpatch_enabled: 40 bytes), then internal
//                     state (kobject, two list_heads, mod, two bools).
//   struct klp_patch  (200 bytes): mod @0, objs @8, states @16, replace @24, then internal state.
// The sizes are checked against the array symbols' st_size when the compiler emitted them, so a
// patch built against a different layout is refused instead of misread.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

// One RELA entry, attached to the section it patches.
struct ModuleRelocation {
  std::uint64_t offset = 0;  // r_offset, within the target section (checked: < section size)
  std::uint32_t type = 0;    // ELF64_R_TYPE
  std::uint32_t symbol = 0;  // ELF64_R_SYM (checked: < number of symbols)
  std::int64_t addend = 0;
  std::string rela_section;  // e.g. ".rela.text", for messages
  std::uint32_t entry = 0;   // index in rela_section, for messages
};

struct ModuleSection {
  std::string name;
  std::uint32_t type = 0;   // SHT_*
  std::uint64_t flags = 0;  // SHF_*
  std::uint64_t size = 0;
  std::uint64_t align = 1;
  // The contents of SHF_ALLOC PROGBITS sections; empty for NOBITS and non-allocated sections.
  std::vector<std::uint8_t> bytes;
  // Relocations that apply to this section, for SHF_ALLOC sections only, sorted by offset.
  std::vector<ModuleRelocation> relocations;

  bool allocated() const;
  bool executable() const;
  bool writable() const;
};

struct ModuleSymbol {
  std::string name;
  std::uint8_t type = 0;      // STT_*
  std::uint8_t binding = 0;   // STB_*
  std::uint16_t section = 0;  // st_shndx (checked: a valid section index, or a special index)
  std::uint64_t value = 0;
  std::uint64_t size = 0;
};

// One struct klp_func entry, with the object it belongs to.
struct KlpFunction {
  std::string old_name;        // the guest function to replace
  std::uint64_t old_sympos = 0;  // livepatch's old_sympos: 0 = unique name
  std::string object;          // "vmlinux" (klp_object.name NULL) or a module name
  std::string new_symbol;      // the replacement function's symbol in the patch
  std::uint32_t new_section = 0;  // where the replacement function lives
  std::uint64_t new_offset = 0;
  std::uint64_t new_size = 0;
};

// A byte range of the module that must never reach the guest: the klp tables and the module's
// init/exit functions (they only matter to an in-guest load).
struct MetadataRange {
  std::uint32_t section = 0;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::string what;  // "klp_func array 'hvp_sample_funcs'", "module init function 'hvp_sample_init'"
};

class PatchModule {
 public:
  // Parses `bytes` (a whole .ko file). `file_name` names it in messages and is the fallback for the
  // patch name when .modinfo has no `name=` tag.
  // Every field is validated (sizes, offsets, indices, string bounds, loop counts); nothing in the
  // input can crash or hang the loader.
  // Errors (all prefixed with "loading patch 'FILE'"):
  //  - kInvalidArgument: not an ELF64 x86-64 relocatable object, truncated or corrupt headers,
  //    section table, symbols, relocations or strings; not a livepatch module (no
  //    MODULE_INFO(livepatch, "Y")); no or several klp_patch structures; malformed klp tables
  //    (old_name not a string in read-only data, new_func not a function, array sizes that do not
  //    match Linux 6.1's struct layouts, duplicate functions).
  //  - kUnimplemented: valid livepatch features hvpatch does not support yet (klp_object
  //    callbacks, klp_patch.states).
  static Result<PatchModule> Load(std::span<const std::uint8_t> bytes, std::string_view file_name);

  // The patch name, as /sys/kernel/livepatch/<name> shows it: the module name.
  const std::string& name() const { return name_; }
  // klp_patch.replace: an atomic-replace (cumulative) patch.
  bool replace() const { return replace_; }
  // The functions to replace, in klp table order (object by object).
  const std::vector<KlpFunction>& functions() const { return functions_; }
  const std::vector<ModuleSection>& sections() const { return sections_; }
  const std::vector<ModuleSymbol>& symbols() const { return symbols_; }
  const std::vector<MetadataRange>& metadata() const { return metadata_; }

  // The metadata range covering `offset` in `section`, or nullptr.
  const MetadataRange* FindMetadata(std::uint32_t section, std::uint64_t offset) const;
  // The FUNC or OBJECT symbol covering `offset` in `section`, or nullptr.
  const ModuleSymbol* FindSymbolAt(std::uint32_t section, std::uint64_t offset) const;
  // Names a place for messages: "function 'hvp_foo'", "object 'counter'", or
  // "section '.text' offset 0x12".
  std::string DescribePlace(std::uint32_t section, std::uint64_t offset) const;

 private:
  friend class PatchModuleParser;

  std::string name_;
  bool replace_ = false;
  std::vector<KlpFunction> functions_;
  std::vector<ModuleSection> sections_;
  std::vector<ModuleSymbol> symbols_;
  std::vector<MetadataRange> metadata_;
};

// A relocatable ELF object (a kernel .o or .ko) as the patch loader reads it: every section (the
// bytes of allocated PROGBITS ones, the relocations of allocated ones) and every symbol, with the
// same bounds checks as PatchModule::Load. It is the one ELF reader of hvpatch: the builder
// (builder/) compares kernel objects with it, so the loader and the builder agree on what a
// section, a symbol and a relocation are.
// Errors (prefixed "reading object 'FILE'"): kInvalidArgument for anything malformed (see Load).
struct RelocatableElf {
  std::vector<ModuleSection> sections;
  std::vector<ModuleSymbol> symbols;
};
Result<RelocatableElf> ReadRelocatableElf(std::span<const std::uint8_t> bytes, std::string_view file_name);

// The API's entry point: PatchModule::Load.
inline Result<PatchModule> LoadPatchModule(std::span<const std::uint8_t> bytes,
                                           std::string_view file_name) {
  return PatchModule::Load(bytes, file_name);
}

}  // namespace hv::patcher
