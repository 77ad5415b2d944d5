// The 5 bytes hvpatch writes over a function's entry, and the run-pre check that guards the write.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "base/status.h"

namespace hv::patcher {

// `jmp rel32` (e9) placed at `from`, landing on `to`.
// Errors: kInvalidArgument if `to` is out of rel32 reach of `from + 5`.
Result<std::array<std::uint8_t, 5>> JmpRel32(std::uint64_t from, std::uint64_t to);

// Ksplice's run-pre idea, at write time: the bytes at `va` must still be what the plan read.
// Errors: kFailedPrecondition naming `what` (e.g. "function 'cmdline_proc_show'"), the address and
// both byte strings, if they differ (someone else wrote there since the plan).
Status CheckRunPre(std::span<const std::uint8_t> expected, std::span<const std::uint8_t> actual,
                   std::uint64_t va, std::string_view what);

}  // namespace hv::patcher
