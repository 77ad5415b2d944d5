#include "patcher/patch_module.h"

#include <elf.h>
#include <libelf.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "base/hex.h"

namespace hv::patcher {

namespace {

// Bounds on hostile input. Real patch modules are far below every one of them.
constexpr std::size_t kMaxFileSize = 64u << 20;
constexpr std::size_t kMaxSections = 4096;
constexpr std::size_t kMaxSymbols = 1u << 18;
constexpr std::size_t kMaxRelocations = 1u << 20;  // over all allocated sections
constexpr std::size_t kMaxSectionBytes = 16u << 20;
constexpr std::size_t kMaxString = 4096;
constexpr std::size_t kMaxObjects = 64;
constexpr std::size_t kMaxFunctionsPerObject = 1024;
constexpr std::size_t kMaxFunctions = 1024;  // over all objects
// Linux's MODULE_NAME_LEN is 64 - sizeof(unsigned long): 55 characters and the NUL.
constexpr std::size_t kMaxModuleName = 55;

// livepatch.h struct layouts (see the header comment for the derivation).
constexpr std::uint64_t kKlpFuncSize = 152;
constexpr std::uint64_t kKlpFuncOldName = 0;
constexpr std::uint64_t kKlpFuncNewFunc = 8;
constexpr std::uint64_t kKlpFuncOldSympos = 16;
constexpr std::uint64_t kKlpObjectSize = 168;
constexpr std::uint64_t kKlpObjectName = 0;
constexpr std::uint64_t kKlpObjectFuncs = 8;
constexpr std::uint64_t kKlpObjectCallbacks = 16;
constexpr std::uint64_t kKlpPatchSize = 200;
constexpr std::uint64_t kKlpPatchMod = 0;
constexpr std::uint64_t kKlpPatchObjs = 8;
constexpr std::uint64_t kKlpPatchStates = 16;
constexpr std::uint64_t kKlpPatchReplace = 24;

// Section index of livepatch's ".klp.sym.*" symbols (include/uapi/linux/elf.h).
constexpr std::uint16_t kShnLivepatch = 0xff20;

std::uint64_t ReadU64(std::span<const std::uint8_t> b, std::uint64_t off) {
  std::uint64_t v;
  std::memcpy(&v, b.data() + off, sizeof(v));
  return v;
}

// `span[offset..]` up to a NUL, or an error if there is none within kMaxString bytes.
Result<std::string> CString(std::span<const std::uint8_t> bytes, std::uint64_t offset,
                            std::string_view what) {
  if (offset >= bytes.size()) {
    return InvalidArgument(std::string(what) + " offset " + Hex(offset) + " is outside its " +
                           std::to_string(bytes.size()) + "-byte table");
  }
  std::size_t end = std::min<std::size_t>(bytes.size(), offset + kMaxString);
  for (std::size_t i = offset; i < end; ++i) {
    if (bytes[i] == 0) return std::string(reinterpret_cast<const char*>(bytes.data()) + offset, i - offset);
  }
  return InvalidArgument(std::string(what) + " at offset " + Hex(offset) +
                         " is not NUL-terminated within " + std::to_string(kMaxString) + " bytes");
}

bool IsPowerOfTwoOrZero(std::uint64_t v) { return (v & (v - 1)) == 0; }

bool ValidModuleName(std::string_view n) {
  if (n.empty() || n.size() > kMaxModuleName) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

// Frees libelf's descriptor on every path.
struct ElfCloser {
  Elf* elf;
  ~ElfCloser() {
    if (elf != nullptr) elf_end(elf);
  }
};

// A pointer field's relocation target: a place in the module.
struct Place {
  std::uint32_t section;
  std::uint64_t offset;
};

}  // namespace

bool ModuleSection::allocated() const { return (flags & SHF_ALLOC) != 0; }
bool ModuleSection::executable() const { return (flags & SHF_EXECINSTR) != 0; }
bool ModuleSection::writable() const { return (flags & SHF_WRITE) != 0; }

class PatchModuleParser {
 public:
  PatchModuleParser(std::span<const std::uint8_t> bytes, std::string_view file_name)
      : in_(bytes), file_name_(file_name) {}

  Result<PatchModule> Parse() {
    HV_RETURN_IF_ERROR(ReadElf());
    HV_RETURN_IF_ERROR(ReadModinfo());
    HV_RETURN_IF_ERROR(ReadKlpTables());
    MarkModuleBoilerplate();
    return std::move(m_);
  }

  // The ELF container alone, for ReadRelocatableElf.
  Result<RelocatableElf> ParseElf() {
    HV_RETURN_IF_ERROR(ReadElf());
    return RelocatableElf{std::move(m_.sections_), std::move(m_.symbols_)};
  }

