// Like OverlayKernelWords (kernel_words.h), but the local copy is shared: several kernel edits
// of one pause see one another's writes to memory that is not mapped yet. An atomic replace
// needs it: the new patch's shadow module (in arena pages whose PTEs the pause writes) is
// linked by one edit, and the replaced patches' modules are unlinked by a later one, which may
// read and rewrite the new module's list and tree links.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "patcher/kernel_words.h"

namespace hv::patcher {

class SharedOverlayWords : public KernelWords {
 public:
  SharedOverlayWords(KernelWords& base, std::uint64_t va, std::shared_ptr<std::vector<std::uint8_t>> bytes)
      : base_(base), va_(va), bytes_(std::move(bytes)) {}

  Status Read(std::uint64_t va, std::span<std::uint8_t> out) override {
    if (Inside(va, out.size())) {
      std::memcpy(out.data(), bytes_->data() + (va - va_), out.size());
      return Status::Ok();
    }
    return base_.Read(va, out);
  }
  Status Write(std::uint64_t va, std::span<const std::uint8_t> bytes) override {
    if (Inside(va, bytes.size())) std::memcpy(bytes_->data() + (va - va_), bytes.data(), bytes.size());
    return base_.Write(va, bytes);
  }

 private:
  bool Inside(std::uint64_t va, std::size_t n) const {
    return va >= va_ && va - va_ <= bytes_->size() && n <= bytes_->size() - (va - va_);
  }
  KernelWords& base_;
  std::uint64_t va_;
  std::shared_ptr<std::vector<std::uint8_t>> bytes_;
};

}  // namespace hv::patcher
