// Guest kernel memory by virtual address, as the shadow module's edits of kernel data see it:
// a few words read and written in the kernel's own lists and trees (modules, mod_tree,
// module_bug_list). StagedKernelWords collects the writes, so an edit reads everything first
// (any read can fail on hostile or changing memory) and nothing reaches the guest until the
// caller writes the staged list, all at once, inside the pause.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

class KernelWords {
 public:
  virtual ~KernelWords() = default;
  // Exactly out.size() bytes at `va`. Errors: unmapped or unreadable memory, with the address.
  virtual Status Read(std::uint64_t va, std::span<std::uint8_t> out) = 0;
  virtual Status Write(std::uint64_t va, std::span<const std::uint8_t> bytes) = 0;

  Result<std::uint64_t> Read64(std::uint64_t va) {
    std::uint64_t v = 0;
    HV_RETURN_IF_ERROR(Read(va, {reinterpret_cast<std::uint8_t*>(&v), 8}));
    return v;
  }
  Result<std::uint32_t> Read32(std::uint64_t va) {
    std::uint32_t v = 0;
    HV_RETURN_IF_ERROR(Read(va, {reinterpret_cast<std::uint8_t*>(&v), 4}));
    return v;
  }
  Status Write64(std::uint64_t va, std::uint64_t v) {
    return Write(va, {reinterpret_cast<const std::uint8_t*>(&v), 8});
  }
  Status Write32(std::uint64_t va, std::uint32_t v) {
    return Write(va, {reinterpret_cast<const std::uint8_t*>(&v), 4});
  }
};

// Reads through to `base`, with the writes staged so far laid over it; writes only stage.
class StagedKernelWords : public KernelWords {
 public:
  struct Staged {
    std::uint64_t va = 0;
    std::vector<std::uint8_t> bytes;
  };

  explicit StagedKernelWords(KernelWords& base) : base_(base) {}

  Status Read(std::uint64_t va, std::span<std::uint8_t> out) override {
    HV_RETURN_IF_ERROR(base_.Read(va, out));
    for (const Staged& s : staged_) {  // later writes win: apply in order
      const std::uint64_t lo = std::max(va, s.va);
      const std::uint64_t hi = std::min(va + out.size(), s.va + s.bytes.size());
      if (lo < hi) std::memcpy(out.data() + (lo - va), s.bytes.data() + (lo - s.va), hi - lo);
    }
    return Status::Ok();
  }
  Status Write(std::uint64_t va, std::span<const std::uint8_t> bytes) override {
    staged_.push_back({va, {bytes.begin(), bytes.end()}});
    return Status::Ok();
  }

  // Every write, in the order it was made (a later write to the same bytes comes later).
  const std::vector<Staged>& writes() const { return staged_; }
  // Writes them all to `target`, in order. Stops at the first error.
  Status Flush(KernelWords& target) const {
    for (const Staged& s : staged_) HV_RETURN_IF_ERROR(target.Write(s.va, s.bytes));
    return Status::Ok();
  }

 private:
  KernelWords& base_;
  std::vector<Staged> staged_;
};

// Serves [va, va + bytes) from a local copy (memory the commit writes in the same pause, e.g. the
// arena's pages before their page-table entries exist) and everything else from `base`. Writes
// go to both, so later reads see them.
class OverlayKernelWords : public KernelWords {
 public:
  OverlayKernelWords(KernelWords& base, std::uint64_t va, std::vector<std::uint8_t> bytes)
      : base_(base), va_(va), bytes_(std::move(bytes)) {}

  Status Read(std::uint64_t va, std::span<std::uint8_t> out) override {
    if (Inside(va, out.size())) {
      std::memcpy(out.data(), bytes_.data() + (va - va_), out.size());
      return Status::Ok();
    }
    return base_.Read(va, out);
  }
  Status Write(std::uint64_t va, std::span<const std::uint8_t> bytes) override {
    if (Inside(va, bytes.size())) std::memcpy(bytes_.data() + (va - va_), bytes.data(), bytes.size());
    return base_.Write(va, bytes);
  }

 private:
  bool Inside(std::uint64_t va, std::size_t n) const {
    return va >= va_ && va - va_ <= bytes_.size() && n <= bytes_.size() - (va - va_);
  }
  KernelWords& base_;
  std::uint64_t va_;
  std::vector<std::uint8_t> bytes_;
};

}  // namespace hv::patcher
