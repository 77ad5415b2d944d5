#include "cli/module_release.h"

#include <algorithm>
#include <string_view>

namespace hv::cli {

std::string ModuleRelease(const std::vector<std::uint8_t>& module) {
  static constexpr std::string_view kTag = "vermagic=";
  const auto at = std::search(module.begin(), module.end(), kTag.begin(), kTag.end());
  if (at == module.end()) return {};
  std::string out;
  for (auto it = at + static_cast<std::ptrdiff_t>(kTag.size()); it != module.end() && *it != 0 && *it != ' '; ++it) {
    if (out.size() > 256) return {};
    out += static_cast<char>(*it);
  }
  return out;
}

Status CheckBuiltFor(const std::vector<std::uint8_t>& module, const std::string& path, const std::string& guest_release) {
  const std::string built_for = ModuleRelease(module);
  if (built_for.empty() || guest_release.empty() || built_for == guest_release) return Status::Ok();
  return Status(Code::kFailedPrecondition,
                "patch '" + path + "' was built for kernel '" + built_for + "', the guest runs '" + guest_release + "'",
                "build the patch against the guest's kernel headers");
}

}  // namespace hv::cli
