// Edits a copy of a real .ko in place, to make precise malformed inputs for the loader tests:
// "this relocation points elsewhere", "this symbol has another size", "the section table is gone".
#pragma once

#include <elf.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace hv::patcher::testing {

class ElfEditor {
 public:
  explicit ElfEditor(std::vector<std::uint8_t>* bytes) : b_(bytes) {}

  Elf64_Ehdr Header() const { return Get<Elf64_Ehdr>(0); }
  void SetHeader(const Elf64_Ehdr& h) { Put(0, h); }

  int SectionIndex(std::string_view name) const {
    const Elf64_Ehdr h = Header();
    const Elf64_Shdr strs = Get<Elf64_Shdr>(h.e_shoff + h.e_shstrndx * sizeof(Elf64_Shdr));
    for (int i = 0; i < h.e_shnum; ++i) {
      const Elf64_Shdr s = Shdr(i);
      const char* n = reinterpret_cast<const char*>(b_->data() + strs.sh_offset + s.sh_name);
      if (name == n) return i;
    }
    throw std::runtime_error("no section " + std::string(name));
  }
  Elf64_Shdr Shdr(int i) const { return Get<Elf64_Shdr>(ShdrOffset(i)); }
  void SetShdr(int i, const Elf64_Shdr& s) { Put(ShdrOffset(i), s); }

  // RELA entry `k` of section `rela_name`.
  Elf64_Rela Rela(std::string_view rela_name, int k) const {
    return Get<Elf64_Rela>(Shdr(SectionIndex(rela_name)).sh_offset + k * sizeof(Elf64_Rela));
  }
  void SetRela(std::string_view rela_name, int k, const Elf64_Rela& r) {
    Put(Shdr(SectionIndex(rela_name)).sh_offset + k * sizeof(Elf64_Rela), r);
  }
  // The index of the RELA entry of `rela_name` at r_offset `offset`.
  int RelaAt(std::string_view rela_name, std::uint64_t offset) const {
    const Elf64_Shdr s = Shdr(SectionIndex(rela_name));
    for (std::uint64_t k = 0; k < s.sh_size / sizeof(Elf64_Rela); ++k) {
      if (Rela(rela_name, static_cast<int>(k)).r_offset == offset) return static_cast<int>(k);
    }
    throw std::runtime_error("no relocation at offset");
  }

  int SymbolIndex(std::string_view name) const {
    const Elf64_Shdr st = Shdr(SectionIndex(".symtab"));
    const Elf64_Shdr strs = Shdr(static_cast<int>(st.sh_link));
    for (std::uint64_t i = 0; i < st.sh_size / sizeof(Elf64_Sym); ++i) {
      const Elf64_Sym s = Symbol(static_cast<int>(i));
      if (name == reinterpret_cast<const char*>(b_->data() + strs.sh_offset + s.st_name)) {
        return static_cast<int>(i);
      }
    }
    throw std::runtime_error("no symbol " + std::string(name));
  }
  // The STT_SECTION symbol of section `name`.
  int SectionSymbolIndex(std::string_view name) const {
    const int sec = SectionIndex(name);
    const Elf64_Shdr st = Shdr(SectionIndex(".symtab"));
    for (std::uint64_t i = 0; i < st.sh_size / sizeof(Elf64_Sym); ++i) {
      const Elf64_Sym s = Symbol(static_cast<int>(i));
      if (ELF64_ST_TYPE(s.st_info) == STT_SECTION && s.st_shndx == sec) return static_cast<int>(i);
    }
    throw std::runtime_error("no section symbol");
  }
  Elf64_Sym Symbol(int i) const { return Get<Elf64_Sym>(SymOffset(i)); }
  void SetSymbol(int i, const Elf64_Sym& s) { Put(SymOffset(i), s); }

  // Overwrites symbol `i`'s name in the string table with `name` (no longer than the old one).
  void RenameSymbol(int i, std::string_view name) {
    const Elf64_Shdr st = Shdr(SectionIndex(".symtab"));
    const std::uint64_t at = Shdr(static_cast<int>(st.sh_link)).sh_offset + Symbol(i).st_name;
    const std::size_t old = std::strlen(reinterpret_cast<const char*>(b_->data() + at));
    if (name.size() > old) throw std::runtime_error("new name is longer");
    std::memset(b_->data() + at, 0, old);
    std::memcpy(b_->data() + at, name.data(), name.size());
  }

  // Replaces the first occurrence of `from` in the file with `to` (same length).
  void ReplaceString(std::string_view from, std::string_view to) {
    if (from.size() != to.size()) throw std::runtime_error("length differs");
    std::string_view all(reinterpret_cast<const char*>(b_->data()), b_->size());
    auto pos = all.find(from);
    if (pos == std::string_view::npos) throw std::runtime_error("string not found");
    std::memcpy(b_->data() + pos, to.data(), to.size());
  }

 private:
  std::uint64_t ShdrOffset(int i) const { return Header().e_shoff + i * sizeof(Elf64_Shdr); }
  std::uint64_t SymOffset(int i) const {
    return Shdr(SectionIndex(".symtab")).sh_offset + i * sizeof(Elf64_Sym);
  }
  template <typename T>
  T Get(std::uint64_t off) const {
    if (off + sizeof(T) > b_->size()) throw std::runtime_error("read past end");
    T v;
    std::memcpy(&v, b_->data() + off, sizeof(T));
    return v;
  }
  template <typename T>
  void Put(std::uint64_t off, const T& v) {
    if (off + sizeof(T) > b_->size()) throw std::runtime_error("write past end");
    std::memcpy(b_->data() + off, &v, sizeof(T));
  }

  std::vector<std::uint8_t>* b_;
};

}  // namespace hv::patcher::testing
