// x86-64 page walk over guest-physical memory: 4-level and 5-level (CR4.LA57) paging,
// 4 KiB / 2 MiB / 1 GiB pages. Pure: reads page-table entries through GuestPhysMemory only.
#pragma once

#include <cstdint>
#include <span>

#include "base/status.h"
#include "vmm/guest_memory.h"

namespace hv::vmm {

struct PagingMode {
  std::uint64_t cr3 = 0;
  bool la57 = false;  // CR4.LA57: five levels
  bool nxe = true;    // EFER.NXE: bit 63 means no-execute
};

// Translates `va`. Errors:
//   kInvalidArgument  `va` is not canonical for the mode
//   kNotFound         a level is not present (the message names the level and the entry)
//   kInvalidArgument  a reserved bit pattern or a table outside guest RAM
Result<Translation> TranslateVirt(const GuestPhysMemory& mem, const PagingMode& mode,
                                  std::uint64_t va);

// Reads `out.size()` bytes at `va`, page by page. Fails on the first unmapped page.
Status ReadVirt(const GuestPhysMemory& mem, const PagingMode& mode, std::uint64_t va,
                std::span<std::uint8_t> out);

// Page-table entry bits used by the walk and by the arena mapper.
namespace pte {
inline constexpr std::uint64_t kPresent = 1ull << 0;
inline constexpr std::uint64_t kWritable = 1ull << 1;
inline constexpr std::uint64_t kUser = 1ull << 2;
inline constexpr std::uint64_t kAccessed = 1ull << 5;
inline constexpr std::uint64_t kDirty = 1ull << 6;
inline constexpr std::uint64_t kHuge = 1ull << 7;  // PS in a PDPTE/PDE
inline constexpr std::uint64_t kGlobal = 1ull << 8;
inline constexpr std::uint64_t kNoExecute = 1ull << 63;
inline constexpr std::uint64_t kAddrMask = 0x000ffffffffff000ull;  // bits 12..51
}  // namespace pte

}  // namespace hv::vmm
