// What the builder knows of the running kernel's symbols at build time, from the files Debian
// ships with that kernel: which symbols vmlinux exports (Module.symvers, in linux-headers) and
// where every symbol is (System.map, in linux-image). A livepatch module refers to an exported
// symbol by its name and to any other one as `.klp.sym.vmlinux.NAME,SYMPOS`, where SYMPOS
// (livepatch's old_sympos) tells apart static symbols of one name: 0 when the name is unique,
// else the 1-based position in kallsyms (address) order.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::builder {

class KernelSymbols {
 public:
  // `module_symvers`: Module.symvers text ("CRC\tNAME\tMODULE\tEXPORT_TYPE\tNAMESPACE" lines);
  // only vmlinux's exports count. `system_map`: System.map text ("ADDR TYPE NAME" lines), or ""
  // when not available (then every symbol gets sympos 0, and an in-guest load refuses ambiguous
  // names; hvpatch's run-pre still picks the right one).
  static KernelSymbols Parse(std::string_view module_symvers, std::string_view system_map);

  bool Exported(std::string_view name) const { return exports_.count(std::string(name)) != 0; }
  bool HasSystemMap() const { return !addresses_.empty(); }
  // The address of `name` if it is unique in System.map, else 0.
  std::uint64_t UniqueAddress(std::string_view name) const;
  // livepatch's sympos of `name`: 0 if unique (or no System.map); with several, the one nearest
  // to `anchor` (an address in the same source file's code or data: a file's symbols are laid out
  // together). Errors: kNotFound if System.map lacks the name.
  Result<std::uint64_t> Sympos(std::string_view name, std::uint64_t anchor) const;

 private:
  std::set<std::string> exports_;
  std::map<std::string, std::vector<std::uint64_t>, std::less<>> addresses_;
};

}  // namespace hv::builder
