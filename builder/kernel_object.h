// A kernel object file (.o built with -ffunction-sections -fdata-sections) as the builder sees
// it: its functions and data objects, each in a section of its own, and every relocation of a
// function turned into what it *means* (a named symbol, a string literal, a place in a section),
// so that two builds of one source file can be compared although the assembler numbers local
// labels, string sections and gcc's clones (.isra.N, .constprop.N, .part.N, __func__.N) afresh.
//
// It is read by patcher's one ELF reader (ReadRelocatableElf): the builder and the patch loader
// agree on sections, symbols and relocations.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "patcher/patch_module.h"

namespace hv::builder {

// What a relocation refers to, independent of symbol and section numbering.
struct RelocTarget {
  enum class Kind {
    kSymbol,   // a named function or object (or an undefined symbol): `name` + `offset`
    kString,   // a string literal in a mergeable string section: `text` + `offset` into it
    kSection,  // a place in a section that no symbol covers: `name` (the section) + `offset`
  };
  Kind kind = Kind::kSymbol;
  std::string name;
  std::string text;
  std::int64_t offset = 0;  // for PC-relative types, from the place the instruction means (+4)

  // A stable key for comparisons: canonical names (CanonicalName), the string's bytes.
  std::string Key() const;
  // For messages: "'kfree'", "string \"foo\\n\"", "section '.rodata' + 0x10".
  std::string Describe() const;
};

struct ObjectRelocation {
  std::uint64_t offset = 0;  // within the function or object
  std::uint32_t type = 0;
  std::int64_t addend = 0;   // the raw ELF addend
  std::uint32_t symbol = 0;  // the raw symbol index (for the writer)
  RelocTarget target;
};

// A function or data object: one STT_FUNC/STT_OBJECT symbol with a size.
struct ObjectEntity {
  std::string name;
  bool function = false;
  bool global = false;  // STB_GLOBAL/STB_WEAK
  std::uint32_t section = 0;
  std::string section_name;
  std::uint64_t value = 0;
  std::uint64_t size = 0;
  bool writable = false;   // .data/.bss
  bool nobits = false;     // .bss
  bool init = false;       // .init.text / .init.data / .init.rodata (freed after boot)
  std::vector<std::uint8_t> bytes;             // empty for .bss
  std::vector<ObjectRelocation> relocations;   // sorted by offset
};

class KernelObject {
 public:
  // Reads `bytes` (a whole .o). `file_name` names it in messages.
  // Errors: the reader's (kInvalidArgument for malformed ELF, prefixed "reading object 'FILE'").
  static Result<KernelObject> Read(std::span<const std::uint8_t> bytes, std::string_view file_name);

  const std::string& file_name() const { return file_name_; }
  const std::vector<ObjectEntity>& entities() const { return entities_; }
  const patcher::RelocatableElf& elf() const { return elf_; }
  // The entity named exactly `name` (functions before objects), or nullptr.
  const ObjectEntity* Find(std::string_view name) const;
  // The entity whose canonical name is `canonical` and unique in this object, or nullptr.
  const ObjectEntity* FindCanonical(std::string_view canonical) const;
  // Names of the symbols this object exports (EXPORT_SYMBOL*: `__ksymtab_NAME` symbols).
  const std::vector<std::string>& exports() const { return exports_; }

  // What relocation `r` (of section `section`) means; see RelocTarget.
  RelocTarget TargetOf(const patcher::ModuleRelocation& r) const;

 private:
  std::string file_name_;
  patcher::RelocatableElf elf_;
  std::vector<ObjectEntity> entities_;
  std::vector<std::string> exports_;
  std::map<std::string, std::vector<std::size_t>, std::less<>> by_canonical_;
};

// gcc's and the assembler's numbering made neutral: every ".<digits>" component becomes ".N"
// ("foo.isra.0" -> "foo.isra.N", "__func__.12" -> "__func__.N", "cpumask.constprop.0.cold" ->
// "cpumask.constprop.N.cold").
std::string CanonicalName(std::string_view name);

// The function a gcc clone or split belongs to: "foo.isra.0" -> "foo", "foo.cold" -> "foo".
std::string_view BaseFunctionName(std::string_view name);
// The cold split of a function ("foo.cold", "foo.isra.0.cold"): not an entry point, so never a
// livepatch target of its own; it travels with its parent.
bool IsColdPart(std::string_view name);

// The width in bytes that relocation `type` writes (0 if the builder does not know the type).
std::size_t RelocationWidth(std::uint32_t type);
bool IsPcRelative(std::uint32_t type);

}  // namespace hv::builder
