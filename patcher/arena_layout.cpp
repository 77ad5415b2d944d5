#include "patcher/arena_layout.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>
#include <sstream>

#include "base/hex.h"
#include "vmm/page_walk.h"

namespace hv::patcher {

namespace {

bool ValidOwner(std::string_view n) {
  if (n.empty() || n.size() > 55) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

bool ParseClass(std::string_view s, MemoryClass* out) {
  for (MemoryClass c : {MemoryClass::kCode, MemoryClass::kRodata, MemoryClass::kData}) {
    if (s == MemoryClassName(c)) {
      *out = c;
      return true;
    }
  }
  return false;
}

bool ParseU64(std::string_view s, std::uint64_t* out) {
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    s.remove_prefix(2);
    base = 16;
  }
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return ec == std::errc() && p == s.data() + s.size();
}

std::vector<std::string_view> Split(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    std::size_t j = i;
    while (j < line.size() && line[j] != ' ') ++j;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

std::string_view MemoryClassName(MemoryClass c) {
  switch (c) {
    case MemoryClass::kCode: return "code";
    case MemoryClass::kRodata: return "rodata";
    case MemoryClass::kData: return "data";
  }
  return "unknown";
}

Result<ArenaLayout> ArenaLayout::Create(std::uint64_t base_va, std::uint64_t base_gpa, std::uint64_t size) {
  if (base_va % kArenaSlotSize != 0) {
    return InvalidArgument("arena address " + Hex(base_va) + " is not 2 MiB aligned");
  }
  if (base_gpa % kArenaPageSize != 0 || (base_gpa & ~vmm::pte::kAddrMask) != 0) {
    return InvalidArgument("arena physical address " + Hex(base_gpa) + " is not a 4 KiB aligned address");
  }
  if (size % kArenaPageSize != 0 || size < 2 * kArenaPageSize || size > kArenaSlotSize) {
    return InvalidArgument("arena size " + Hex(size) +
                           " is not a multiple of 4 KiB between 8 KiB and 2 MiB");
  }
  if (base_gpa + size < base_gpa || ((base_gpa + size - 1) >> 52) != 0) {  // 52-bit physical
    return InvalidArgument("arena physical range at " + Hex(base_gpa) + " is out of range");
  }
  ArenaLayout a;
  a.base_va_ = base_va;
  a.base_gpa_ = base_gpa;
  a.size_ = size;
  return a;
}

Result<ArenaAllocation> ArenaLayout::Allocate(std::string_view owner, std::uint32_t pages,
                                              MemoryClass memory) {
  if (!ValidOwner(owner)) return InvalidArgument("arena owner '" + std::string(owner) + "' is not a module name");
  if (pages == 0) return InvalidArgument("arena allocation of 0 pages");
  // A page is usable if it is not taken and not retired with another permission (TLB rule).
  const std::uint32_t n = this->pages();
  std::vector<std::uint8_t> usable(n, 1);
  std::vector<std::uint8_t> was_code(n, 0);
  usable[0] = 0;  // the PTE table
  for (const auto& a : allocations_) {
    for (std::uint32_t p = a.first_page; p < a.first_page + a.pages; ++p) usable[p] = 0;
  }
  for (const auto& r : retired_) {
    if (r.memory != memory) usable[r.page] = 0;
    if (r.memory == MemoryClass::kCode) was_code[r.page] = 1;
  }
  std::uint32_t run = 0;
  for (std::uint32_t p = 1; p < n; ++p) {
    run = usable[p] ? run + 1 : 0;
    if (run == pages) {
      ArenaAllocation a;
      a.owner = std::string(owner);
      a.first_page = p + 1 - pages;
      a.pages = pages;
      a.memory = memory;
      for (std::uint32_t q = a.first_page; q <= p; ++q) a.reuses_code_pages |= was_code[q] != 0;
      // The pages are in use again: no longer retired.
      std::erase_if(retired_, [&](const RetiredPage& r) { return r.page >= a.first_page && r.page <= p; });
      allocations_.push_back(a);
      return a;
    }
  }
  return Unavailable("arena full: no free run of " + std::to_string(pages) + " " +
                     std::string(MemoryClassName(memory)) + " pages for '" + std::string(owner) + "'");
}

Status ArenaLayout::Transfer(std::string_view owner, MemoryClass memory, std::string_view keeper) {
  if (!ValidOwner(keeper)) return InvalidArgument("arena owner '" + std::string(keeper) + "' is not a module name");
  bool found = false;
  for (auto& a : allocations_) {
    if (a.owner != owner || a.memory != memory) continue;
    a.owner = std::string(keeper);
    found = true;
  }
  if (!found) {
    return NotFound("arena has no " + std::string(MemoryClassName(memory)) + " pages of '" + std::string(owner) + "'");
  }
  return Status::Ok();
}

Status ArenaLayout::Free(std::string_view owner) {
  bool found = false;
  for (const auto& a : allocations_) {
    if (a.owner != owner) continue;
    found = true;
    for (std::uint32_t p = a.first_page; p < a.first_page + a.pages; ++p) retired_.push_back({p, a.memory});
  }
  if (!found) return NotFound("arena has no pages of '" + std::string(owner) + "'");
  std::erase_if(allocations_, [&](const ArenaAllocation& a) { return a.owner == owner; });
  std::sort(retired_.begin(), retired_.end(),
            [](const RetiredPage& a, const RetiredPage& b) { return a.page < b.page; });
  return Status::Ok();
}

std::uint64_t ArenaLayout::PteValue(std::uint32_t page) const {
  namespace pte = vmm::pte;
  if (page == 0 || page >= pages()) return 0;
  const MemoryClass* memory = nullptr;
  for (const auto& a : allocations_) {
    if (page >= a.first_page && page < a.first_page + a.pages) memory = &a.memory;
  }
  for (const auto& r : retired_) {
    if (r.page == page) memory = &r.memory;
  }
  if (memory == nullptr) return 0;
  std::uint64_t v = (Gpa(std::uint64_t{page} * kArenaPageSize) & pte::kAddrMask) | pte::kPresent |
                    pte::kAccessed | pte::kGlobal;
  switch (*memory) {
    case MemoryClass::kCode: break;
    case MemoryClass::kRodata: v |= pte::kNoExecute; break;
    case MemoryClass::kData: v |= pte::kWritable | pte::kDirty | pte::kNoExecute; break;
  }
  return v;
}

std::array<std::uint8_t, kArenaPageSize> ArenaLayout::PteTable() const {
  std::array<std::uint8_t, kArenaPageSize> t{};
  for (std::uint32_t p = 0; p < pages(); ++p) {
    const std::uint64_t v = PteValue(p);
    std::memcpy(t.data() + 8 * p, &v, 8);  // x86 is little-endian, like the host
  }
  return t;
}

std::uint64_t ArenaLayout::PmdEntry() const {
  namespace pte = vmm::pte;
  // D too: the kernel's pmd_bad() wants exactly _KERNPG_TABLE (P|RW|A|D) in a table entry, or
  // its own walks (vmalloc_to_page() in text_poke(), direct_map_alias.h) refuse the arena.
  return (base_gpa_ & pte::kAddrMask) | pte::kPresent | pte::kWritable | pte::kAccessed | pte::kDirty;
}

std::string ArenaLayout::Serialize() const {
  std::ostringstream o;
  o << "arena " << Hex(base_va_) << ' ' << Hex(base_gpa_) << ' ' << Hex(size_) << '\n';
  for (const auto& a : allocations_) {
    o << "alloc " << a.owner << ' ' << a.first_page << ' ' << a.pages << ' ' << MemoryClassName(a.memory)
      << ' ' << (a.reuses_code_pages ? 1 : 0) << '\n';
  }
  for (const auto& r : retired_) o << "retired " << r.page << ' ' << MemoryClassName(r.memory) << '\n';
  return o.str();
}

Result<ArenaLayout> ArenaLayout::Deserialize(std::string_view text) {
  constexpr std::size_t kMaxLines = 4 * kArenaMaxPages;
  std::optional<ArenaLayout> layout;
  std::size_t line_no = 0;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    if (line_no > kMaxLines) return InvalidArgument("arena state has too many lines");
    const auto f = Split(line);
    if (f.empty()) continue;
    auto bad = [&](std::string_view why) {
      return InvalidArgument("arena state line " + std::to_string(line_no) + ": " + std::string(why));
    };
    if (f[0] == "arena") {
      std::uint64_t va, gpa, size;
      if (layout) return bad("second 'arena' record");
      if (f.size() != 4 || !ParseU64(f[1], &va) || !ParseU64(f[2], &gpa) || !ParseU64(f[3], &size)) {
        return bad("malformed 'arena' record");
      }
      auto a = Create(va, gpa, size);
      if (!a.ok()) return a.status().WithContext("arena state line " + std::to_string(line_no));
      layout = std::move(*a);
      continue;
    }
    if (!layout) return bad("record before the 'arena' record");
    const std::uint64_t n = layout->pages();
    if (f[0] == "alloc") {
      ArenaAllocation a;
      std::uint64_t first, pages, reuse;
      if (f.size() != 6 || !ValidOwner(f[1]) || !ParseU64(f[2], &first) || !ParseU64(f[3], &pages) ||
          !ParseClass(f[4], &a.memory) || !ParseU64(f[5], &reuse) || reuse > 1) {
        return bad("malformed 'alloc' record");
      }
      if (first == 0 || pages == 0 || first >= n || pages > n - first) return bad("allocation out of range");
      a.owner = std::string(f[1]);
      a.first_page = static_cast<std::uint32_t>(first);
      a.pages = static_cast<std::uint32_t>(pages);
      a.reuses_code_pages = reuse == 1;
      layout->allocations_.push_back(std::move(a));
    } else if (f[0] == "retired") {
      RetiredPage r;
      std::uint64_t page;
      if (f.size() != 3 || !ParseU64(f[1], &page) || !ParseClass(f[2], &r.memory)) {
        return bad("malformed 'retired' record");
      }
      if (page == 0 || page >= n) return bad("retired page out of range");
      r.page = static_cast<std::uint32_t>(page);
      layout->retired_.push_back(r);
    } else {
      return bad("unknown record '" + std::string(f[0]) + "'");
    }
  }
  if (!layout) return InvalidArgument("arena state has no 'arena' record");
  HV_RETURN_IF_ERROR(layout->Validate());
  return std::move(*layout);
}

Status ArenaLayout::Validate() const {
  std::vector<std::uint8_t> used(pages(), 0);
  for (const auto& a : allocations_) {
    for (std::uint32_t p = a.first_page; p < a.first_page + a.pages; ++p) {
      if (used[p]++) return InvalidArgument("arena state: page " + std::to_string(p) + " is used twice");
    }
  }
  for (const auto& r : retired_) {
    if (used[r.page]++) return InvalidArgument("arena state: page " + std::to_string(r.page) + " is used twice");
  }
  return Status::Ok();
}

}  // namespace hv::patcher
