// A vector-backed KernelWords for unit tests: kernel virtual memory at [base, base+size).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "base/hex.h"
#include "patcher/kernel_words.h"

namespace hv::testing {

class FakeKernelWords : public patcher::KernelWords {
 public:
  FakeKernelWords(std::uint64_t base, std::uint64_t size) : base_(base), bytes_(size, 0) {}

  Status Read(std::uint64_t va, std::span<std::uint8_t> out) override {
    if (!Inside(va, out.size())) return NotFound("virtual address " + Hex(va) + " is not mapped");
    std::memcpy(out.data(), bytes_.data() + (va - base_), out.size());
    ++reads_;
    return Status::Ok();
  }
  Status Write(std::uint64_t va, std::span<const std::uint8_t> in) override {
    if (!Inside(va, in.size())) return NotFound("virtual address " + Hex(va) + " is not mapped");
    std::memcpy(bytes_.data() + (va - base_), in.data(), in.size());
    ++writes_;
    return Status::Ok();
  }
  std::uint64_t Get64(std::uint64_t va) const {
    std::uint64_t v;
    std::memcpy(&v, bytes_.data() + (va - base_), 8);
    return v;
  }
  void Set64(std::uint64_t va, std::uint64_t v) { std::memcpy(bytes_.data() + (va - base_), &v, 8); }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  std::size_t writes() const { return writes_; }

 private:
  bool Inside(std::uint64_t va, std::size_t n) const {
    return va >= base_ && va - base_ <= bytes_.size() && n <= bytes_.size() - (va - base_);
  }
  std::uint64_t base_;
  std::vector<std::uint8_t> bytes_;
  std::size_t reads_ = 0, writes_ = 0;
};

}  // namespace hv::testing
