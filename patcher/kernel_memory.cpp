#include "patcher/kernel_memory.h"

#include <algorithm>
#include <cstring>

#include "base/hex.h"

namespace hv::patcher {
namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kRegion = 2ull << 20;
}  // namespace

Result<KernelMemory::Run> KernelMemory::Translate(std::uint64_t va) const {
  const std::uint64_t tag = va >> 21;
  Region& r = regions_[tag % kRegions];
  if (r.tag == tag) {
    const std::uint64_t in_region = va & (kRegion - 1);
    if (r.leaf) return Run{r.base + in_region, kRegion - in_region};
    // The region's page table: only the PTE is read again (it may be any value: the checks are
    // the page walk's, and a PTE that is not present goes to the full walk for its error).
    const std::uint64_t slot = r.base + ((va >> 12) & 511) * 8;
    std::uint64_t entry = 0;
    bool read = false;
    if (const std::uint8_t* p = HostOf(slot, 8)) {
      std::memcpy(&entry, p, 8);
      read = true;
    } else {
      std::uint8_t raw[8];
      read = mem_.ReadPhys(slot, raw).ok();
      std::memcpy(&entry, raw, 8);
    }
    if (read && (entry & vmm::pte::kPresent)) {
      const std::uint64_t in_page = va & (kPage - 1);
      return Run{(entry & vmm::pte::kAddrMask) | in_page, kPage - in_page};
    }
  }
  HV_ASSIGN_OR_RETURN(vmm::Translation t, vmm::TranslateVirt(mem_, mode_, va));
  if (t.page_size > kPage) {
    // 2 MiB or 1 GiB: both map this whole 2 MiB region contiguously.
    const std::uint64_t in_region = va & (kRegion - 1);
    r = Region{tag, t.gpa - in_region, true};
    return Run{t.gpa, kRegion - in_region};
  }
  r = Region{tag, t.leaf_table, false};
  return Run{t.gpa, kPage - (va & (kPage - 1))};
}

Status KernelMemory::Read(std::uint64_t va, std::span<std::uint8_t> out) const {
  std::size_t done = 0;
  while (done < out.size()) {
    const std::uint64_t at = va + done;
    Result<Run> r = Translate(at);
    if (!r.ok()) return r.status().WithContext("reading " + Hex(at));
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(r->bytes, out.size() - done));
    if (const std::uint8_t* p = HostOf(r->gpa, n)) {
      std::memcpy(out.data() + done, p, n);
    } else {
      Status s = mem_.ReadPhys(r->gpa, out.subspan(done, n));
      if (!s.ok()) return s.WithContext("reading " + Hex(at));
    }
    done += n;
  }
  return Status::Ok();
}

const std::uint8_t* KernelMemory::Direct(std::uint64_t va, std::size_t len) const {
  if (direct_.empty()) return nullptr;
  Result<Run> r = Translate(va);
  if (!r.ok() || r->bytes < len) return nullptr;
  return HostOf(r->gpa, len);
}

void KernelMemory::Prefetch(std::uint64_t va, std::size_t size) const {
  Result<Run> r = Translate(va);
  if (r.ok()) mem_.Prefetch(r->gpa, static_cast<std::size_t>(std::min<std::uint64_t>(size, r->bytes)));
}

void KernelMemory::PrefetchTranslation(std::uint64_t va) const {
  const std::uint64_t tag = va >> 21;
  const Region& r = regions_[tag % kRegions];
  if (r.tag != tag || r.leaf) return;
  if (const std::uint8_t* p = HostOf(r.base + ((va >> 12) & 511) * 8, 8)) __builtin_prefetch(p);
}

Result<std::uint64_t> KernelMemory::ReadU64(std::uint64_t va) const {
  if (const std::uint8_t* p = Direct(va, 8)) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  }
  std::uint8_t b[8];
  HV_RETURN_IF_ERROR(Read(va, b));
  std::uint64_t v;
  std::memcpy(&v, b, 8);
  return v;
}

Result<std::uint32_t> KernelMemory::ReadU32(std::uint64_t va) const {
  if (const std::uint8_t* p = Direct(va, 4)) {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  std::uint8_t b[4];
  HV_RETURN_IF_ERROR(Read(va, b));
  std::uint32_t v;
  std::memcpy(&v, b, 4);
  return v;
}

Result<std::int32_t> KernelMemory::ReadS32(std::uint64_t va) const {
  HV_ASSIGN_OR_RETURN(std::uint32_t v, ReadU32(va));
  return static_cast<std::int32_t>(v);
}

Result<std::string> KernelMemory::ReadCString(std::uint64_t va, std::size_t max) const {
  std::string s;
  std::uint8_t buf[64];
  while (s.size() < max) {
    // Stay inside the page so a string at the end of a mapping does not fail on the next page.
    const std::size_t n = std::min<std::size_t>(
        {sizeof(buf), max - s.size(), static_cast<std::size_t>(kPage - ((va + s.size()) & (kPage - 1)))});
    HV_RETURN_IF_ERROR(Read(va + s.size(), std::span(buf, n)));
    const auto* nul = static_cast<const std::uint8_t*>(std::memchr(buf, 0, n));
    if (nul) {
      s.append(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(nul - buf));
      return s;
    }
    s.append(reinterpret_cast<const char*>(buf), n);
  }
  return InvalidArgument("string at " + Hex(va) + " has no NUL within " + std::to_string(max) +
                         " bytes");
}

Result<std::string> KernelMemory::ReadCharArray(std::uint64_t va, std::size_t size) const {
  std::string s(size, '\0');
  HV_RETURN_IF_ERROR(Read(va, std::span(reinterpret_cast<std::uint8_t*>(s.data()), size)));
  s.resize(std::strlen(s.c_str()));
  return s;
}

}  // namespace hv::patcher
