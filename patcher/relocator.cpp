#include "patcher/relocator.h"

#include <capstone/capstone.h>
#include <elf.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <optional>

#include "base/hex.h"
#include "patcher/capstone_api.h"

namespace hv::patcher {

namespace {

constexpr std::uint16_t kShnLivepatch = 0xff20;
constexpr std::uint8_t kNop5[5] = {0x0f, 0x1f, 0x44, 0x00, 0x00};

// Sections whose contents need the guest kernel's cooperation.
struct RefusedSection {
  std::string_view name;
  std::string_view what;
  bool prefix;
};
constexpr RefusedSection kRefused[] = {
    {"__ex_table", "exception table", false},
    {".altinstructions", "alternatives", false},
    {".altinstr_replacement", "alternative replacement code", false},
    {".altinstr_aux", "alternatives", false},
    {"__jump_table", "static keys", false},
    {".static_call.text", "static call trampolines", false},
    {".parainstructions", "paravirt patch sites", false},
    {"__bug_table", "BUG/WARN table", false},
    {".data..percpu", "module per-cpu data", false},
    {"__tracepoints", "tracepoints", true},
    {"_ftrace_events", "trace events", false},
    {"_ftrace_eval_map", "trace events", false},
    {"__dyndbg", "dynamic debug", true},
    {"__param", "module parameters", false},
    {"__ksymtab", "exported symbols", true},
    {"__kcrctab", "exported symbols", true},
    {".init_array", "constructors", false},
    {".ctors", "constructors", false},
};

// Metadata for an in-guest loader that is safe to drop (see relocator.h).
constexpr std::string_view kIgnored[] = {
    "__mcount_loc", "__patchable_function_entries", ".return_sites", ".retpoline_sites",
    ".call_sites", ".static_call_sites", ".orc_unwind", ".orc_unwind_ip", ".smp_locks", ".ibt_endbr_seal",
    "_kprobe_blacklist",
};

// The module's plumbing: never copied, and copied code must not refer to it.
struct Plumbing {
  std::string_view name;
  std::string_view what;
};
constexpr Plumbing kPlumbing[] = {
    {".gnu.linkonce.this_module", "the patch's own struct module (THIS_MODULE)"},
    {".modinfo", "module information"},
    {"__versions", "symbol versions"},
    {".init.data", "module init data"},
    {".exit.data", "module exit data"},
};

const RefusedSection* FindRefused(std::string_view name) {
  for (const auto& r : kRefused) {
    if (r.prefix ? name.substr(0, r.name.size()) == r.name : name == r.name) return &r;
  }
  return nullptr;
}

const Plumbing* FindPlumbing(std::string_view name) {
  for (const auto& p : kPlumbing) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

bool IsIgnored(std::string_view name) {
  if (name.substr(0, 9) == ".discard.") return true;
  return std::find(std::begin(kIgnored), std::end(kIgnored), name) != std::end(kIgnored);
}

// Code and data sections a compiler emits for C: their references into copied code are harmless
// when they are not copied themselves (an unused function pointer table, say).
bool IsOrdinary(const ModuleSection& s) {
  const std::string_view n = s.name;
  for (std::string_view p : {".text", ".rodata", ".data", ".bss", ".init.", ".exit.", ".ref.", ".note."}) {
    if (n.substr(0, p.size()) == p) return true;
  }
  return n.size() >= 5 && n.substr(n.size() - 5) == ".text";  // .sched.text, .noinstr.text...
}

bool IsPcRelative(std::uint32_t type) {
  return type == R_X86_64_PC32 || type == R_X86_64_PLT32 || type == R_X86_64_PC64;
}

std::string RelocationTypeName(std::uint32_t type) {
  static const char* const kNames[] = {
      "R_X86_64_NONE", "R_X86_64_64", "R_X86_64_PC32", "R_X86_64_GOT32", "R_X86_64_PLT32",
      "R_X86_64_COPY", "R_X86_64_GLOB_DAT", "R_X86_64_JUMP_SLOT", "R_X86_64_RELATIVE",
      "R_X86_64_GOTPCREL", "R_X86_64_32", "R_X86_64_32S", "R_X86_64_16", "R_X86_64_PC16",
      "R_X86_64_8", "R_X86_64_PC8", "R_X86_64_DTPMOD64", "R_X86_64_DTPOFF64", "R_X86_64_TPOFF64",
      "R_X86_64_TLSGD", "R_X86_64_TLSLD", "R_X86_64_DTPOFF32", "R_X86_64_GOTTPOFF",
      "R_X86_64_TPOFF32", "R_X86_64_PC64", "R_X86_64_GOTOFF64", "R_X86_64_GOTPC32",
      "R_X86_64_GOT64", "R_X86_64_GOTPCREL64", "R_X86_64_GOTPC64", "R_X86_64_GOTPLT64",
      "R_X86_64_PLTOFF64", "R_X86_64_SIZE32", "R_X86_64_SIZE64", "R_X86_64_GOTPC32_TLSDESC",
      "R_X86_64_TLSDESC_CALL", "R_X86_64_TLSDESC", "R_X86_64_IRELATIVE", "R_X86_64_RELATIVE64",
      nullptr, nullptr, "R_X86_64_GOTPCRELX", "R_X86_64_REX_GOTPCRELX"};
  if (type < std::size(kNames) && kNames[type] != nullptr) return kNames[type];
  return "type " + std::to_string(type);
}

MemoryClass ClassOf(const ModuleSection& s) {
  if (s.executable()) return MemoryClass::kCode;
  if (s.writable() && s.name.substr(0, 21) != ".data..ro_after_init") return MemoryClass::kData;
  return MemoryClass::kRodata;
}

// The byte a relocation refers to, for deciding which symbol/range it targets. PC-relative
// instruction operands carry an addend of -4 (the operand's end), so the target is 4 further.
std::uint64_t TargetOffset(const ModuleSymbol& sym, const ModuleRelocation& r) {
  std::uint64_t off = sym.value + static_cast<std::uint64_t>(r.addend);
  if (IsPcRelative(r.type) && r.addend < 0) off += 4;
  return off;
}

// Section symbols have no name of their own: show the section's.
std::string SymbolName(const PatchModule& m, const ModuleSymbol& sym) {
  if (sym.name.empty() && sym.section < m.sections().size()) return m.sections()[sym.section].name;
  return sym.name;
}

std::string Where(const PatchModule& m, std::uint32_t section, const ModuleRelocation& r) {
  return m.DescribePlace(section, r.offset);
}

Status NeedsSection(const std::string& who, const ModuleSection& s, std::string_view what) {
  return Unimplemented(who + " needs section '" + s.name + "' (" + std::string(what) + "): not supported");
}

}  // namespace

const PlacedSection* PatchImage::Find(std::uint32_t section) const {
  for (const auto& p : sections) {
    if (p.section == section) return &p;
  }
  return nullptr;
}

std::uint32_t PatchImage::Pages(MemoryClass c) const {
  return static_cast<std::uint32_t>((size[static_cast<std::size_t>(c)] + kArenaPageSize - 1) / kArenaPageSize);
}

namespace {

constexpr std::string_view kThisModule = ".gnu.linkonce.this_module";

// Tables the shadow module makes work (kernel_tables.h): placed and finished by hvpatch, no
// longer refused when the patch gets a shadow module.
constexpr std::string_view kShadowTables[] = {"__ex_table", ".altinstructions", ".altinstr_replacement",
                                             "__bug_table", "__jump_table"};
bool IsShadowTable(std::string_view name) {
  return std::find(std::begin(kShadowTables), std::end(kShadowTables), name) != std::end(kShadowTables);
}

Result<PatchImage> SelectImageOf(const PatchModule& m, ImageOptions options) {
  const auto& secs = m.sections();
  const auto& syms = m.symbols();
  std::vector<bool> kept(secs.size(), false);
  std::deque<std::uint32_t> work;
  // The shadow module lives in the patch's own struct module section: always placed, never
  // followed (its relocations name the init/exit functions an in-guest load would call).
  std::optional<std::uint32_t> this_module;
  if (options.shadow_module) {
    for (std::uint32_t s = 0; s < secs.size(); ++s) {
      if (secs[s].name == kThisModule && secs[s].allocated() && secs[s].type == SHT_PROGBITS) {
        this_module = s;
        kept[s] = true;
      }
    }
  }

  // `who` names the referrer; it is computed only for an error (it searches the symbols).
  auto keep = [&](std::uint32_t s, auto&& who) -> Status {
    if (kept[s]) return Status::Ok();
    const ModuleSection& sec = secs[s];
    if (const RefusedSection* r = FindRefused(sec.name); r != nullptr && !(options.shadow_module && IsShadowTable(sec.name))) {
      return NeedsSection(who(), sec, r->what);
    }
    if (const Plumbing* p = FindPlumbing(sec.name); p != nullptr && !(this_module && s == *this_module)) {
      return Unimplemented(who() + " refers to section '" + sec.name + "' (" + std::string(p->what) +
                           "): not supported");
    }
    if (!sec.allocated() || (sec.type != SHT_PROGBITS && sec.type != SHT_NOBITS)) {
      return InvalidArgument(who() + " refers to section '" + sec.name + "', which is not loadable");
    }
    if (sec.align > kArenaPageSize) {
      return Unimplemented("section '" + sec.name + "' asks for alignment " + Hex(sec.align) +
                           ", more than a page: not supported");
    }
    kept[s] = true;
    work.push_back(s);
    return Status::Ok();
  };

  for (const auto& f : m.functions()) {
    HV_RETURN_IF_ERROR(keep(f.new_section, [&] { return "function '" + f.new_symbol + "'"; }));
  }
  // Follows every relocation of the sections kept so far (each section enters once: bounded by
  // the section count).
  auto drain = [&]() -> Status {
    while (!work.empty()) {
      const std::uint32_t s = work.front();
      work.pop_front();
      for (const auto& r : secs[s].relocations) {
        if (m.FindMetadata(s, r.offset) != nullptr) continue;  // inside init/exit or klp tables
        const ModuleSymbol& sym = syms[r.symbol];
        if (sym.section == SHN_UNDEF || sym.section == SHN_ABS || sym.section == kShnLivepatch) continue;
        auto who = [&] { return Where(m, s, r); };
        if (sym.section == SHN_COMMON) {
          return InvalidArgument(who() + " refers to COMMON symbol '" + sym.name + "'");
        }
        const std::uint64_t target = TargetOffset(sym, r);
        if (const MetadataRange* md = m.FindMetadata(sym.section, target)) {
          return Unimplemented(who() + " refers to " + md->what + " (livepatch module plumbing): not supported");
        }
        HV_RETURN_IF_ERROR(keep(sym.section, who));
      }
    }
    return Status::Ok();
  };
  HV_RETURN_IF_ERROR(drain());

  // Sections that point INTO copied code must be known to be safe to drop. Every refused one is
  // reported, so the author sees the whole list at once.
  std::string refusals;
  for (std::uint32_t s = 0; s < secs.size(); ++s) {
    const ModuleSection& sec = secs[s];
    if (kept[s] || !sec.allocated() || sec.relocations.empty()) continue;
    if (IsIgnored(sec.name) || FindPlumbing(sec.name) != nullptr) continue;
    const RefusedSection* refused = FindRefused(sec.name);
    if (refused == nullptr && IsOrdinary(sec)) continue;
    if (options.shadow_module && IsShadowTable(sec.name)) {
      // Placed whole when it describes copied code (kernel_tables.h finishes it after Link).
      bool describes_copied = false;
      for (const auto& r : sec.relocations) {
        const ModuleSymbol& sym = syms[r.symbol];
        if (sym.section < secs.size() && kept[sym.section] && secs[sym.section].executable()) describes_copied = true;
      }
      if (describes_copied) {
        HV_RETURN_IF_ERROR(keep(s, [&] { return "section '" + sec.name + "'"; }));
        HV_RETURN_IF_ERROR(drain());
      }
      continue;
    }
    for (const auto& r : sec.relocations) {
      if (m.FindMetadata(s, r.offset) != nullptr) continue;
      const ModuleSymbol& sym = syms[r.symbol];
      if (sym.section >= secs.size() || sym.section == SHN_UNDEF || !kept[sym.section]) continue;
      const std::uint64_t target = sym.value + static_cast<std::uint64_t>(r.addend);
      if (m.FindMetadata(sym.section, target) != nullptr) continue;  // about init/exit code only
      const std::string who = m.DescribePlace(sym.section, target);
      if (!refusals.empty()) refusals += "; ";
      refusals += NeedsSection(who, sec, refused != nullptr ? refused->what : "unknown kernel metadata").message();
      break;  // one report per section
    }
  }
  if (!refusals.empty()) return Unimplemented(refusals);

  PatchImage image;
  image.this_module = this_module;
  for (std::uint32_t s = 0; s < secs.size(); ++s) {
    if (!kept[s]) continue;
    PlacedSection p;
    p.section = s;
    p.memory = ClassOf(secs[s]);
    p.size = secs[s].size;
    std::uint64_t& end = image.size[static_cast<std::size_t>(p.memory)];
    p.offset = (end + secs[s].align - 1) & ~(secs[s].align - 1);
    if (p.size > (1ull << 24) || p.offset > (1ull << 24)) {
      return InvalidArgument("section '" + secs[s].name + "' is too large for the arena");
    }
    end = p.offset + p.size;
    image.sections.push_back(p);
  }
  return image;
}

}  // namespace

Result<PatchImage> SelectImage(const PatchModule& module, ImageOptions options) {
  auto r = SelectImageOf(module, options);
  if (!r.ok()) return r.status().WithContext("linking patch '" + module.name() + "'");
  return r;
}

namespace {

class Linker {
 public:
  Linker(const PatchModule& m, const PatchImage& image, const SymbolResolver& resolver,
         const std::array<std::uint64_t, kMemoryClasses>& base)
      : m_(m), image_(image), resolver_(resolver), placed_(m.sections().size(), nullptr) {
    out_.base = base;
    for (const auto& p : image.sections) {
      if (p.section < placed_.size()) placed_[p.section] = &p;
    }
  }

