// A set of guest addresses for the task walk's duplicate and cycle checks: open addressing in
// one flat array, so an insert inside a commit's pause allocates only when the table doubles
// (std::unordered_set allocates a node per insert). The keys come from hostile memory; the
// set's size is bounded by the walk's own limits (TaskWalker::kMaxTasks), not here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hv::patcher {

class AddressSet {
 public:
  // Makes room for `n` addresses without growing.
  void Reserve(std::size_t n) {
    if (n * 2 > slots_.size()) Rehash(n * 2);
  }

  // True when `a` was not in the set (it is now).
  bool Insert(std::uint64_t a) {
    if (a == kEmpty) {
      const bool added = !has_empty_;
      has_empty_ = true;
      return added;
    }
    if ((size_ + 1) * 2 > slots_.size()) Rehash((size_ + 1) * 2);
    for (std::size_t i = Hash(a) & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i] == a) return false;
      if (slots_[i] == kEmpty) {
        slots_[i] = a;
        ++size_;
        return true;
      }
    }
  }

  bool Contains(std::uint64_t a) const {
    if (a == kEmpty) return has_empty_;
    if (slots_.empty()) return false;
    for (std::size_t i = Hash(a) & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i] == a) return true;
      if (slots_[i] == kEmpty) return false;
    }
  }

  std::size_t size() const { return size_ + (has_empty_ ? 1 : 0); }

 private:
  static constexpr std::uint64_t kEmpty = 0;  // 0 itself is tracked by has_empty_

  // task_structs are slab objects, 1-16 KiB apart: mix the bits so they spread over the table.
  static std::size_t Hash(std::uint64_t a) {
    a ^= a >> 33;
    a *= 0xff51afd7ed558ccdull;
    a ^= a >> 33;
    return static_cast<std::size_t>(a);
  }

  void Rehash(std::size_t at_least) {
    std::size_t n = 16;
    while (n < at_least) n *= 2;
    std::vector<std::uint64_t> old;
    old.swap(slots_);
    slots_.assign(n, kEmpty);
    for (std::uint64_t a : old) {
      if (a == kEmpty) continue;
      for (std::size_t i = Hash(a) & (n - 1);; i = (i + 1) & (n - 1)) {
        if (slots_[i] == kEmpty) {
          slots_[i] = a;
          break;
        }
      }
    }
  }

  std::vector<std::uint64_t> slots_;
  std::size_t size_ = 0;
  bool has_empty_ = false;
};

}  // namespace hv::patcher
