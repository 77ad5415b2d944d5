#include "patcher/trampoline.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "base/hex.h"

namespace hv::patcher {

Result<std::array<std::uint8_t, 5>> JmpRel32(std::uint64_t from, std::uint64_t to) {
  const auto rel = static_cast<std::int64_t>(to - (from + 5));
  if (rel < std::numeric_limits<std::int32_t>::min() || rel > std::numeric_limits<std::int32_t>::max()) {
    return InvalidArgument("jump from " + Hex(from) + " to " + Hex(to) + " is out of rel32 reach");
  }
  std::array<std::uint8_t, 5> out{0xe9};
  const auto v = static_cast<std::int32_t>(rel);
  std::memcpy(out.data() + 1, &v, 4);
  return out;
}

Status CheckRunPre(std::span<const std::uint8_t> expected, std::span<const std::uint8_t> actual,
                   std::uint64_t va, std::string_view what) {
  if (expected.size() == actual.size() && std::equal(expected.begin(), expected.end(), actual.begin())) {
    return Status::Ok();
  }
  return FailedPrecondition(std::string(what) + ": bytes at " + Hex(va) + " changed since the plan (expected " +
                            HexBytes(expected) + ", found " + HexBytes(actual) + ")");
}

}  // namespace hv::patcher
