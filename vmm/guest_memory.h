// The small view of guest memory that patcher/ sees. Tests implement it over a std::vector
// holding real page tables; vmm backends implement it over the hypervisor.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/status.h"

namespace hv::vmm {

// A guest-physical range backed by RAM (not MMIO, not the PCI hole).
struct PhysRange {
  std::uint64_t start = 0;
  std::uint64_t size = 0;
  std::uint64_t end() const { return start + size; }
};

// Guest RAM that is mapped into this process: the byte at guest-physical `start` + i is
// data[i], for i < size. Hot loops (the task walk and stack check inside a commit's pause) load
// from it directly instead of one virtual ReadPhys per field; they check their bounds against
// these ranges exactly as ReadPhys would (see patcher/kernel_memory.h).
struct DirectRange {
  std::uint64_t start = 0;
  std::uint64_t size = 0;
  const std::uint8_t* data = nullptr;
};

// `len` bytes at `gpa` inside one of `ranges`, as a host pointer; nullptr when they are not all in
// one range.
inline const std::uint8_t* DirectHostOf(std::span<const DirectRange> ranges, std::uint64_t gpa,
                                        std::uint64_t len) {
  for (const DirectRange& d : ranges) {
    if (gpa - d.start < d.size && len <= d.size - (gpa - d.start)) return d.data + (gpa - d.start);
  }
  return nullptr;
}

// Guest-physical memory. Every read is bounds-checked against RamRanges(); a read that touches
// a byte outside them fails with kInvalidArgument naming the address. Guest memory is hostile
// input: callers must bound what they read.
class GuestPhysMemory {
 public:
  virtual ~GuestPhysMemory() = default;
  virtual Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const = 0;
  virtual std::vector<PhysRange> RamRanges() const = 0;
  // True when reads are copies from a mapping of guest RAM in this process, whose first touch
  // of a page costs a page fault: a caller may then touch, before a pause, what it will read
  // inside it (GuestKernelStacks::Prepare). False when every read costs the same anyway.
  virtual bool ReadsFromMapping() const { return false; }
  // A hint that [gpa, gpa + size) will be read soon: a backend that reads from a mapping starts
  // loading the first lines into the CPU's caches, so a walk over thousands of scattered objects
  // waits for several cache misses at once instead of one after another. Never fails, never
  // needed for correctness; the default does nothing.
  virtual void Prefetch(std::uint64_t gpa, std::size_t size) const {
    (void)gpa;
    (void)size;
  }
  // The guest RAM this process can load from directly, sorted by `start`; empty when reads are
  // not plain loads (process_vm_readv, the gdbstub). Every range lies inside RamRanges(). The
  // pointers stay valid as long as this object. A reader that uses them sees the same bytes
  // ReadPhys would return.
  virtual std::vector<DirectRange> DirectRam() const { return {}; }
};

// The result of translating a guest-virtual address through the guest's page tables.
struct Translation {
  std::uint64_t gpa = 0;        // physical address of the byte at `va`
  std::uint64_t page_size = 0;  // 4 KiB, 2 MiB or 1 GiB
  bool writable = false;        // RW at every level
  bool user = false;            // US at every level
  bool nx = false;              // NX at any level (with EFER.NXE)
  // Guest-physical address of the table that holds the leaf entry (for a 4 KiB page: the page
  // table every 4 KiB page of the same 2 MiB region shares; patcher::KernelMemory caches it).
  std::uint64_t leaf_table = 0;
};

}  // namespace hv::vmm
