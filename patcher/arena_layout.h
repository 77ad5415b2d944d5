// The arena: hypervisor-owned memory (an ivshmem BAR) mapped by one PMD entry into a free 2 MiB
// slot of the guest's kernel-image window. This is its pure model: the page table that gives each
// 4 KiB page its own permissions, and an allocator of page runs shared by every patch.
//
// Layout of the arena (page = 4 KiB):
//   page 0      the arena's own PTE table: 512 entries, entry i maps page i. It is not mapped
//               itself, so the guest has no virtual address to write its own permissions with.
//   page 1..N-1 patch pages, each with one permission (W^X): code RX, rodata R+NX, data RW+NX.
//
// TLB rule: x86 may keep a translation cached after its PTE changed, until an INVLPG or a CR3
// write, and global entries survive CR3 writes. hvpatch never invalidates the guest's TLB, so a
// page's PTE only ever goes from not-present to present, and never changes once present: freeing
// a run keeps its pages mapped with their permission ("retired"), and a retired page is only
// handed out again for the same permission. A stale entry is then always a correct one.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

inline constexpr std::uint64_t kArenaPageSize = 4096;
inline constexpr std::uint64_t kArenaSlotSize = 2ull << 20;  // one PMD entry
inline constexpr std::uint32_t kArenaMaxPages = kArenaSlotSize / kArenaPageSize;

// What a page holds, which fixes its permission.
enum class MemoryClass { kCode = 0, kRodata = 1, kData = 2 };
inline constexpr std::size_t kMemoryClasses = 3;
// "code", "rodata", "data".
std::string_view MemoryClassName(MemoryClass c);

// A run of pages owned by one patch.
struct ArenaAllocation {
  std::string owner;  // the patch name
  std::uint32_t first_page = 0;
  std::uint32_t pages = 0;
  MemoryClass memory = MemoryClass::kCode;
  // True if some page of the run held code before (it may sit in the guest's or TCG's caches):
  // the commit must write it as code (Vm::WriteCode), not with a plain host write.
  bool reuses_code_pages = false;

  std::uint64_t offset() const { return std::uint64_t{first_page} * kArenaPageSize; }
  std::uint64_t size() const { return std::uint64_t{pages} * kArenaPageSize; }
  bool operator==(const ArenaAllocation&) const = default;
};

// A freed page that stays mapped with its old permission.
struct RetiredPage {
  std::uint32_t page = 0;
  MemoryClass memory = MemoryClass::kCode;
  bool operator==(const RetiredPage&) const = default;
};

class ArenaLayout {
 public:
  // `base_va`: the 2 MiB-aligned slot in the kernel-image window. `base_gpa`: the guest-physical
  // address of the arena's first byte (BAR2), 4 KiB aligned. `size`: a multiple of 4 KiB, at least
  // two pages, at most 2 MiB (one PTE table maps one slot).
  // Errors: kInvalidArgument for a misaligned address or a size out of range.
  static Result<ArenaLayout> Create(std::uint64_t base_va, std::uint64_t base_gpa, std::uint64_t size);

  std::uint64_t base_va() const { return base_va_; }
  std::uint64_t base_gpa() const { return base_gpa_; }
  std::uint64_t size() const { return size_; }
  std::uint32_t pages() const { return static_cast<std::uint32_t>(size_ / kArenaPageSize); }
  const std::vector<ArenaAllocation>& allocations() const { return allocations_; }
  const std::vector<RetiredPage>& retired() const { return retired_; }

  // Takes `pages` contiguous pages for `owner`, first fit, from pages that are free and either
  // never used or retired with the same permission.
  // Errors: kInvalidArgument for 0 pages or a bad owner name (it must be a module name: letters,
  // digits, '_' and '-'), kUnavailable if no such run is free ("arena full").
  Result<ArenaAllocation> Allocate(std::string_view owner, std::uint32_t pages, MemoryClass memory);

  // Frees every run of `owner` (its pages become retired). Errors: kNotFound if it has none.
  Status Free(std::string_view owner);
  // Hands `owner`'s runs of class `memory` over to `keeper`, so Free(owner) leaves them allocated
  // (memory the guest kernel keeps a pointer to for good, e.g. a static key tombstone).
  // Errors: kNotFound if it has none, kInvalidArgument for a bad keeper name.
  Status Transfer(std::string_view owner, MemoryClass memory, std::string_view keeper);

  // The guest VA and GPA of byte `offset` of the arena.
  std::uint64_t Va(std::uint64_t offset) const { return base_va_ + offset; }
  std::uint64_t Gpa(std::uint64_t offset) const { return base_gpa_ + offset; }

  // The PTE for page `page` as it should be now: allocated and retired pages are present with
  // their permission, page 0 and never-used pages are 0 (not present).
  //   code   P | A | G            (read-only, executable)
  //   rodata P | A | G | NX
  //   data   P | RW | A | D | G | NX
  // A and D are preset so the guest's MMU never writes into the table.
  std::uint64_t PteValue(std::uint32_t page) const;
  // The whole table (page 0), little-endian, 512 entries (pages past size() are 0).
  std::array<std::uint8_t, kArenaPageSize> PteTable() const;
  // The PMD entry that maps the slot through page 0: P | RW | A | D (the kernel's _KERNPG_TABLE),
  // executable (each PTE decides).
  std::uint64_t PmdEntry() const;

  // Text form for the ledger, one record a line:
  //   arena <base_va> <base_gpa> <size>
  //   alloc <owner> <first_page> <pages> <code|rodata|data> <0|1>
  //   retired <page> <code|rodata|data>
  std::string Serialize() const;
  // Errors: kInvalidArgument (with the line number) for any malformed, overlapping or out-of-range
  // record: the text is re-validated, never trusted.
  static Result<ArenaLayout> Deserialize(std::string_view text);

 private:
  ArenaLayout() = default;
  // Per page: who holds it (index into allocations_, or -1), and whether it is retired.
  Status Validate() const;

  std::uint64_t base_va_ = 0;
  std::uint64_t base_gpa_ = 0;
  std::uint64_t size_ = 0;
  std::vector<ArenaAllocation> allocations_;
  std::vector<RetiredPage> retired_;
};

}  // namespace hv::patcher
