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
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

struct KernelSymbol {
  std::string name;
  std::uint64_t address = 0;
  std::uint64_t size = 0;
  char type = '?';           // nm-style type letter as /proc/kallsyms shows it
  std::uint32_t sympos = 0;  // 1-based position among symbols of this name in this object
  std::string module;        // empty for vmlinux
};

class SymbolTable {
 public:
  // Adds one object's symbols (in kallsyms order) and computes their sympos and sizes.
  // `end`, when known, bounds the size of the object's highest symbol. `module` is empty for
  // vmlinux. Errors: kInvalidArgument if the object was already added.
  Status AddObject(std::string_view module, std::vector<KernelSymbol> symbols,
                   std::optional<std::uint64_t> end = std::nullopt);

  // Several objects at once (the indexes are rebuilt once). Same errors as AddObject; on error
  // the table is unchanged.
  struct ObjectSymbols {
    std::string module;
    std::vector<KernelSymbol> symbols;
    std::optional<std::uint64_t> end;
  };
  Status AddObjects(std::vector<ObjectSymbols> objects);

  const std::vector<KernelSymbol>& symbols() const { return symbols_; }
  std::size_t size() const { return symbols_.size(); }
  // Module names in the order added (vmlinux excluded).
  std::vector<std::string> modules() const;
  // Number of symbols of one object ("" for vmlinux).
  std::size_t CountIn(std::string_view module) const;

  // Livepatch-style lookup of `name` in `module` ("" = vmlinux). Errors:
  //   kNotFound         no such symbol, or fewer than `sympos` occurrences
  //   kInvalidArgument  sympos 0 and the name is not unique (the message gives the count)
  Result<const KernelSymbol*> Find(std::string_view module, std::string_view name,
                                   std::uint32_t sympos = 0) const;
  // Every symbol called `name`, in any object.
  std::vector<const KernelSymbol*> FindAll(std::string_view name) const;

  // The symbol whose [address, address + size) holds `address`, preferring vmlinux over modules
  // and, among aliases, the first in kallsyms order. kNotFound if none does.
  Result<const KernelSymbol*> FindByAddress(std::uint64_t address) const;

 private:
  struct Object {
    std::string module;
    std::size_t first = 0, count = 0;  // range in symbols_
  };
  std::vector<KernelSymbol> symbols_;
  std::vector<Object> objects_;
  void Reindex();
  // Index of the first symbol called `name` (in table order), or kNone.
  std::uint32_t FirstNamed(std::string_view name) const;

  static constexpr std::uint32_t kNone = ~0u;
  // Name index, flat (two allocations for any number of symbols): an open-addressing table of
  // each distinct name's first symbol, and per symbol the next one of the same name in table
  // order (objects in the order added, kallsyms order within each).
  std::vector<std::uint32_t> name_slots_;
  std::vector<std::uint32_t> next_same_name_;
  // Indices into symbols_ sorted by address (then index).
  std::vector<std::uint32_t> by_address_;
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
