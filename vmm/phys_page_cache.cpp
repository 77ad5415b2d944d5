#include "vmm/phys_page_cache.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace hv::vmm {

const std::uint8_t* PhysPageCache::PageAt(std::uint64_t page_gpa, bool whole_block, const Source& source) {
  if (auto it = pages_.find(page_gpa); it != pages_.end()) return it->second.get();
  // Bounded: a pause that reads more than max_pages_ distinct pages starts over.
  if (pages_.size() + block_pages_ > max_pages_) pages_.clear();
  const std::uint64_t block_size = block_pages_ * kPageSize;
  const std::uint64_t block_gpa = page_gpa / block_size * block_size;
  if (whole_block && block_pages_ > 1) {
    std::vector<std::uint8_t> block(block_size);
    ++fetches_;
    if (source(block_gpa, block).ok()) {
      for (std::size_t i = 0; i < block_pages_; ++i) {
        Page page(new std::uint8_t[kPageSize]);
        std::memcpy(page.get(), block.data() + i * kPageSize, kPageSize);
        pages_.insert_or_assign(block_gpa + i * kPageSize, std::move(page));
      }
      return pages_.find(page_gpa)->second.get();
    }
  }
  Page page(new std::uint8_t[kPageSize]);
  ++fetches_;
  if (!source(page_gpa, std::span<std::uint8_t>(page.get(), kPageSize)).ok()) return nullptr;
  return pages_.emplace(page_gpa, std::move(page)).first->second.get();
}

Status PhysPageCache::Read(std::uint64_t gpa, std::span<std::uint8_t> out, const Source& source) {
  if (out.size() > kMaxCachedRead || gpa + out.size() < gpa) return source(gpa, out);
  std::size_t done = 0;
  while (done < out.size()) {
    const std::uint64_t at = gpa + done;
    const std::uint64_t page_gpa = at & ~(kPageSize - 1);
    const std::uint8_t* page = PageAt(page_gpa, out.size() < kSmallRead, source);
    if (page == nullptr) return source(gpa, out);
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kPageSize - (at - page_gpa), out.size() - done));
    std::memcpy(out.data() + done, page + (at - page_gpa), n);
    done += n;
  }
  return Status::Ok();
}

void PhysPageCache::Invalidate(std::uint64_t gpa, std::uint64_t size) {
  if (size == 0 || pages_.empty()) return;
  const std::uint64_t end = gpa + size < gpa ? ~std::uint64_t{0} : gpa + size;  // exclusive, saturated
  const std::uint64_t first = gpa & ~(kPageSize - 1);
  const std::uint64_t last = (end - 1) & ~(kPageSize - 1);
  if ((last - first) / kPageSize >= pages_.size()) {
    // Wider than the cache: cheaper to look at each cached page.
    std::erase_if(pages_, [&](const auto& p) { return p.first + kPageSize > gpa && p.first < end; });
    return;
  }
  for (std::uint64_t p = first;; p += kPageSize) {
    pages_.erase(p);
    if (p == last) break;
  }
}

void PhysPageCache::Clear() { pages_.clear(); }

}  // namespace hv::vmm
