// A std::vector-backed GuestPhysMemory for unit tests, with helpers to build real x86-64 page
// tables inside it (Firecracker tests devices against plain memory the same way).
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "base/hex.h"
#include "base/status.h"
#include "vmm/guest_memory.h"

namespace hv::testing {

class FakePhysMemory : public vmm::GuestPhysMemory {
 public:
  // RAM at [base, base+size); everything else reads as an error, like a real backend.
  explicit FakePhysMemory(std::uint64_t size, std::uint64_t base = 0)
      : base_(base), bytes_(size, 0) {}

  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override {
    if (gpa < base_ || gpa - base_ > bytes_.size() || out.size() > bytes_.size() - (gpa - base_)) {
      return InvalidArgument("guest-physical address " + Hex(gpa) + " is not guest RAM");
    }
    std::memcpy(out.data(), bytes_.data() + (gpa - base_), out.size());
    return Status::Ok();
  }
  std::vector<vmm::PhysRange> RamRanges() const override {
    return {vmm::PhysRange{base_, bytes_.size()}};
  }
  // With set_direct(true), the bytes are also offered for plain loads, as a mapping of guest
  // RAM would be (vmm::GuestPhysMemory::DirectRam).
  std::vector<vmm::DirectRange> DirectRam() const override {
    if (!direct_) return {};
    return {vmm::DirectRange{base_, bytes_.size(), bytes_.data()}};
  }
  void set_direct(bool on) { direct_ = on; }

  void Write(std::uint64_t gpa, std::span<const std::uint8_t> data) {
    std::memcpy(bytes_.data() + (gpa - base_), data.data(), data.size());
  }
  void Write64(std::uint64_t gpa, std::uint64_t v) {
    std::memcpy(bytes_.data() + (gpa - base_), &v, 8);
  }
  std::uint64_t Read64(std::uint64_t gpa) const {
    std::uint64_t v;
    std::memcpy(&v, bytes_.data() + (gpa - base_), 8);
    return v;
  }

  // Hands out zeroed 4 KiB pages for page tables, from the top of RAM down.
  std::uint64_t AllocTable() {
    next_table_ = next_table_ == 0 ? base_ + bytes_.size() - 4096 : next_table_ - 4096;
    return next_table_;
  }

  // Maps `va` to `gpa` with a leaf of `page_size` (4 KiB, 2 MiB, 1 GiB) under the table at
  // `root` (4 or 5 levels), creating intermediate tables. `leaf_flags` go on the leaf;
  // intermediate entries get present|writable|user so the leaf decides.
  void Map(std::uint64_t root, bool la57, std::uint64_t va, std::uint64_t gpa, std::uint64_t page_size,
           std::uint64_t leaf_flags) {
    const int leaf_level = page_size == (1ull << 30) ? 3 : page_size == (2ull << 20) ? 2 : 1;
    std::uint64_t table = root;
    for (int level = la57 ? 5 : 4; level >= 1; --level) {
      const std::uint64_t slot = table + ((va >> (12 + 9 * (level - 1))) & 511) * 8;
      if (level == leaf_level) {
        Write64(slot, gpa | leaf_flags | (leaf_level > 1 ? (1ull << 7) : 0));
        return;
      }
      std::uint64_t e = Read64(slot);
      if (!(e & 1)) {
        e = AllocTable() | 0x7;
        Write64(slot, e);
      }
      table = e & 0x000ffffffffff000ull;
    }
  }

 private:
  std::uint64_t base_;
  std::vector<std::uint8_t> bytes_;
  std::uint64_t next_table_ = 0;
  bool direct_ = false;
};

}  // namespace hv::testing