 private:
  // --- ELF container -------------------------------------------------------------------------

  Status ReadElf() {
    if (in_.size() > kMaxFileSize) {
      return InvalidArgument("file is too large (" + std::to_string(in_.size()) + " bytes, limit " +
                             std::to_string(kMaxFileSize) + ")");
    }
    if (in_.size() < sizeof(Elf64_Ehdr)) {
      return InvalidArgument("file is too short for an ELF header (" + std::to_string(in_.size()) +
                             " bytes)");
    }
    if (std::memcmp(in_.data(), ELFMAG, SELFMAG) != 0) return InvalidArgument("not an ELF file (bad magic)");
    if (in_[EI_CLASS] != ELFCLASS64) return InvalidArgument("not a 64-bit ELF file");
    if (in_[EI_DATA] != ELFDATA2LSB) return InvalidArgument("not a little-endian ELF file");

    // Our own checks of the header come first, so libelf only ever sees a section table that
    // lies inside the buffer.
    Elf64_Ehdr eh;
    std::memcpy(&eh, in_.data(), sizeof(eh));
    if (eh.e_type != ET_REL) {
      return InvalidArgument("ELF type " + std::to_string(eh.e_type) +
                             " is not ET_REL (a kernel module is a relocatable object)");
    }
    if (eh.e_machine != EM_X86_64) {
      return InvalidArgument("ELF machine " + std::to_string(eh.e_machine) + " is not x86-64");
    }
    if (eh.e_shoff == 0 || eh.e_shnum == 0) return InvalidArgument("no section header table");
    if (eh.e_shentsize != sizeof(Elf64_Shdr)) {
      return InvalidArgument("section header size " + std::to_string(eh.e_shentsize) + " is not " +
                             std::to_string(sizeof(Elf64_Shdr)));
    }
    if (eh.e_shnum > kMaxSections) {
      return InvalidArgument("too many sections (" + std::to_string(eh.e_shnum) + ")");
    }
    const std::uint64_t table_size = std::uint64_t{eh.e_shnum} * sizeof(Elf64_Shdr);
    if (eh.e_shoff > in_.size() || table_size > in_.size() - eh.e_shoff) {
      return InvalidArgument("section header table at " + Hex(eh.e_shoff) + " (" +
                             std::to_string(eh.e_shnum) + " entries) runs past the end of the " +
                             std::to_string(in_.size()) + "-byte file");
    }
    if (eh.e_shstrndx == SHN_UNDEF || eh.e_shstrndx >= eh.e_shnum) {
      return InvalidArgument("section name table index " + std::to_string(eh.e_shstrndx) +
                             " is out of range");
    }

    if (elf_version(EV_CURRENT) == EV_NONE) return Internal("libelf: version mismatch");
    // elf_memory wants a mutable buffer; it reads only.
    buffer_.assign(in_.begin(), in_.end());
    ElfCloser elf{elf_memory(buffer_.data(), buffer_.size())};
    if (elf.elf == nullptr || elf_kind(elf.elf) != ELF_K_ELF) {
      return InvalidArgument(std::string("libelf cannot read it: ") + elf_errmsg(-1));
    }
    std::size_t shnum = 0;
    std::size_t shstrndx = 0;
    if (elf_getshdrnum(elf.elf, &shnum) != 0 || elf_getshdrstrndx(elf.elf, &shstrndx) != 0) {
      return InvalidArgument(std::string("libelf cannot read the section table: ") + elf_errmsg(-1));
    }
    if (shnum != eh.e_shnum || shstrndx != eh.e_shstrndx) {
      return InvalidArgument("libelf and the ELF header disagree on the section table");
    }

    shdrs_.resize(shnum);
    for (std::size_t i = 0; i < shnum; ++i) {
      Elf_Scn* scn = elf_getscn(elf.elf, i);
      const Elf64_Shdr* sh = scn != nullptr ? elf64_getshdr(scn) : nullptr;
      if (sh == nullptr) {
        return InvalidArgument("section " + std::to_string(i) + ": libelf cannot read its header: " +
                               elf_errmsg(-1));
      }
      shdrs_[i] = *sh;
    }
    for (std::size_t i = 0; i < shnum; ++i) {
      const Elf64_Shdr& sh = shdrs_[i];
      if (sh.sh_type != SHT_NOBITS && sh.sh_type != SHT_NULL &&
          (sh.sh_offset > in_.size() || sh.sh_size > in_.size() - sh.sh_offset)) {
        return InvalidArgument("section " + std::to_string(i) + " (offset " + Hex(sh.sh_offset) +
                               ", size " + Hex(sh.sh_size) + ") runs past the end of the file");
      }
    }
    const Elf64_Shdr& strsh = shdrs_[shstrndx];
    if (strsh.sh_type != SHT_STRTAB) return InvalidArgument("section name table is not a string table");
    const auto shstr = FileBytes(strsh);

    m_.sections_.resize(shnum);
    for (std::size_t i = 0; i < shnum; ++i) {
      const Elf64_Shdr& sh = shdrs_[i];
      ModuleSection& s = m_.sections_[i];
      if (i != 0) {
        HV_ASSIGN_OR_RETURN(s.name, CString(shstr, sh.sh_name, "section " + std::to_string(i) + " name"));
      }
      s.type = sh.sh_type;
      s.flags = sh.sh_flags;
      s.size = sh.sh_size;
      if (!IsPowerOfTwoOrZero(sh.sh_addralign)) {
        return InvalidArgument("section '" + s.name + "' alignment " + Hex(sh.sh_addralign) +
                               " is not a power of two");
      }
      s.align = sh.sh_addralign == 0 ? 1 : sh.sh_addralign;
      // hvpatch's own non-allocated sections (the run-pre records of `hvpatch build`) are read too.
      const bool ours = !s.allocated() && sh.sh_type == SHT_PROGBITS && s.name.rfind(".hvpatch.", 0) == 0;
      if ((s.allocated() || ours) && sh.sh_type != SHT_NOBITS) {
        if (sh.sh_size > kMaxSectionBytes) {
          return InvalidArgument("section '" + s.name + "' is too large (" + Hex(sh.sh_size) + " bytes)");
        }
        auto b = FileBytes(sh);
        s.bytes.assign(b.begin(), b.end());
      }
    }

    HV_RETURN_IF_ERROR(ReadSymbols());
    HV_RETURN_IF_ERROR(ReadRelocations());
    return Status::Ok();
  }

