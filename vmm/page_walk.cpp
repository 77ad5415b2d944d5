#include "vmm/page_walk.h"

#include <algorithm>
#include <cstring>

#include "base/hex.h"

namespace hv::vmm {
namespace {

const char* LevelName(int level) {
  switch (level) {
    case 5: return "PML5E";
    case 4: return "PML4E";
    case 3: return "PDPTE";
    case 2: return "PDE";
    default: return "PTE";
  }
}

bool Canonical(std::uint64_t va, bool la57) {
  const int bits = la57 ? 57 : 48;
  const std::int64_t s = static_cast<std::int64_t>(va << (64 - bits)) >> (64 - bits);
  return static_cast<std::uint64_t>(s) == va;
}

}  // namespace

Result<Translation> TranslateVirt(const GuestPhysMemory& mem, const PagingMode& mode,
                                  std::uint64_t va) {
  if (!Canonical(va, mode.la57)) {
    return InvalidArgument("address " + Hex(va) + " is not canonical");
  }
  Translation t;
  t.writable = true;
  t.user = true;
  std::uint64_t table = mode.cr3 & pte::kAddrMask;
  for (int level = mode.la57 ? 5 : 4; level >= 1; --level) {
    const int shift = 12 + 9 * (level - 1);
    const std::uint64_t index = (va >> shift) & 511;
    std::uint64_t entry = 0;
    std::uint8_t raw[8];
    Status s = mem.ReadPhys(table + index * 8, raw);
    if (!s.ok()) {
      return s.WithContext("walking " + Hex(va) + ": reading " + LevelName(level) + " at " +
                           Hex(table + index * 8));
    }
    std::memcpy(&entry, raw, 8);
    if (!(entry & pte::kPresent)) {
      return NotFound(std::string(LevelName(level)) + "[" + std::to_string(index) + "] for " +
                      Hex(va) + " is not present");
    }
    t.writable = t.writable && (entry & pte::kWritable);
    t.user = t.user && (entry & pte::kUser);
    t.nx = t.nx || (mode.nxe && (entry & pte::kNoExecute));
    const bool leaf = level == 1 || ((level == 2 || level == 3) && (entry & pte::kHuge));
    if (level >= 4 && (entry & pte::kHuge)) {
      return InvalidArgument(std::string(LevelName(level)) + " for " + Hex(va) +
                             " has the reserved PS bit set");
    }
    if (leaf) {
      const std::uint64_t size = 1ull << shift;
      t.page_size = size;
      t.leaf_table = table;
      t.gpa = ((entry & pte::kAddrMask) & ~(size - 1)) | (va & (size - 1));
      return t;
    }
    table = entry & pte::kAddrMask;
  }
  return Internal("page walk fell through");  // unreachable: level 1 is always a leaf
}

Status ReadVirt(const GuestPhysMemory& mem, const PagingMode& mode, std::uint64_t va,
                std::span<std::uint8_t> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    HV_ASSIGN_OR_RETURN(Translation t, TranslateVirt(mem, mode, va + done));
    const std::uint64_t in_page = t.page_size - ((va + done) & (t.page_size - 1));
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(in_page, out.size() - done));
    HV_RETURN_IF_ERROR(mem.ReadPhys(t.gpa, out.subspan(done, n)));
    done += n;
  }
  return Status::Ok();
}

}  // namespace hv::vmm
