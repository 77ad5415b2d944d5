// Reads the guest kernel's virtual address space through its own page tables.
//
// The root is the kernel's `init_top_pgt` (swapper_pg_dir), located through vmcoreinfo: its
// physical address is SYMBOL(init_top_pgt) - __START_KERNEL_map + NUMBER(phys_base), the same
// __pa_symbol() arithmetic the kernel uses. This root maps the whole kernel half (image, direct
// map, vmalloc stacks, modules) whatever a vCPU is doing, whereas a vCPU's CR3 may be a PTI user
// page table that maps almost none of it. A vCPU's CR3 is only the fallback.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>

#include "base/status.h"
#include "vmm/guest_memory.h"
#include "vmm/page_walk.h"

namespace hv::patcher {

class KernelMemory {
 public:
  KernelMemory(const vmm::GuestPhysMemory& mem, vmm::PagingMode mode) : mem_(mem), mode_(mode) {}

  const vmm::GuestPhysMemory& phys() const { return mem_; }
  const vmm::PagingMode& mode() const { return mode_; }

  // Reads `out.size()` bytes at kernel virtual address `va`. Errors are those of the page walk
  // (kNotFound for an unmapped page, kInvalidArgument outside RAM), with "reading VA" context.
  Status Read(std::uint64_t va, std::span<std::uint8_t> out) const;

  // GuestPhysMemory::Prefetch of the bytes at `va` (a hint; translation errors are ignored).
  void Prefetch(std::uint64_t va, std::size_t size) const;

  Result<std::uint64_t> ReadU64(std::uint64_t va) const;
  Result<std::uint32_t> ReadU32(std::uint64_t va) const;
  Result<std::int32_t> ReadS32(std::uint64_t va) const;
  // A NUL-terminated string of at most `max` bytes (kInvalidArgument if no NUL within `max`).
  Result<std::string> ReadCString(std::uint64_t va, std::size_t max) const;
  // A fixed char array (like task_struct.comm): up to the first NUL or `size` bytes.
  Result<std::string> ReadCharArray(std::uint64_t va, std::size_t size) const;

 private:
  struct Run {
    std::uint64_t gpa = 0;
    std::uint64_t bytes = 0;  // physically contiguous bytes from gpa (to the end of the mapping)
  };
  struct Cached {
    std::uint64_t gpa = 0, run = 0;
  };
  Result<Run> Translate(std::uint64_t va) const;

  const vmm::GuestPhysMemory& mem_;
  vmm::PagingMode mode_;
  // 4 KiB virtual page -> guest-physical page and the contiguous run behind it. Page tables
  // may change while the guest runs, so an instance lives for one pause (GuestKernel makes a
  // fresh one per build or task walk).
  mutable std::unordered_map<std::uint64_t, Cached> pages_;
  // The last few 2 MiB / 1 GiB translations (the direct map, where task_structs and most kernel
  // objects live), checked before the per-4 KiB map: one compare instead of a hash lookup, and
  // no map entry per 4 KiB page of a huge mapping (thousands inside a commit's pause).
  struct Huge {
    std::uint64_t va = 0, size = 0, gpa = 0;  // size 0: unused
  };
  mutable std::array<Huge, 4> huge_{};
  mutable unsigned next_huge_ = 0;
};

}  // namespace hv::patcher
