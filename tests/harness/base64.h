// Base64 (RFC 4648) for the test command channel: scripts go in, output comes back encoded, so
// any byte survives the line-based protocol. Whitespace in the input to Decode is skipped.
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"

namespace hv::testing {

std::string Base64Encode(std::string_view in);
Result<std::string> Base64Decode(std::string_view in);

}  // namespace hv::testing
