// Guest-physical pages read during one pause of the VM, kept so that the many small reads of a
// commit (page-table entries of every page walk, task_struct fields, list links) cost a memcpy
// instead of one process_vm_readv each.
//
// Only valid while the guest cannot change its memory: a backend fills it between its own
// Pause() and Resume(), drops the pages it writes itself, and clears it when the guest runs
// again. Reads larger than kMaxCachedRead go straight to the source (one host read is already
// the cheapest way to get them).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>

#include "base/status.h"

namespace hv::vmm {

class PhysPageCache {
 public:
  static constexpr std::uint64_t kPageSize = 4096;
  static constexpr std::size_t kMaxCachedRead = 16 * 1024;
  static constexpr std::size_t kDefaultMaxPages = 8192;  // 32 MiB

  // Reads `out.size()` bytes at guest-physical `gpa` from the source.
  using Source = std::function<Status(std::uint64_t gpa, std::span<std::uint8_t> out)>;

  // A miss of a small read (under kSmallRead bytes: a field, a list link, a page-table entry)
  // fetches the aligned block of `block_pages` pages around it in one read, as task_structs and
  // the objects next to them share blocks; just the page when the block cannot be read. Larger
  // reads (a stack from its saved SP up) fetch only their own pages.
  static constexpr std::size_t kSmallRead = 256;
  static constexpr std::size_t kDefaultBlockPages = 4;

  explicit PhysPageCache(std::size_t max_pages = kDefaultMaxPages, std::size_t block_pages = kDefaultBlockPages)
      : max_pages_(std::max<std::size_t>(max_pages, 1)), block_pages_(std::clamp<std::size_t>(block_pages, 1, 64)) {}

  // Reads through the cache: each 4 KiB page touched is fetched whole from `source` once. When a
  // whole page cannot be fetched (the request sits at the edge of a RAM range), or the request
  // is over kMaxCachedRead, it is read from `source` as asked, so errors are the source's own.
  Status Read(std::uint64_t gpa, std::span<std::uint8_t> out, const Source& source);

  // Forgets the pages overlapping [gpa, gpa + size): call after writing them.
  void Invalidate(std::uint64_t gpa, std::uint64_t size);
  // Forgets everything: call when the guest may run again.
  void Clear();

  std::size_t pages() const { return pages_.size(); }
  std::uint64_t fetches() const { return fetches_; }

 private:
  using Page = std::unique_ptr<std::uint8_t[]>;
  // The cached page at `page_gpa` (page aligned), fetched if missing; nullptr if it cannot be.
  const std::uint8_t* PageAt(std::uint64_t page_gpa, bool whole_block, const Source& source);

  std::size_t max_pages_;
  std::size_t block_pages_;
  std::unordered_map<std::uint64_t, Page> pages_;
  std::uint64_t fetches_ = 0;
};

}  // namespace hv::vmm
