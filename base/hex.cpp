#include "base/hex.h"

#include <cstdio>

namespace hv {

std::string Hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

static std::string Join(std::span<const std::uint8_t> b, bool spaced) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 3);
  for (size_t i = 0; i < b.size(); ++i) {
    if (spaced && i) s += ' ';
    s += kDigits[b[i] >> 4];
    s += kDigits[b[i] & 15];
  }
  return s;
}

std::string HexBytes(std::span<const std::uint8_t> b) { return Join(b, true); }
std::string HexString(std::span<const std::uint8_t> b) { return Join(b, false); }

}  // namespace hv
