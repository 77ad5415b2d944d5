#include "builder/kernel_object.h"

#include <elf.h>

#include <algorithm>

#include "base/hex.h"

namespace hv::builder {

namespace {

using patcher::ModuleRelocation;
using patcher::ModuleSection;
using patcher::ModuleSymbol;

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

bool IsInitSection(std::string_view n) {
  return StartsWith(n, ".init.") || StartsWith(n, ".exit.") || n == ".init.text" || n == ".exit.text";
}

// A mergeable string section (.rodata.str1.1, .rodata.<fn>.str1.8, ...).
bool IsStringSection(const ModuleSection& s) {
  return (s.flags & SHF_MERGE) != 0 && (s.flags & SHF_STRINGS) != 0;
}

std::string Printable(std::string_view t) {
  std::string out;
  for (char c : t) {
    if (c == '\n') out += "\\n";
    else if (c == '"' || c == '\\') { out += '\\'; out += c; }
    else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) out += "\\x" + Hex(static_cast<unsigned char>(c)).substr(2);
    else out += c;
  }
  return out;
}

}  // namespace

std::string CanonicalName(std::string_view name) {
  std::string out;
  std::size_t i = 0;
  while (i < name.size()) {
    if (name[i] == '.' && i + 1 < name.size() && name[i + 1] >= '0' && name[i + 1] <= '9') {
      std::size_t j = i + 1;
      while (j < name.size() && name[j] >= '0' && name[j] <= '9') ++j;
      if (j == name.size() || name[j] == '.') {
        out += ".N";
        i = j;
        continue;
      }
    }
    out += name[i++];
  }
  return out;
}

std::string_view BaseFunctionName(std::string_view name) {
  const auto dot = name.find('.');
  return dot == std::string_view::npos ? name : name.substr(0, dot);
}

bool IsColdPart(std::string_view name) {
  return name.size() > 5 && name.substr(name.size() - 5) == ".cold";
}

std::size_t RelocationWidth(std::uint32_t type) {
  switch (type) {
    case R_X86_64_64: case R_X86_64_PC64: return 8;
    case R_X86_64_PC32: case R_X86_64_PLT32: case R_X86_64_32: case R_X86_64_32S: return 4;
    default: return 0;
  }
}

bool IsPcRelative(std::uint32_t type) {
  return type == R_X86_64_PC32 || type == R_X86_64_PLT32 || type == R_X86_64_PC64;
}

std::string RelocTarget::Key() const {
  switch (kind) {
    case Kind::kSymbol: return "sym:" + CanonicalName(name) + "+" + std::to_string(offset);
    case Kind::kString: return "str:" + text + "+" + std::to_string(offset);
    case Kind::kSection: return "sec:" + CanonicalName(name) + "+" + std::to_string(offset);
  }
  return {};
}

std::string RelocTarget::Describe() const {
  const std::string off = offset == 0 ? "" : (offset > 0 ? " + " + Hex(static_cast<std::uint64_t>(offset))
                                                         : " - " + Hex(static_cast<std::uint64_t>(-offset)));
  switch (kind) {
    case Kind::kSymbol: return "'" + name + "'" + off;
    case Kind::kString: return "string \"" + Printable(text) + "\"" + off;
    case Kind::kSection: return "section '" + name + "'" + off;
  }
  return {};
}