  std::span<const std::uint8_t> FileBytes(const Elf64_Shdr& sh) const {
    if (sh.sh_type == SHT_NOBITS || sh.sh_type == SHT_NULL) return {};
    return in_.subspan(sh.sh_offset, sh.sh_size);  // bounds checked in ReadElf
  }

  Status ReadSymbols() {
    std::optional<std::size_t> symtab;
    for (std::size_t i = 0; i < shdrs_.size(); ++i) {
      if (shdrs_[i].sh_type == SHT_SYMTAB) {
        if (symtab) return InvalidArgument("more than one symbol table");
        symtab = i;
      }
    }
    if (!symtab) return InvalidArgument("no symbol table");
    symtab_ = *symtab;
    const Elf64_Shdr& sh = shdrs_[*symtab];
    if (sh.sh_entsize != sizeof(Elf64_Sym) || sh.sh_size % sizeof(Elf64_Sym) != 0) {
      return InvalidArgument("symbol table entry size " + std::to_string(sh.sh_entsize) +
                             " or table size " + Hex(sh.sh_size) + " is invalid");
    }
    const std::size_t count = sh.sh_size / sizeof(Elf64_Sym);
    if (count > kMaxSymbols) return InvalidArgument("too many symbols (" + std::to_string(count) + ")");
    if (sh.sh_link == 0 || sh.sh_link >= shdrs_.size() || shdrs_[sh.sh_link].sh_type != SHT_STRTAB) {
      return InvalidArgument("symbol table's string table index " + std::to_string(sh.sh_link) +
                             " is not a string table");
    }
    const auto strtab = FileBytes(shdrs_[sh.sh_link]);
    const auto raw = FileBytes(sh);
    m_.symbols_.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
      Elf64_Sym es;
      std::memcpy(&es, raw.data() + i * sizeof(es), sizeof(es));
      ModuleSymbol& s = m_.symbols_[i];
      if (es.st_name != 0) {
        HV_ASSIGN_OR_RETURN(s.name, CString(strtab, es.st_name, "symbol " + std::to_string(i) + " name"));
      }
      s.type = ELF64_ST_TYPE(es.st_info);
      s.binding = ELF64_ST_BIND(es.st_info);
      s.section = es.st_shndx;
      s.value = es.st_value;
      s.size = es.st_size;
      const bool special = s.section == SHN_UNDEF || s.section == SHN_ABS ||
                           s.section == SHN_COMMON || s.section == kShnLivepatch;
      if (!special && s.section >= shdrs_.size()) {
        return InvalidArgument("symbol " + std::to_string(i) + " ('" + s.name + "') section index " +
                               std::to_string(s.section) + " is out of range");
      }
      if (s.type == STT_FUNC && !special) func_starts_.push_back({s.section, s.value, static_cast<std::uint32_t>(i)});
    }
    std::sort(func_starts_.begin(), func_starts_.end());
    return Status::Ok();
  }

