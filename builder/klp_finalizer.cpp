#include "builder/klp_finalizer.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <vector>

namespace hv::builder {

namespace {

// include/uapi/linux/elf.h
constexpr std::uint16_t kShnLivepatch = 0xff20;
constexpr std::uint64_t kShfRelaLivepatch = 0x00100000;
constexpr std::string_view kKlpSym = ".klp.sym.";

struct ElfFile {
  int fd = -1;
  Elf* elf = nullptr;
  ~ElfFile() {
    if (elf != nullptr) elf_end(elf);
    if (fd >= 0) close(fd);
  }
};

Status LibelfError(std::string_view what) { return InvalidArgument(std::string(what) + ": " + elf_errmsg(-1)); }

// ".klp.sym.vmlinux.foo,0" -> "vmlinux"
std::string KlpObject(const std::string& sym) {
  const auto dot = sym.find('.', kKlpSym.size());
  return dot == std::string::npos ? std::string() : sym.substr(kKlpSym.size(), dot - kKlpSym.size());
}

Result<KlpFinalizeStats> Finalize(const std::string& path) {
  if (elf_version(EV_CURRENT) == EV_NONE) return Internal("libelf: version mismatch");
  ElfFile f;
  f.fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (f.fd < 0) return ErrnoError("opening it", errno);
  f.elf = elf_begin(f.fd, ELF_C_RDWR, nullptr);
  if (f.elf == nullptr) return LibelfError("libelf cannot read it");
  std::size_t shstrndx = 0;
  if (elf_getshdrstrndx(f.elf, &shstrndx) != 0) return LibelfError("no section name table");

  // 1. The symbol table: .klp.sym.* become livepatch symbols.
  Elf_Scn* symscn = nullptr;
  GElf_Shdr symsh{};
  for (Elf_Scn* s = elf_nextscn(f.elf, nullptr); s != nullptr; s = elf_nextscn(f.elf, s)) {
    GElf_Shdr sh;
    if (gelf_getshdr(s, &sh) != nullptr && sh.sh_type == SHT_SYMTAB) {
      symscn = s;
      symsh = sh;
    }
  }
  if (symscn == nullptr) return InvalidArgument("no symbol table");
  Elf_Data* symdata = elf_getdata(symscn, nullptr);
  if (symdata == nullptr) return LibelfError("cannot read the symbol table");
  const std::size_t nsyms = symsh.sh_entsize != 0 ? symsh.sh_size / symsh.sh_entsize : 0;
  KlpFinalizeStats st;
  std::vector<std::string> klp_object(nsyms);  // per symbol: its livepatch object, or ""
  for (std::size_t i = 0; i < nsyms; ++i) {
    GElf_Sym sym;
    if (gelf_getsym(symdata, static_cast<int>(i), &sym) == nullptr) return LibelfError("cannot read a symbol");
    const char* n = elf_strptr(f.elf, symsh.sh_link, sym.st_name);
    if (n == nullptr || std::strncmp(n, kKlpSym.data(), kKlpSym.size()) != 0) continue;
    const std::string name(n);
    klp_object[i] = KlpObject(name);
    if (klp_object[i].empty() || name.find(',') == std::string::npos) {
      return InvalidArgument("livepatch symbol '" + name + "' is malformed (want .klp.sym.OBJ.NAME,POS)");
    }
    if (sym.st_shndx == kShnLivepatch) continue;
    sym.st_shndx = kShnLivepatch;
    if (gelf_update_sym(symdata, static_cast<int>(i), &sym) == 0) return LibelfError("cannot update a symbol");
    ++st.symbols;
  }
  elf_flagdata(symdata, ELF_C_SET, ELF_F_DIRTY);

  // 2. Relocations that use them move into .klp.rela.OBJ.<target section>.
  struct NewSection {
    std::string name;
    std::size_t target = 0;
    std::vector<GElf_Rela> relas;
  };
  std::vector<NewSection> added;
  std::deque<std::vector<unsigned char>> keep;  // buffers libelf writes from, alive until elf_update
  for (Elf_Scn* s = elf_nextscn(f.elf, nullptr); s != nullptr; s = elf_nextscn(f.elf, s)) {
    GElf_Shdr sh;
    if (gelf_getshdr(s, &sh) == nullptr || sh.sh_type != SHT_RELA || (sh.sh_flags & kShfRelaLivepatch)) continue;
    Elf_Data* d = elf_getdata(s, nullptr);
    if (d == nullptr || sh.sh_entsize == 0) continue;
    const std::size_t n = sh.sh_size / sh.sh_entsize;
    std::vector<GElf_Rela> rest;
    std::map<std::string, std::vector<GElf_Rela>> moved;  // by object
    for (std::size_t k = 0; k < n; ++k) {
      GElf_Rela r;
      if (gelf_getrela(d, static_cast<int>(k), &r) == nullptr) return LibelfError("cannot read a relocation");
      const std::size_t si = GELF_R_SYM(r.r_info);
      if (si < nsyms && !klp_object[si].empty()) {
        moved[klp_object[si]].push_back(r);
      } else {
        rest.push_back(r);
      }
    }
    if (moved.empty()) continue;
    GElf_Shdr target;
    Elf_Scn* ts = elf_getscn(f.elf, sh.sh_info);
    if (ts == nullptr || gelf_getshdr(ts, &target) == nullptr) return LibelfError("bad relocation target");
    const char* tname = elf_strptr(f.elf, shstrndx, target.sh_name);
    for (auto& [obj, relas] : moved) {
      st.relocations += relas.size();
      added.push_back({".klp.rela." + obj + "." + (tname ? tname : ""), sh.sh_info, std::move(relas)});
    }
    // The ordinary relocations stay.
    auto& buf = keep.emplace_back(rest.size() * sizeof(Elf64_Rela));
    d->d_buf = buf.data();
    d->d_size = buf.size();
    for (std::size_t k = 0; k < rest.size(); ++k) gelf_update_rela(d, static_cast<int>(k), &rest[k]);
    sh.sh_size = buf.size();
    gelf_update_shdr(s, &sh);
    elf_flagdata(d, ELF_C_SET, ELF_F_DIRTY);
  }
  if (added.empty()) return st;

  // 3. New section names go at the end of the section name table.
  Elf_Scn* strscn = elf_getscn(f.elf, shstrndx);
  GElf_Shdr strsh;
  if (strscn == nullptr || gelf_getshdr(strscn, &strsh) == nullptr) return LibelfError("no section name table");
  std::vector<std::size_t> name_offsets;
  auto& names = keep.emplace_back();
  for (const auto& a : added) {
    name_offsets.push_back(strsh.sh_size + names.size());
    names.insert(names.end(), a.name.begin(), a.name.end());
    names.push_back(0);
  }
  Elf_Data* nd = elf_newdata(strscn);
  if (nd == nullptr) return LibelfError("cannot extend the section name table");
  nd->d_buf = names.data();
  nd->d_size = names.size();
  nd->d_type = ELF_T_BYTE;
  nd->d_align = 1;
  strsh.sh_size += names.size();
  gelf_update_shdr(strscn, &strsh);

  const std::size_t symndx = elf_ndxscn(symscn);
  for (std::size_t i = 0; i < added.size(); ++i) {
    Elf_Scn* ns = elf_newscn(f.elf);
    if (ns == nullptr) return LibelfError("cannot add section '" + added[i].name + "'");
    auto& buf = keep.emplace_back(added[i].relas.size() * sizeof(Elf64_Rela));
    Elf_Data* d = elf_newdata(ns);
    d->d_buf = buf.data();
    d->d_size = buf.size();
    d->d_type = ELF_T_RELA;
    d->d_align = 8;
    for (std::size_t k = 0; k < added[i].relas.size(); ++k) gelf_update_rela(d, static_cast<int>(k), &added[i].relas[k]);
    GElf_Shdr sh{};
    sh.sh_name = static_cast<Elf64_Word>(name_offsets[i]);
    sh.sh_type = SHT_RELA;
    sh.sh_flags = SHF_INFO_LINK | kShfRelaLivepatch;
    sh.sh_link = static_cast<Elf64_Word>(symndx);
    sh.sh_info = static_cast<Elf64_Word>(added[i].target);
    sh.sh_entsize = sizeof(Elf64_Rela);
    sh.sh_addralign = 8;
    sh.sh_size = buf.size();
    if (gelf_update_shdr(ns, &sh) == 0) return LibelfError("cannot write section '" + added[i].name + "'");
    ++st.sections;
  }
  if (elf_update(f.elf, ELF_C_WRITE) < 0) return Internal(std::string("libelf cannot write it: ") + elf_errmsg(-1));
  return st;
}

}  // namespace

Result<KlpFinalizeStats> FinalizeKlpModule(const std::string& path) {
  auto r = Finalize(path);
  if (!r.ok()) return r.status().WithContext("finalizing livepatch module '" + path + "'");
  return r;
}

}  // namespace hv::builder