  Result<LinkedPatch> Run() {
    for (std::size_t c = 0; c < kMemoryClasses; ++c) {
      if (out_.base[c] % kArenaPageSize != 0) {
        return InvalidArgument(std::string(MemoryClassName(static_cast<MemoryClass>(c))) + " base " +
                               Hex(out_.base[c]) + " is not page aligned");
      }
      // Code padding is int3, so a stray jump traps instead of sliding.
      out_.bytes[c].assign(image_.size[c], c == 0 ? 0xcc : 0x00);
    }
    for (const auto& p : image_.sections) {
      const ModuleSection& s = m_.sections()[p.section];
      if (IsThisModule(p.section)) continue;  // written by the shadow module builder
      if (s.type != SHT_NOBITS) {
        if (s.bytes.size() != s.size) return Internal("section '" + s.name + "' has no contents");
        std::memcpy(Bytes(p) , s.bytes.data(), s.size);
      }
    }
    // The module's plumbing inside copied sections never runs or is read: blank it out.
    for (const auto& md : m_.metadata()) {
      if (const PlacedSection* p = Placed(md.section)) {
        if (md.offset <= p->size) {
          std::memset(Bytes(*p) + md.offset, p->memory == MemoryClass::kCode ? 0xcc : 0x00,
                      std::min(md.size, p->size - md.offset));
        }
      }
    }
    for (const auto& p : image_.sections) {
      if (IsThisModule(p.section)) continue;
      for (const auto& r : m_.sections()[p.section].relocations) {
        if (m_.FindMetadata(p.section, r.offset) != nullptr) continue;
        Status st = Apply(p, r);
        if (!st.ok()) return st.WithContext("section '" + r.rela_section + "' entry " + std::to_string(r.entry));
      }
    }
    for (const auto& f : m_.functions()) {
      const PlacedSection* p = Placed(f.new_section);
      if (p == nullptr) return Internal("function '" + f.new_symbol + "' was not placed");
      out_.functions.push_back({f, Va(*p) + f.new_offset});
    }
    return std::move(out_);
  }