  Status ReadRelocations() {
    std::size_t total = 0;
    for (std::size_t i = 0; i < shdrs_.size(); ++i) {
      const Elf64_Shdr& sh = shdrs_[i];
      if (sh.sh_type != SHT_RELA && sh.sh_type != SHT_REL) continue;
      const std::string& rname = m_.sections_[i].name;
      if (sh.sh_info == 0 || sh.sh_info >= shdrs_.size()) {
        return InvalidArgument("relocation section '" + rname + "' applies to section index " +
                               std::to_string(sh.sh_info) + ", which is out of range");
      }
      ModuleSection& target = m_.sections_[sh.sh_info];
      if (!target.allocated()) continue;  // debug info: never loaded
      if (sh.sh_type == SHT_REL) {
        return InvalidArgument("relocation section '" + rname + "' is SHT_REL (x86-64 uses SHT_RELA)");
      }
      if (sh.sh_link != symtab_) {
        return InvalidArgument("relocation section '" + rname + "' does not use the symbol table");
      }
      if (sh.sh_entsize != sizeof(Elf64_Rela) || sh.sh_size % sizeof(Elf64_Rela) != 0) {
        return InvalidArgument("relocation section '" + rname + "' entry size " +
                               std::to_string(sh.sh_entsize) + " or size " + Hex(sh.sh_size) + " is invalid");
      }
      const std::size_t count = sh.sh_size / sizeof(Elf64_Rela);
      total += count;
      if (total > kMaxRelocations) return InvalidArgument("too many relocations");
      const auto raw = FileBytes(sh);
      for (std::size_t k = 0; k < count; ++k) {
        Elf64_Rela er;
        std::memcpy(&er, raw.data() + k * sizeof(er), sizeof(er));
        ModuleRelocation r;
        r.offset = er.r_offset;
        r.type = static_cast<std::uint32_t>(ELF64_R_TYPE(er.r_info));
        r.symbol = static_cast<std::uint32_t>(ELF64_R_SYM(er.r_info));
        r.addend = er.r_addend;
        r.rela_section = rname;
        r.entry = static_cast<std::uint32_t>(k);
        if (r.symbol >= m_.symbols_.size()) {
          return InvalidArgument("relocation section '" + rname + "' entry " + std::to_string(k) +
                                 ": symbol index " + std::to_string(r.symbol) + " is out of range");
        }
        if (r.offset >= target.size) {
          return InvalidArgument("relocation section '" + rname + "' entry " + std::to_string(k) +
                                 ": offset " + Hex(r.offset) + " is outside section '" + target.name + "'");
        }
        target.relocations.push_back(std::move(r));
      }
    }
    for (auto& s : m_.sections_) {
      std::stable_sort(s.relocations.begin(), s.relocations.end(),
                       [](const ModuleRelocation& a, const ModuleRelocation& b) { return a.offset < b.offset; });
    }
    return Status::Ok();
  }

  // --- .modinfo ----------------------------------------------------------------------------

  Status ReadModinfo() {
    std::string name;
    bool livepatch = false;
    for (const auto& s : m_.sections_) {
      if (s.name != ".modinfo") continue;
      // NUL-separated "key=value" strings.
      std::size_t pos = 0;
      while (pos < s.bytes.size()) {
        std::size_t end = pos;
        while (end < s.bytes.size() && s.bytes[end] != 0) ++end;
        std::string_view tag(reinterpret_cast<const char*>(s.bytes.data()) + pos, end - pos);
        if (tag.substr(0, 5) == "name=") name = std::string(tag.substr(5));
        if (tag == "livepatch=Y") livepatch = true;
        pos = end + 1;
      }
    }
    if (!livepatch) {
      return InvalidArgument("not a livepatch module: .modinfo has no 'livepatch=Y' tag "
                             "(MODULE_INFO(livepatch, \"Y\"))");
    }
    if (name.empty()) {
      // As kbuild derives KBUILD_MODNAME: the file's base name, '-' becomes '_'.
      std::string_view f = file_name_;
      if (auto slash = f.rfind('/'); slash != std::string_view::npos) f.remove_prefix(slash + 1);
      if (f.size() > 3 && f.substr(f.size() - 3) == ".ko") f.remove_suffix(3);
      name = std::string(f);
      std::replace(name.begin(), name.end(), '-', '_');
    }
    if (!ValidModuleName(name)) {
      return InvalidArgument("module name '" + name + "' is not a valid kernel module name");
    }
    m_.name_ = name;
    return Status::Ok();
  }

  // --- klp tables --------------------------------------------------------------------------