Result<KernelObject> KernelObject::Read(std::span<const std::uint8_t> bytes, std::string_view file_name) {
  KernelObject o;
  o.file_name_ = std::string(file_name);
  HV_ASSIGN_OR_RETURN(o.elf_, patcher::ReadRelocatableElf(bytes, file_name));
  const auto& secs = o.elf_.sections;
  for (const ModuleSymbol& sym : o.elf_.symbols) {
    if (StartsWith(sym.name, "__ksymtab_") && !StartsWith(sym.name, "__ksymtab_strings")) {
      o.exports_.push_back(sym.name.substr(10));
    }
    if (sym.type != STT_FUNC && sym.type != STT_OBJECT) continue;
    if (sym.section == SHN_UNDEF || sym.section >= secs.size() || sym.size == 0) continue;
    const ModuleSection& s = secs[sym.section];
    if (!s.allocated()) continue;
    if (sym.value > s.size || sym.size > s.size - sym.value) {
      return InvalidArgument("symbol '" + sym.name + "' runs past the end of section '" + s.name + "'")
          .WithContext("reading object '" + o.file_name_ + "'");
    }
    ObjectEntity e;
    e.name = sym.name;
    e.function = sym.type == STT_FUNC;
    e.global = sym.binding != STB_LOCAL;
    e.section = sym.section;
    e.section_name = s.name;
    e.value = sym.value;
    e.size = sym.size;
    e.writable = s.writable();
    e.nobits = s.type == SHT_NOBITS;
    e.init = IsInitSection(s.name);
    if (!e.nobits) e.bytes.assign(s.bytes.begin() + sym.value, s.bytes.begin() + sym.value + sym.size);
    for (const ModuleRelocation& r : s.relocations) {
      if (r.offset < sym.value || r.offset - sym.value >= sym.size) continue;
      ObjectRelocation rel;
      rel.offset = r.offset - sym.value;
      rel.type = r.type;
      rel.addend = r.addend;
      rel.symbol = r.symbol;
      rel.target = o.TargetOf(r);
      e.relocations.push_back(std::move(rel));
    }
    o.entities_.push_back(std::move(e));
  }
  std::stable_sort(o.entities_.begin(), o.entities_.end(),
                   [](const ObjectEntity& a, const ObjectEntity& b) { return a.function > b.function; });
  for (std::size_t i = 0; i < o.entities_.size(); ++i) o.by_canonical_[CanonicalName(o.entities_[i].name)].push_back(i);
  return o;
}

const ObjectEntity* KernelObject::Find(std::string_view name) const {
  for (const auto& e : entities_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

const ObjectEntity* KernelObject::FindCanonical(std::string_view canonical) const {
  auto it = by_canonical_.find(canonical);
  if (it == by_canonical_.end() || it->second.size() != 1) return nullptr;
  return &entities_[it->second[0]];
}

RelocTarget KernelObject::TargetOf(const ModuleRelocation& r) const {
  const ModuleSymbol& sym = elf_.symbols[r.symbol];
  RelocTarget t;
  const bool in_object = sym.section != SHN_UNDEF && sym.section < elf_.sections.size();
  // A named function or object, or an undefined symbol: the name says it all.
  if (!in_object || (sym.type != STT_SECTION && !sym.name.empty() && sym.type != STT_NOTYPE)) {
    t.kind = RelocTarget::Kind::kSymbol;
    t.name = sym.name;
    t.offset = r.addend;
    return t;
  }
  // A section symbol (or a local label): the assembler turned a reference to a local symbol into
  // section + offset. Find what lives there. PC-relative references mean the place 4 bytes on
  // (the end of the rel32 field) in the usual `insn ..., sym(%rip)` form.
  const ModuleSection& s = elf_.sections[sym.section];
  const std::int64_t pc = IsPcRelative(r.type) ? 4 : 0;
  const std::int64_t place = static_cast<std::int64_t>(sym.value) + r.addend + pc;
  if (IsStringSection(s) && place >= 0 && static_cast<std::uint64_t>(place) < s.bytes.size()) {
    std::size_t start = static_cast<std::size_t>(place);
    while (start > 0 && s.bytes[start - 1] != 0) --start;
    std::size_t end = static_cast<std::size_t>(place);
    while (end < s.bytes.size() && s.bytes[end] != 0) ++end;
    t.kind = RelocTarget::Kind::kString;
    t.text.assign(reinterpret_cast<const char*>(s.bytes.data()) + start, end - start);
    t.offset = place - static_cast<std::int64_t>(start) - pc;
    return t;
  }
  // An instruction with an immediate after its rel32 field (`addl $1, x(%rip)`) means a place up
  // to 4 bytes further on than the usual form: look there too, nearest first.
  for (std::int64_t extra = 0; extra <= (pc != 0 ? 4 : 0); ++extra) {
    for (const ModuleSymbol& cand : elf_.symbols) {
      if (cand.section != sym.section || (cand.type != STT_FUNC && cand.type != STT_OBJECT)) continue;
      const auto v = static_cast<std::int64_t>(cand.value);
      if (place + extra >= v && place + extra < v + static_cast<std::int64_t>(std::max<std::uint64_t>(cand.size, 1))) {
        t.kind = RelocTarget::Kind::kSymbol;
        t.name = cand.name;
        t.offset = static_cast<std::int64_t>(sym.value) + r.addend - v;
        return t;
      }
    }
  }
  t.kind = RelocTarget::Kind::kSection;
  t.name = s.name;
  t.offset = static_cast<std::int64_t>(sym.value) + r.addend;
  return t;
}

}  // namespace hv::builder
