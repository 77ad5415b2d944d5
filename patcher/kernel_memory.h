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
#include <vector>

#include "base/status.h"
#include "vmm/guest_memory.h"
#include "vmm/page_walk.h"

namespace hv::patcher {

class KernelMemory {
 public:
  KernelMemory(const vmm::GuestPhysMemory& mem, vmm::PagingMode mode)
      : mem_(mem), mode_(mode), direct_(mem.DirectRam()) {}

  const vmm::GuestPhysMemory& phys() const { return mem_; }
  const vmm::PagingMode& mode() const { return mode_; }

  // Reads `out.size()` bytes at kernel virtual address `va`. Errors are those of the page walk
  // (kNotFound for an unmapped page, kInvalidArgument outside RAM), with "reading VA" context.
  Status Read(std::uint64_t va, std::span<std::uint8_t> out) const;

  // Where the `len` bytes at `va` are in this process, when guest RAM is mapped here
  // (vmm::GuestPhysMemory::DirectRam) and they are mapped contiguously by one guest page and
  // lie in one mapped range; nullptr otherwise (then Read reads them, or says why it cannot).
  // For the hot loops inside a commit's pause: the task walk reads a task_struct's fields
  // with plain loads from one pointer, the stack check scans stacks where they are. What
  // the bytes say is still hostile input; only where they are is checked here.
  const std::uint8_t* Direct(std::uint64_t va, std::size_t len) const;

  // True when Direct can ever succeed (guest RAM is mapped here).
  bool direct() const { return !direct_.empty(); }

  // GuestPhysMemory::Prefetch of the bytes at `va` (a hint; translation errors are ignored).
  void Prefetch(std::uint64_t va, std::size_t size) const;

  // Where `va`'s 2 MiB region is already known to be mapped by 4 KiB pages (a vmalloc'ed
  // stack whose region an earlier read translated), requests the line holding its PTE, so a
  // later Direct/Read of `va` does not wait for it. A hint: nothing else is done.
  void PrefetchTranslation(std::uint64_t va) const;

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
    std::uint64_t bytes = 0;  // physically contiguous bytes from gpa (to the end of the page)
  };
  Result<Run> Translate(std::uint64_t va) const;
  // `len` bytes at `gpa` inside one direct range, or nullptr.
  const std::uint8_t* HostOf(std::uint64_t gpa, std::uint64_t len) const {
    return vmm::DirectHostOf(direct_, gpa, len);
  }

  const vmm::GuestPhysMemory& mem_;
  vmm::PagingMode mode_;
  std::vector<vmm::DirectRange> direct_;
  // Translations by 2 MiB virtual region, direct-mapped on the region number: the leaf's
  // guest-physical base for a 2 MiB or 1 GiB page (the direct map, where task_structs live),
  // or the page table that maps the region's 4 KiB pages (vmalloc'ed stacks: one PTE read per
  // page instead of a four-level walk). Thousands of tasks are read inside a commit's pause;
  // this keeps each read to a compare or one entry load, with no allocation. Page tables may
  // change while the guest runs, so an instance lives for one pause (GuestKernel makes a fresh
  // one per build or task walk).
  struct Region {
    std::uint64_t tag = ~std::uint64_t{0};  // va >> 21; never a canonical region's when unused
    std::uint64_t base = 0;                 // gpa of the region's first byte, or of its page table
    bool leaf = false;                      // base is data (2 MiB / 1 GiB page), not a table
  };
  static constexpr std::size_t kRegions = 512;
  mutable std::array<Region, kRegions> regions_{};
};

}  // namespace hv::patcher