 private:
  bool IsThisModule(std::uint32_t section) const { return image_.this_module && *image_.this_module == section; }
  // O(1): Link visits every relocation.
  const PlacedSection* Placed(std::uint32_t section) const {
    return section < placed_.size() ? placed_[section] : nullptr;
  }
  std::uint8_t* Bytes(const PlacedSection& p) {
    return out_.bytes[static_cast<std::size_t>(p.memory)].data() + p.offset;
  }
  std::uint64_t Va(const PlacedSection& p) const {
    return out_.base[static_cast<std::size_t>(p.memory)] + p.offset;
  }

  // True when the 4 bytes at `offset` of code section `section` belong to an instruction with a
  // %gs segment prefix and a RIP-relative memory operand (`mov %gs:cpu_number(%rip), %eax`, as
  // this_cpu_read() and every tracepoint's cpu_online() check compile): the CPU adds the per-cpu
  // base to rip + disp, so disp must be the per-cpu offset minus the next rip, which is what a
  // PC32 relocation computes (modulo 2^64; both lie within 2 GiB of 0).
  bool GsRelative(std::uint32_t section, std::uint64_t offset) const {
    const ModuleSection& s = m_.sections()[section];
    if (!s.executable() || s.bytes.size() != s.size) return false;
    const ModuleSymbol* fn = nullptr;
    for (const auto& sym : m_.symbols()) {
      if (sym.section == section && sym.type == STT_FUNC && sym.value <= offset && offset - sym.value < sym.size) fn = &sym;
    }
    if (fn == nullptr) return false;
    Result<const CapstoneApi*> loaded = Capstone();
    if (!loaded.ok()) return false;
    const CapstoneApi& cs = **loaded;
    csh h;
    if (cs.open(CS_ARCH_X86, CS_MODE_64, &h) != CS_ERR_OK) return false;
    cs.option(h, CS_OPT_DETAIL, CS_OPT_ON);
    cs_insn* insn = cs.malloc(h);
    const std::uint8_t* code = s.bytes.data() + fn->value;
    std::size_t size = std::min<std::uint64_t>(fn->size, s.size - fn->value);
    std::uint64_t address = fn->value;
    bool gs = false;
    while (address <= offset && cs.disasm_iter(h, &code, &size, &address, insn)) {
      if (insn->address <= offset && offset + 4 <= insn->address + insn->size) {
        const cs_x86& x = insn->detail->x86;
        bool rip = false;
        for (std::uint8_t i = 0; i < x.op_count; ++i) {
          if (x.operands[i].type == X86_OP_MEM && x.operands[i].mem.base == X86_REG_RIP) rip = true;
        }
        gs = rip && x.prefix[1] == X86_PREFIX_GS;
        break;
      }
    }
    cs.free(insn, 1);
    cs.close(&h);
    return gs;
  }

