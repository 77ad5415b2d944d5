// A GuestCodeReader over a few runs of bytes, standing in for guest kernel memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "patcher/plan.h"

namespace hv::patcher::testing {

class FakeCodeReader : public GuestCodeReader {
 public:
  // A run of bytes starting at `va` (replacing any run that starts there).
  void Put(std::uint64_t va, std::vector<std::uint8_t> bytes) { runs_[va] = std::move(bytes); }
  // Overwrites the start of the run that starts at `va`.
  void Write(std::uint64_t va, std::span<const std::uint8_t> bytes) {
    auto& run = runs_.at(va);
    std::copy(bytes.begin(), bytes.end(), run.begin());
  }
  Result<std::vector<std::uint8_t>> Read(std::uint64_t va, std::size_t size) const override {
    for (const auto& [start, b] : runs_) {
      if (va >= start && va + size <= start + b.size()) {
        return std::vector<std::uint8_t>(b.begin() + (va - start), b.begin() + (va - start + size));
      }
    }
    return Unavailable("address " + std::to_string(va) + " is not mapped");
  }

 private:
  std::map<std::uint64_t, std::vector<std::uint8_t>> runs_;
};

}  // namespace hv::patcher::testing