  // The relocation at exactly `offset` of `section`, or nullptr. Two at one offset is an error.
  Result<const ModuleRelocation*> RelocationAt(std::uint32_t section, std::uint64_t offset) const {
    const auto& rel = m_.sections_[section].relocations;
    auto it = std::lower_bound(rel.begin(), rel.end(), offset,
                               [](const ModuleRelocation& r, std::uint64_t o) { return r.offset < o; });
    if (it == rel.end() || it->offset != offset) return static_cast<const ModuleRelocation*>(nullptr);
    if (std::next(it) != rel.end() && std::next(it)->offset == offset) {
      return InvalidArgument("two relocations at section '" + m_.sections_[section].name +
                             "' offset " + Hex(offset));
    }
    return &*it;
  }

  // Reads the 8-byte pointer field `what` at `offset` of `section`: its relocation target, or
  // nullopt for NULL.
  Result<std::optional<Place>> ReadPointer(std::uint32_t section, std::uint64_t offset,
                                           std::string_view what) const {
    const ModuleSection& s = m_.sections_[section];
    if (offset > s.size || s.size - offset < 8 || s.bytes.size() != s.size) {
      return InvalidArgument(std::string(what) + " at section '" + s.name + "' offset " + Hex(offset) +
                             " is outside the section");
    }
    HV_ASSIGN_OR_RETURN(const ModuleRelocation* r, RelocationAt(section, offset));
    if (r == nullptr) {
      if (ReadU64(s.bytes, offset) != 0) {
        return InvalidArgument(std::string(what) + " at section '" + s.name + "' offset " + Hex(offset) +
                               " holds a value but has no relocation");
      }
      return std::optional<Place>();
    }
    if (r->type != R_X86_64_64) {
      return InvalidArgument(std::string(what) + " at section '" + s.name + "' offset " + Hex(offset) +
                             " has relocation type " + std::to_string(r->type) + ", not R_X86_64_64");
    }
    const ModuleSymbol& sym = m_.symbols_[r->symbol];
    if (sym.section == SHN_UNDEF || sym.section >= m_.sections_.size() ||
        !m_.sections_[sym.section].allocated()) {
      return InvalidArgument(std::string(what) + " at section '" + s.name + "' offset " + Hex(offset) +
                             " points to '" + sym.name + "', which is not defined in the module");
    }
    const std::uint64_t target = sym.value + static_cast<std::uint64_t>(r->addend);
    if (target >= m_.sections_[sym.section].size) {
      return InvalidArgument(std::string(what) + " at section '" + s.name + "' offset " + Hex(offset) +
                             " points outside section '" + m_.sections_[sym.section].name + "'");
    }
    return std::optional<Place>(Place{sym.section, target});
  }

  // A string that a pointer field refers to; it must live in read-only data.
  Result<std::string> ReadStringAt(Place p, std::string_view what) const {
    const ModuleSection& s = m_.sections_[p.section];
    if (s.writable() || s.executable() || s.type != SHT_PROGBITS) {
      return InvalidArgument(std::string(what) + " points into section '" + s.name +
                             "', which is not read-only data");
    }
    HV_ASSIGN_OR_RETURN(std::string str, CString(s.bytes, p.offset, what));
    if (str.empty()) return InvalidArgument(std::string(what) + " is an empty string");
    return str;
  }

  // Checks an array's st_size (when a symbol names it) against the element size of the layout.
  Status CheckArraySize(Place p, std::uint64_t stride, std::uint64_t used, std::string_view kind,
                        std::string* array_name) const {
    for (const auto& sym : m_.symbols_) {
      if (sym.section != p.section || sym.value != p.offset || sym.type != STT_OBJECT) continue;
      *array_name = sym.name;
      if (sym.size % stride != 0 || sym.size < used) {
        return InvalidArgument(std::string(kind) + " '" + sym.name + "' is " + std::to_string(sym.size) +
                               " bytes, not a multiple of " + std::to_string(stride) +
                               " covering its entries (Linux 6.1 x86-64 layout): built against other "
                               "livepatch.h headers?");
      }
      return Status::Ok();
    }
    return Status::Ok();
  }

  bool IsZero(const ModuleSection& s, std::uint64_t off, std::uint64_t len) const {
    for (std::uint64_t i = 0; i < len; ++i) {
      if (s.bytes[off + i] != 0) return false;
    }
    return true;
  }