  Result<std::uint64_t> SymbolValue(const ModuleSymbol& sym, const ModuleRelocation& r, std::uint32_t section,
                                    const std::function<std::string()>& who) {
    if (sym.section == SHN_ABS) return sym.value;
    if (sym.section == SHN_UNDEF || sym.section == kShnLivepatch) {
      std::string name = sym.name;
      std::string object;
      std::uint64_t sympos = 0;
      if (sym.section == kShnLivepatch) {
        // livepatch's ".klp.sym.OBJECT.NAME,SYMPOS" (Documentation/livepatch/module-elf-format.rst)
        constexpr std::string_view kPrefix = ".klp.sym.";
        std::string_view v = sym.name;
        const auto dot = v.find('.', kPrefix.size());
        const auto comma = v.rfind(',');
        if (v.substr(0, kPrefix.size()) != kPrefix || dot == std::string_view::npos ||
            comma == std::string_view::npos || comma < dot) {
          return InvalidArgument("livepatch symbol '" + sym.name + "' is malformed");
        }
        object = std::string(v.substr(kPrefix.size(), dot - kPrefix.size()));
        name = std::string(v.substr(dot + 1, comma - dot - 1));
        std::string_view pos = v.substr(comma + 1);
        if (pos.empty() || pos.size() > 9 || !std::all_of(pos.begin(), pos.end(), [](char c) { return c >= '0' && c <= '9'; })) {
          return InvalidArgument("livepatch symbol '" + sym.name + "' has a bad position");
        }
        sympos = std::stoull(std::string(pos));
        if (object.empty() || name.empty()) return InvalidArgument("livepatch symbol '" + sym.name + "' is malformed");
      }
      if (name.empty()) return InvalidArgument(who() + " refers to an undefined symbol with no name");
      const std::string key = object + '\n' + name + '\n' + std::to_string(sympos);
      auto it = cache_.find(key);
      if (it == cache_.end()) {
        auto rs = resolver_.Resolve(name, object, sympos);
        if (!rs.ok()) return rs.status().WithContext(who() + " refers to '" + name + "'");
        it = cache_.emplace(key, *rs).first;
      }
      if (it->second.per_cpu && IsPcRelative(r.type) && !(r.type == R_X86_64_PC32 && GsRelative(section, r.offset))) {
        return InvalidArgument(who() + " refers to per-cpu symbol '" + name + "' with a PC-relative " +
                               RelocationTypeName(r.type) + " relocation");
      }
      return it->second.address;
    }
    const PlacedSection* p = Placed(sym.section);
    if (p == nullptr) {
      return Internal(who() + " refers to section index " + std::to_string(sym.section) + ", which was not placed");
    }
    return Va(*p) + sym.value;
  }

