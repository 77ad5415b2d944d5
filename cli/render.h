// Results as text (for people) or JSON (for machines). One JSON object per command on stdout.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "patcher/patch_engine.h"

namespace hv::cli {

nlohmann::json ApplyJson(const patcher::ApplyResult& r, const std::vector<std::string>& recovery);
std::string ApplyText(const patcher::ApplyResult& r);
// Reads a whole file (the .ko). Errors: kIo naming the file, kInvalidArgument over 64 MiB.
Result<std::vector<std::uint8_t>> ReadPatchFile(const std::string& path);

}  // namespace hv::cli