  Result<Place> FindKlpPatch() const {
    std::vector<Place> found;
    for (std::uint32_t si = 0; si < m_.sections_.size(); ++si) {
      const ModuleSection& s = m_.sections_[si];
      if (!s.allocated() || !s.writable() || s.bytes.size() != s.size) continue;
      for (const auto& r : s.relocations) {
        if (r.type != R_X86_64_64 || r.addend != 0 || m_.symbols_[r.symbol].name != "__this_module") continue;
        // klp_patch.mod = THIS_MODULE, and klp_patch.objs points to writable data (the klp_object
        // array). struct module's other users (file_operations.owner...) point to code at +8.
        if (r.offset < kKlpPatchMod) continue;
        const std::uint64_t patch = r.offset - kKlpPatchMod;
        if (patch + kKlpPatchSize > s.size) continue;
        auto objs = ReadPointer(si, patch + kKlpPatchObjs, "klp_patch.objs");
        if (!objs.ok() || !objs->has_value()) continue;
        const ModuleSection& t = m_.sections_[(*objs)->section];
        if (!t.writable() || t.executable()) continue;
        found.push_back(Place{si, patch});
      }
    }
    if (found.empty()) {
      return InvalidArgument("no struct klp_patch found (a writable structure with .mod = THIS_MODULE "
                             "and .objs set)");
    }
    if (found.size() > 1) {
      return InvalidArgument("found " + std::to_string(found.size()) +
                             " struct klp_patch candidates; a livepatch module has one");
    }
    return found[0];
  }

  Status ReadKlpTables() {
    HV_ASSIGN_OR_RETURN(Place patch, FindKlpPatch());
    const ModuleSection& ps = m_.sections_[patch.section];
    std::string patch_name = "klp_patch";
    HV_RETURN_IF_ERROR(CheckArraySize(patch, kKlpPatchSize, kKlpPatchSize, "klp_patch", &patch_name));
    m_.metadata_.push_back({patch.section, patch.offset, kKlpPatchSize, "klp_patch '" + patch_name + "'"});
    HV_ASSIGN_OR_RETURN(auto states, ReadPointer(patch.section, patch.offset + kKlpPatchStates, "klp_patch.states"));
    if (states) return Unimplemented("klp_patch.states (livepatch system states) is set: not supported");
    m_.replace_ = ps.bytes[patch.offset + kKlpPatchReplace] != 0;
    HV_ASSIGN_OR_RETURN(auto objs_ptr, ReadPointer(patch.section, patch.offset + kKlpPatchObjs, "klp_patch.objs"));
    const Place objs = *objs_ptr;  // FindKlpPatch checked it is set
    const ModuleSection& os = m_.sections_[objs.section];

    std::set<std::tuple<std::string, std::string, std::uint64_t>> seen;
    std::size_t n_objs = 0;
    for (;; ++n_objs) {
      if (n_objs >= kMaxObjects) {
        return InvalidArgument("klp_object array has no terminating entry within " +
                               std::to_string(kMaxObjects) + " objects");
      }
      const std::uint64_t off = objs.offset + n_objs * kKlpObjectSize;
      if (off > os.size || os.size - off < kKlpObjectSize) {
        return InvalidArgument("klp_object " + std::to_string(n_objs) + " runs past the end of section '" +
                               os.name + "'");
      }
      const std::string idx = "klp_object[" + std::to_string(n_objs) + "]";
      HV_ASSIGN_OR_RETURN(auto name_ptr, ReadPointer(objs.section, off + kKlpObjectName, idx + ".name"));
      HV_ASSIGN_OR_RETURN(auto funcs_ptr, ReadPointer(objs.section, off + kKlpObjectFuncs, idx + ".funcs"));
      if (!name_ptr && !funcs_ptr) break;  // klp_for_each_object_static's terminator
      std::string object = "vmlinux";
      if (name_ptr) {
        HV_ASSIGN_OR_RETURN(object, ReadStringAt(*name_ptr, idx + ".name"));
        if (object == "vmlinux") {
          return InvalidArgument(idx + ".name is 'vmlinux' (vmlinux is named by a NULL name)");
        }
        if (!ValidModuleName(object)) {
          return InvalidArgument(idx + ".name '" + object + "' is not a valid module name");
        }
      }
      static constexpr const char* kCallbacks[] = {"pre_patch", "post_patch", "pre_unpatch", "post_unpatch"};
      for (std::uint64_t c = 0; c < 4; ++c) {
        HV_ASSIGN_OR_RETURN(auto cb, ReadPointer(objs.section, off + kKlpObjectCallbacks + 8 * c,
                                                 idx + ".callbacks." + kCallbacks[c]));
        if (cb) {
          return Unimplemented("object '" + object + "' has a '" + kCallbacks[c] +
                               "' callback: not supported");
        }
      }
      if (!funcs_ptr) return InvalidArgument("object '" + object + "' has no functions (.funcs is NULL)");
      HV_RETURN_IF_ERROR(ReadFunctions(*funcs_ptr, object, &seen));
    }
    if (n_objs == 0) return InvalidArgument("klp_patch has no objects");
    std::string objs_name = "klp_object array";
    const std::uint64_t used = (n_objs + 1) * kKlpObjectSize;
    HV_RETURN_IF_ERROR(CheckArraySize(objs, kKlpObjectSize, used, "klp_object array", &objs_name));
    m_.metadata_.push_back({objs.section, objs.offset, used, "klp_object array '" + objs_name + "'"});
    return Status::Ok();
  }

