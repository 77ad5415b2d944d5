// Guest memory read through a page cache for the length of one job done with the guest
// running: building the guest kernel model (GuestKernel::Build: vmcoreinfo, kallsyms, BTF, the
// module list and every module's symbols), whose thousands of small reads (list links, a
// symbol name 64 bytes at a time, page-table entries) would otherwise cost one
// process_vm_readv each: ~1,600 per command on the test guest.
//
// What the model reads does not change while the guest runs (kernel text and tables, loaded
// modules), and each read of a running guest was never atomic with the next: a page kept from
// its first read is as good as a fresh read of it. Nothing here is for reads inside a pause
// (QemuVm has its own per-pause cache) or for memory hvpatch writes. Where guest RAM is mapped
// into this process (ReadsFromMapping), reads are already plain loads and pass straight through.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/status.h"
#include "vmm/guest_memory.h"
#include "vmm/phys_page_cache.h"

namespace hv::vmm {

class CachedPhysMemory : public GuestPhysMemory {
 public:
  explicit CachedPhysMemory(const GuestPhysMemory& inner) : inner_(inner) {}

  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override;
  std::vector<PhysRange> RamRanges() const override { return inner_.RamRanges(); }
  bool ReadsFromMapping() const override { return inner_.ReadsFromMapping(); }
  void Prefetch(std::uint64_t gpa, std::size_t size) const override { inner_.Prefetch(gpa, size); }
  std::vector<DirectRange> DirectRam() const override { return inner_.DirectRam(); }

  std::uint64_t fetches() const { return cache_.fetches(); }

 private:
  const GuestPhysMemory& inner_;
  mutable PhysPageCache cache_;
};

}  // namespace hv::vmm
