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
};

// The result of translating a guest-virtual address through the guest's page tables.
struct Translation {
  std::uint64_t gpa = 0;        // physical address of the byte at `va`
  std::uint64_t page_size = 0;  // 4 KiB, 2 MiB or 1 GiB
  bool writable = false;        // RW at every level
  bool user = false;            // US at every level
  bool nx = false;              // NX at any level (with EFER.NXE)
};

}  // namespace hv::vmm
