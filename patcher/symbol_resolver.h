// The guest-symbol lookup the patch linker needs, kept apart from the GuestKernel model so the
// linker and the plan can be tested with a fake and built before the model exists.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

// One resolved guest symbol.
struct ResolvedSymbol {
  // The symbol's kallsyms value. For a per-cpu variable this is its offset in the per-cpu area
  // (x86-64 per-cpu symbols are zero-based: `%gs:offset`), not a virtual address.
  std::uint64_t address = 0;
  // Bytes up to the next symbol (kallsyms has no sizes). 0 if unknown.
  std::uint64_t size = 0;
  // True for per-cpu variables (kallsyms values below the kernel's `__per_cpu_end`).
  bool per_cpu = false;
};

// Resolves names against the running guest kernel: vmlinux and its loaded modules, exported or not
// (the symbols come from kallsyms, not from the export tables).
class SymbolResolver {
 public:
  virtual ~SymbolResolver() = default;

  // Looks up `name` in `object`:
  //  - "vmlinux" or a module name (as /proc/modules shows it): only that object;
  //  - "" (empty): any object, vmlinux first, then the loaded modules, as the kernel's module loader
  //    resolves an undefined symbol.
  // `sympos` follows livepatch's klp_func.old_sympos: 0 means the name must be unique in the
  // object(s) searched; N > 0 picks the Nth occurrence in kallsyms order.
  // Errors: kNotFound if there is no such symbol (or object, or occurrence); kInvalidArgument if
  // sympos is 0 and the name is ambiguous.
  virtual Result<ResolvedSymbol> Resolve(std::string_view name, std::string_view object,
                                         std::uint64_t sympos) const = 0;
};

// Every occurrence of `name` in `object`, each with its sympos: {0, symbol} when the name is
// unique there, else {1, first}, {2, second}, ... in kallsyms order, at most 256 of them.
// Errors: the resolver's for the name (kNotFound when there is none), other than ambiguity.
inline Result<std::vector<std::pair<std::uint64_t, ResolvedSymbol>>> Occurrences(const SymbolResolver& resolver,
                                                                               std::string_view name,
                                                                               std::string_view object) {
  std::vector<std::pair<std::uint64_t, ResolvedSymbol>> found;
  auto unique = resolver.Resolve(name, object, 0);
  if (unique.ok()) {
    found.push_back({0, *unique});
    return found;
  }
  if (unique.status().code() != Code::kInvalidArgument) return unique.status();
  constexpr std::uint64_t kMaxSameName = 256;
  for (std::uint64_t pos = 1; pos <= kMaxSameName; ++pos) {
    auto r = resolver.Resolve(name, object, pos);
    if (!r.ok()) break;
    found.push_back({pos, *r});
  }
  return found;
}

}  // namespace hv::patcher
