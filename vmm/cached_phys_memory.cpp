#include "vmm/cached_phys_memory.h"

namespace hv::vmm {

Status CachedPhysMemory::ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const {
  if (inner_.ReadsFromMapping()) return inner_.ReadPhys(gpa, out);
  // The cache reads whole pages (blocks of them for small reads) from the inner memory, and
  // falls back to reading exactly `out` where a whole page cannot be read (the edge of a RAM
  // range), so errors are the inner memory's own.
  return cache_.Read(gpa, out, [this](std::uint64_t at, std::span<std::uint8_t> buf) { return inner_.ReadPhys(at, buf); });
}

}  // namespace hv::vmm