  Status ReadFunctions(Place funcs, const std::string& object,
                       std::set<std::tuple<std::string, std::string, std::uint64_t>>* seen) {
    const ModuleSection& fs = m_.sections_[funcs.section];
    if (!fs.writable() || fs.executable()) {
      return InvalidArgument("object '" + object + "': .funcs points into section '" + fs.name +
                             "', which is not writable data");
    }
    std::size_t n = 0;
    for (;; ++n) {
      if (n >= kMaxFunctionsPerObject) {
        return InvalidArgument("object '" + object + "': klp_func array has no terminating entry within " +
                               std::to_string(kMaxFunctionsPerObject) + " functions");
      }
      const std::uint64_t off = funcs.offset + n * kKlpFuncSize;
      if (off > fs.size || fs.size - off < kKlpFuncSize) {
        return InvalidArgument("object '" + object + "': klp_func " + std::to_string(n) +
                               " runs past the end of section '" + fs.name + "'");
      }
      const std::string idx = "object '" + object + "' klp_func[" + std::to_string(n) + "]";
      HV_ASSIGN_OR_RETURN(auto old_name, ReadPointer(funcs.section, off + kKlpFuncOldName, idx + ".old_name"));
      HV_ASSIGN_OR_RETURN(auto new_func, ReadPointer(funcs.section, off + kKlpFuncNewFunc, idx + ".new_func"));
      HV_ASSIGN_OR_RETURN(const ModuleRelocation* sympos_rel,
                          RelocationAt(funcs.section, off + kKlpFuncOldSympos));
      if (sympos_rel != nullptr) return InvalidArgument(idx + ".old_sympos has a relocation");
      const std::uint64_t sympos = ReadU64(fs.bytes, off + kKlpFuncOldSympos);
      if (!old_name && !new_func && sympos == 0) break;  // klp_for_each_func_static's terminator
      if (!old_name) return InvalidArgument(idx + ".old_name is NULL");
      if (!new_func) return InvalidArgument(idx + ".new_func is NULL");
      KlpFunction f;
      f.object = object;
      f.old_sympos = sympos;
      HV_ASSIGN_OR_RETURN(f.old_name, ReadStringAt(*old_name, idx + ".old_name"));
      HV_RETURN_IF_ERROR(ResolveNewFunction(*new_func, "'" + f.old_name + "'", &f));
      if (!seen->insert({object, f.old_name, sympos}).second) {
        return InvalidArgument("object '" + object + "': function '" + f.old_name + "' (sympos " +
                               std::to_string(sympos) + ") is listed twice");
      }
      if (m_.functions_.size() >= kMaxFunctions) {
        return InvalidArgument("more than " + std::to_string(kMaxFunctions) + " functions in the klp tables");
      }
      m_.functions_.push_back(std::move(f));
    }
    if (n == 0) return InvalidArgument("object '" + object + "' has an empty klp_func array");
    std::string arr = "klp_func array";
    const std::uint64_t used = (n + 1) * kKlpFuncSize;
    HV_RETURN_IF_ERROR(CheckArraySize(funcs, kKlpFuncSize, used, "klp_func array", &arr));
    m_.metadata_.push_back({funcs.section, funcs.offset, used, "klp_func array '" + arr + "'"});
    return Status::Ok();
  }

  // new_func must be the start of a function symbol in executable code.
  Status ResolveNewFunction(Place p, const std::string& old, KlpFunction* f) const {
    const ModuleSection& s = m_.sections_[p.section];
    if (!s.executable() || s.type != SHT_PROGBITS) {
      return InvalidArgument("new_func of " + old + " points into section '" + s.name +
                             "', which is not code");
    }
    const ModuleSymbol* best = nullptr;
    for (const FuncStart& fs : FunctionsAt(p.section, p.offset)) {
      const ModuleSymbol& sym = m_.symbols_[fs.index];
      if (sym.size == 0 || sym.size > s.size - sym.value) continue;
      // Prefer the function's own (often local) name over init_module/cleanup_module aliases.
      if (best == nullptr || best->binding != STB_LOCAL) best = &sym;
    }
    if (best == nullptr) {
      return InvalidArgument("new_func of " + old + " points to section '" + s.name + "' offset " +
                             Hex(p.offset) + ", which is not the start of a function symbol");
    }
    f->new_symbol = best->name;
    f->new_section = p.section;
    f->new_offset = p.offset;
    f->new_size = best->size;
    return Status::Ok();
  }

