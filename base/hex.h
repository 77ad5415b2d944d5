// Hex formatting used in messages and JSON ("0xffffffff81000000").
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace hv {

std::string Hex(std::uint64_t v);                      // "0x1f"
std::string HexBytes(std::span<const std::uint8_t> b);  // "0f 1f 44 00 00"
std::string HexString(std::span<const std::uint8_t> b); // "0f1f440000"

}  // namespace hv
