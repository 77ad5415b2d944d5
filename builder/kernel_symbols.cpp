#include "builder/kernel_symbols.h"

#include <algorithm>
#include <sstream>

namespace hv::builder {

KernelSymbols KernelSymbols::Parse(std::string_view module_symvers, std::string_view system_map) {
  KernelSymbols k;
  std::istringstream sv{std::string(module_symvers)};
  for (std::string line; std::getline(sv, line);) {
    std::istringstream f(line);
    std::string crc, name, module;
    if (std::getline(f, crc, '\t') && std::getline(f, name, '\t') && std::getline(f, module, '\t') &&
        module == "vmlinux") {
      k.exports_.insert(name);
    }
  }
  std::istringstream sm{std::string(system_map)};
  for (std::string line; std::getline(sm, line);) {
    std::istringstream f(line);
    std::string addr, type, name;
    if (!(f >> addr >> type >> name)) continue;
    k.addresses_[name].push_back(std::stoull(addr, nullptr, 16));
  }
  for (auto& [n, v] : k.addresses_) std::sort(v.begin(), v.end());
  return k;
}

std::uint64_t KernelSymbols::UniqueAddress(std::string_view name) const {
  auto it = addresses_.find(name);
  return it != addresses_.end() && it->second.size() == 1 ? it->second[0] : 0;
}

Result<std::uint64_t> KernelSymbols::Sympos(std::string_view name, std::uint64_t anchor) const {
  if (addresses_.empty()) return std::uint64_t{0};
  auto it = addresses_.find(name);
  if (it == addresses_.end()) {
    return NotFound("symbol '" + std::string(name) + "' is not in the running kernel's System.map")
        .WithHint("is the source the running kernel's? a function inlined there cannot be patched by name");
  }
  const auto& v = it->second;
  if (v.size() == 1) return std::uint64_t{0};
  std::size_t best = 0;
  auto dist = [&](std::uint64_t a) { return a > anchor ? a - anchor : anchor - a; };
  for (std::size_t i = 1; i < v.size(); ++i) {
    if (dist(v[i]) < dist(v[best])) best = i;
  }
  return std::uint64_t{best + 1};
}

}  // namespace hv::builder
