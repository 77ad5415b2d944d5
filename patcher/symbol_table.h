// The guest kernel's symbols: vmlinux and every loaded module, with livepatch's `sympos`.
//
// Symbols of one object are kept in kallsyms order (vmlinux: the order of the compressed table;
// a module: the order of its symtab), because that is the order in which livepatch counts
// duplicate names (kernel/livepatch/core.c, klp_find_callback / klp_match_callback): the n-th
// symbol with a given name in its object has sympos n (1-based). A lookup with sympos 0 demands
// that the name be unique in the object. vmlinux counts every symbol type, as
// kallsyms_on_each_symbol() visits them all; modules count every defined symtab entry.
//
// Sizes are bounded by the next symbol: size = (next higher address in the same object) -
// address; the highest symbol of an object gets the object's end when it is known, else 0, and
// so does the highest per-cpu value (it is not bounded by the first kernel-image address).
//
// Storage: each batch of objects added together is a segment of 32-byte records, one buffer of
// names and its own indexes, built once and never changed (GuestKernel adds vmlinux, then the
// modules: two segments). Lookups visit the segments in order and answer as one table would. A
// segment of vmlinux alone has a flat image (Image/FromImage) that the warm-start cache keeps
// and reads in place. Symbols are handed out by value, with views of the table's names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

// One symbol as the table answers it. The views point into the table (or list) it came from and
// stay valid as long as that lives.
struct KernelSymbol {
  std::string_view name;
  std::uint64_t address = 0;
  std::uint64_t size = 0;
  char type = '?';           // nm-style type letter as /proc/kallsyms shows it
  std::uint32_t sympos = 0;  // 1-based position among symbols of this name in this object
  std::string_view module;   // empty for vmlinux
};

// How a symbol is stored: 32 bytes, its name an offset into one buffer of names. A vmlinux has
// ~90k symbols; a std::string and a heap block per name cost more in page faults than decoding
// them does (bench/README.md, "Sixth session").
struct SymbolRecord {
  std::uint64_t address = 0;
  std::uint64_t size = 0;
  std::uint32_t name_offset = 0;
  std::uint16_t name_length = 0;
  char type = '?';
  std::uint8_t reserved = 0;
  std::uint32_t sympos = 0;
  std::uint32_t object = 0;  // index among its segment's objects
};
static_assert(sizeof(SymbolRecord) == 32);

// A random-access range over anything with size() and at(i) returning a KernelSymbol by value.
template <typename Owner>
class SymbolRange {
 public:
  class iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = KernelSymbol;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = KernelSymbol;
    iterator(const Owner* o, std::size_t i) : o_(o), i_(i) {}
    KernelSymbol operator*() const { return o_->at(i_); }
    iterator& operator++() { ++i_; return *this; }
    iterator operator++(int) { iterator t = *this; ++i_; return t; }
    bool operator==(const iterator& b) const { return i_ == b.i_; }
    bool operator!=(const iterator& b) const { return i_ != b.i_; }
   private:
    const Owner* o_;
    std::size_t i_;
  };
  explicit SymbolRange(const Owner* o) : o_(o) {}
  iterator begin() const { return {o_, 0}; }
  iterator end() const { return {o_, o_->size()}; }
  std::size_t size() const { return o_->size(); }
  bool empty() const { return o_->size() == 0; }
  KernelSymbol operator[](std::size_t i) const { return o_->at(i); }
  KernelSymbol front() const { return o_->at(0); }
  KernelSymbol back() const { return o_->at(o_->size() - 1); }

 private:
  const Owner* o_;
};

// One object's symbols as they are collected (kallsyms order), before they join a table: names
// packed in one buffer. Sizes and sympos are the table's to compute (0 here).
class SymbolList {
 public:
  SymbolList() = default;
  // Copies names (tests, small lists).
  SymbolList(std::initializer_list<KernelSymbol> symbols);
  explicit SymbolList(const std::vector<KernelSymbol>& symbols);

