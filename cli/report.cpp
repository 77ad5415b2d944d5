#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"

namespace hv::cli {

int ReportError(const GlobalOptions& options, const Status& status) {
  const int code = status.code() == Code::kBusy ? kExitBusy : kExitError;
  if (options.json) {
    nlohmann::json j;
    j["error"] = {{"code", std::string(CodeName(status.code()))}, {"message", status.message()}};
    if (!status.hint().empty()) j["error"]["hint"] = status.hint();
    j["exit_code"] = code;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::fprintf(stderr, "hvpatch: %s\n", status.message().c_str());
    if (!status.hint().empty()) std::fprintf(stderr, "hint: %s\n", status.hint().c_str());
  }
  return code;
}

int UsageError(const Command& command, std::string_view problem) {
  std::fprintf(stderr, "hvpatch %s: %.*s\nusage: hvpatch [OPTIONS] %s\n", command.name,
               static_cast<int>(problem.size()), problem.data(), command.usage);
  return kExitUsage;
}

}  // namespace hv::cli