  // The module's init and exit functions only run in an in-guest load (they call
  // klp_enable_patch). They are never copied to the guest.
  // A module has one of each; only the first counts.
  void MarkModuleBoilerplate() {
    bool init = false;
    bool exit = false;
    for (const auto& entry : m_.symbols_) {
      if (entry.type != STT_FUNC || entry.section == SHN_UNDEF || entry.section >= m_.sections_.size()) continue;
      bool& seen = entry.name == "init_module" ? init : exit;
      if ((entry.name != "init_module" && entry.name != "cleanup_module") || seen) continue;
      seen = true;
      const std::string kind = entry.name == "init_module" ? "module init function" : "module exit function";
      std::string shown = entry.name;
      for (const FuncStart& fs : FunctionsAt(entry.section, entry.value)) {
        if (m_.symbols_[fs.index].binding == STB_LOCAL) shown = m_.symbols_[fs.index].name;
      }
      m_.metadata_.push_back({entry.section, entry.value, entry.size, kind + " '" + shown + "'"});
    }
  }

  // Function symbols at a place, to find new_func and init/exit aliases without rescanning the
  // symbol table (which may hold 2^18 entries).
  struct FuncStart {
    std::uint32_t section;
    std::uint64_t value;
    std::uint32_t index;
    auto operator<=>(const FuncStart&) const = default;
  };
  std::span<const FuncStart> FunctionsAt(std::uint32_t section, std::uint64_t value) const {
    auto lo = std::lower_bound(func_starts_.begin(), func_starts_.end(), FuncStart{section, value, 0});
    auto hi = std::upper_bound(func_starts_.begin(), func_starts_.end(),
                               FuncStart{section, value, std::numeric_limits<std::uint32_t>::max()});
    return {lo, hi};
  }

  std::span<const std::uint8_t> in_;
  std::vector<FuncStart> func_starts_;
  std::string file_name_;
  std::vector<char> buffer_;
  std::vector<Elf64_Shdr> shdrs_;
  std::size_t symtab_ = 0;
  PatchModule m_;
};

Result<PatchModule> PatchModule::Load(std::span<const std::uint8_t> bytes, std::string_view file_name) {
  PatchModuleParser parser(bytes, file_name);
  auto r = parser.Parse();
  if (!r.ok()) return r.status().WithContext("loading patch '" + std::string(file_name) + "'");
  // A new function must not overlap the module's own init/exit code.
  for (const auto& f : r->functions()) {
    if (const MetadataRange* m = r->FindMetadata(f.new_section, f.new_offset)) {
      return InvalidArgument("new function '" + f.new_symbol + "' for '" + f.old_name + "' is the " + m->what)
          .WithContext("loading patch '" + std::string(file_name) + "'");
    }
  }
  return r;
}

Result<RelocatableElf> ReadRelocatableElf(std::span<const std::uint8_t> bytes, std::string_view file_name) {
  PatchModuleParser parser(bytes, file_name);
  auto r = parser.ParseElf();
  if (!r.ok()) return r.status().WithContext("reading object '" + std::string(file_name) + "'");
  return r;
}

const MetadataRange* PatchModule::FindMetadata(std::uint32_t section, std::uint64_t offset) const {
  for (const auto& m : metadata_) {
    if (m.section == section && offset >= m.offset && offset - m.offset < m.size) return &m;
  }
  return nullptr;
}

const ModuleSymbol* PatchModule::FindSymbolAt(std::uint32_t section, std::uint64_t offset) const {
  const ModuleSymbol* best = nullptr;
  for (const auto& s : symbols_) {
    if (s.section != section || (s.type != STT_FUNC && s.type != STT_OBJECT)) continue;
    if (offset < s.value || offset - s.value >= s.size) continue;
    if (best == nullptr || (best->binding != STB_LOCAL && s.binding == STB_LOCAL)) best = &s;
  }
  return best;
}

std::string PatchModule::DescribePlace(std::uint32_t section, std::uint64_t offset) const {
  if (const ModuleSymbol* s = FindSymbolAt(section, offset)) {
    return std::string(s->type == STT_FUNC ? "function '" : "object '") + s->name + "'";
  }
  const std::string name = section < sections_.size() ? sections_[section].name : std::to_string(section);
  return "section '" + name + "' offset " + Hex(offset);
}

}  // namespace hv::patcher