  void Reserve(std::size_t symbols, std::size_t name_bytes);
  // Names longer than 65535 bytes are cut (no kernel name comes near: KSYM_NAME_LEN is 512).
  void Add(std::string_view name, std::uint64_t address, char type);
  std::size_t size() const { return records_.size(); }
  bool empty() const { return records_.empty(); }
  KernelSymbol at(std::size_t i) const;
  KernelSymbol operator[](std::size_t i) const { return at(i); }
  SymbolRange<SymbolList>::iterator begin() const { return {this, 0}; }
  SymbolRange<SymbolList>::iterator end() const { return {this, size()}; }

 private:
  friend class SymbolTable;
  std::vector<SymbolRecord> records_;
  std::vector<char> names_;
};

class SymbolTable {
 public:
  SymbolTable();
  ~SymbolTable();
  SymbolTable(SymbolTable&&) noexcept;
  SymbolTable& operator=(SymbolTable&&) noexcept;

  // Adds one object's symbols (in kallsyms order) and computes their sympos and sizes.
  // `end`, when known, bounds the size of the object's highest symbol. `module` is empty for
  // vmlinux. Errors: kInvalidArgument if the object was already added.
  Status AddObject(std::string_view module, SymbolList symbols,
                   std::optional<std::uint64_t> end = std::nullopt);

  // Several objects at once (one segment, indexed once). Same errors as AddObject; on error the
  // table is unchanged.
  struct ObjectSymbols {
    std::string module;
    SymbolList symbols;
    std::optional<std::uint64_t> end;
  };
  Status AddObjects(std::vector<ObjectSymbols> objects);

  // Every symbol in table order: objects in the order added, kallsyms order within each.
  SymbolRange<SymbolTable> symbols() const { return SymbolRange<SymbolTable>(this); }
  std::size_t size() const { return size_; }
  KernelSymbol at(std::size_t i) const;
  // Module names in the order added (vmlinux excluded).
  std::vector<std::string> modules() const;
  // Number of symbols of one object ("" for vmlinux).
  std::size_t CountIn(std::string_view module) const;

  // Livepatch-style lookup of `name` in `module` ("" = vmlinux). Errors:
  //   kNotFound         no such symbol, or fewer than `sympos` occurrences
  //   kInvalidArgument  sympos 0 and the name is not unique (the message gives the count)
  Result<KernelSymbol> Find(std::string_view module, std::string_view name,
                            std::uint32_t sympos = 0) const;
  // Every symbol called `name`, in any object, in table order.
  std::vector<KernelSymbol> FindAll(std::string_view name) const;

  // The symbol whose [address, address + size) holds `address`, preferring vmlinux over modules
  // and, among aliases, the first in kallsyms order. kNotFound if none does.
  Result<KernelSymbol> FindByAddress(std::uint64_t address) const;

  // The table as one flat image (the warm-start cache, patcher/kallsyms_cache.h): only for a
  // table of one segment holding vmlinux alone. Its arrays are native-endian and kept as they
  // are, index included, so that FromImage does no work but checks.
  Result<std::string> Image() const;
  // A table over an image, reading it in place: `owner` keeps `image`'s bytes alive (a file
  // mapping, say) for the table's life. Every offset, length and index is checked against the
  // image's size (an image is untrusted input); kInvalidArgument says what is wrong.
  static Result<SymbolTable> FromImage(std::string_view image, std::shared_ptr<const void> owner);

 private:
  struct Segment;
  const Segment* SegmentOf(std::size_t* i) const;
  std::vector<std::unique_ptr<Segment>> segments_;
  std::size_t size_ = 0;
};

// Parses /proc/kallsyms text ("ADDR TYPE NAME" or "ADDR TYPE NAME\t[MODULE]"), e.g. from the
// guest agent, into a table. Lines of non-modules that /proc/kallsyms also shows in brackets
// ([bpf], [__builtin__ftrace], [__builtin__kprobes]) are skipped. Errors: kInvalidArgument with
// the line number for a malformed line, or text over 64 MiB.
Result<SymbolTable> ParseKallsymsText(std::string_view text);

// Parses a System.map ("ADDR TYPE NAME" per line, link-time addresses) and adds `kaslr_offset`
// to every address inside the kernel image window (per-cpu offsets stay as they are).
// Errors as ParseKallsymsText.
Result<SymbolTable> ParseSystemMap(std::string_view text, std::uint64_t kaslr_offset);

}  // namespace hv::patcher