  Status Apply(const PlacedSection& p, const ModuleRelocation& r) {
    const ModuleSection& s = m_.sections()[p.section];
    const ModuleSymbol& sym = m_.symbols()[r.symbol];
    const std::function<std::string()> who = [&] { return m_.DescribePlace(p.section, r.offset); };
    std::size_t width;
    switch (r.type) {
      case R_X86_64_64: case R_X86_64_PC64: width = 8; break;
      case R_X86_64_PC32: case R_X86_64_PLT32: case R_X86_64_32: case R_X86_64_32S: width = 4; break;
      default:
        return InvalidArgument("unsupported relocation type " + RelocationTypeName(r.type) + " in " + who());
    }
    if (r.offset > s.size || s.size - r.offset < width) {
      return InvalidArgument("relocation at offset " + Hex(r.offset) + " does not fit section '" + s.name + "'");
    }
    if (s.type == SHT_NOBITS) return InvalidArgument("relocation in section '" + s.name + "', which has no contents");
    std::uint8_t* at = Bytes(p) + r.offset;
    const std::uint64_t place = Va(p) + r.offset;

    if (sym.section == SHN_UNDEF && sym.name == "__fentry__") {
      // `call __fentry__` (e8 rel32): ftrace's entry hook becomes the nop ftrace itself uses.
      if (!IsPcRelative(r.type) || r.offset < 1 || s.bytes[r.offset - 1] != 0xe8) {
        return InvalidArgument("reference to '__fentry__' in " + who() + " is not a call");
      }
      std::memcpy(at - 1, kNop5, sizeof(kNop5));
      ++out_.fentry_nops;
      return Status::Ok();
    }
    HV_ASSIGN_OR_RETURN(const std::uint64_t value, SymbolValue(sym, r, p.section, who));
    const std::uint64_t sa = value + static_cast<std::uint64_t>(r.addend);
    auto overflow = [&](std::string_view kind) {
      return InvalidArgument(RelocationTypeName(r.type) + " to '" + SymbolName(m_, sym) + "' in " + who() + " overflows (" +
                             std::string(kind) + " " + Hex(sa) + " from " + Hex(place) + ")");
    };
    switch (r.type) {
      case R_X86_64_64:
        std::memcpy(at, &sa, 8);
        break;
      case R_X86_64_PC64: {  // __jump_table's key field (_ASM_PTR "key + branch - .")
        const std::uint64_t rel = sa - place;
        std::memcpy(at, &rel, 8);
        break;
      }
      case R_X86_64_PC32:
      case R_X86_64_PLT32: {
        const auto rel = static_cast<std::int64_t>(sa - place);
        if (rel < std::numeric_limits<std::int32_t>::min() || rel > std::numeric_limits<std::int32_t>::max()) {
          return overflow("target");
        }
        const auto v = static_cast<std::int32_t>(rel);
        std::memcpy(at, &v, 4);
        break;
      }
      case R_X86_64_32: {
        if (sa > std::numeric_limits<std::uint32_t>::max()) return overflow("value");
        const auto v = static_cast<std::uint32_t>(sa);
        std::memcpy(at, &v, 4);
        break;
      }
      case R_X86_64_32S: {
        const auto sv = static_cast<std::int64_t>(sa);
        if (sv < std::numeric_limits<std::int32_t>::min() || sv > std::numeric_limits<std::int32_t>::max()) {
          return overflow("value");
        }
        const auto v = static_cast<std::int32_t>(sv);
        std::memcpy(at, &v, 4);
        break;
      }
    }
    return Status::Ok();
  }

  const PatchModule& m_;
  const PatchImage& image_;
  const SymbolResolver& resolver_;
  std::vector<const PlacedSection*> placed_;  // by section index
  LinkedPatch out_;
  std::map<std::string, ResolvedSymbol> cache_;
};

}  // namespace

Result<LinkedPatch> Link(const PatchModule& module, const PatchImage& image, const SymbolResolver& resolver,
                         const std::array<std::uint64_t, kMemoryClasses>& base) {
  Linker linker(module, image, resolver, base);
  auto r = linker.Run();
  if (!r.ok()) return r.status().WithContext("linking patch '" + module.name() + "'");
  return r;
}

}  // namespace hv::patcher
