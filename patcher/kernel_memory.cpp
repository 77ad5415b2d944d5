#include "patcher/kernel_memory.h"

#include <algorithm>
#include <cstring>

#include "base/hex.h"

namespace hv::patcher {
namespace {
constexpr std::uint64_t kPage = 4096;
// Bounds the translation cache; a hostile guest cannot make it grow without limit.
constexpr std::size_t kMaxCachedPages = 1 << 16;
}  // namespace

Result<KernelMemory::Run> KernelMemory::Translate(std::uint64_t va) const {
  for (const Huge& h : huge_) {
    if (h.size != 0 && va - h.va < h.size) return Run{h.gpa + (va - h.va), h.size - (va - h.va)};
  }
  const std::uint64_t page = va & ~(kPage - 1);
  if (auto it = pages_.find(page); it != pages_.end()) {
    return Run{it->second.gpa + (va - page), it->second.run - (va - page)};
  }
  HV_ASSIGN_OR_RETURN(vmm::Translation t, vmm::TranslateVirt(mem_, mode_, page));
  if (t.page_size > kPage) {
    const std::uint64_t into = page & (t.page_size - 1);
    huge_[next_huge_++ % huge_.size()] = Huge{page - into, t.page_size, t.gpa - into};
    return Run{t.gpa + (va - page), t.page_size - into - (va - page)};
  }
  if (pages_.size() >= kMaxCachedPages) pages_.clear();
  // Bytes from `page` to the end of its (possibly 2 MiB or 1 GiB) mapping: one physical read
  // can cover them all.
  const std::uint64_t run = t.page_size - (page & (t.page_size - 1));
  pages_[page] = Cached{t.gpa, run};
  return Run{t.gpa + (va - page), run - (va - page)};
}

Status KernelMemory::Read(std::uint64_t va, std::span<std::uint8_t> out) const {
  std::size_t done = 0;
  while (done < out.size()) {
    const std::uint64_t at = va + done;
    Result<Run> r = Translate(at);
    if (!r.ok()) return r.status().WithContext("reading " + Hex(at));
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(r->bytes, out.size() - done));
    Status s = mem_.ReadPhys(r->gpa, out.subspan(done, n));
    if (!s.ok()) return s.WithContext("reading " + Hex(at));
    done += n;
  }
  return Status::Ok();
}

void KernelMemory::Prefetch(std::uint64_t va, std::size_t size) const {
  Result<Run> r = Translate(va);
  if (r.ok()) mem_.Prefetch(r->gpa, static_cast<std::size_t>(std::min<std::uint64_t>(size, r->bytes)));
}

Result<std::uint64_t> KernelMemory::ReadU64(std::uint64_t va) const {
  std::uint8_t b[8];
  HV_RETURN_IF_ERROR(Read(va, b));
  std::uint64_t v;
  std::memcpy(&v, b, 8);
  return v;
}

Result<std::uint32_t> KernelMemory::ReadU32(std::uint64_t va) const {
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
