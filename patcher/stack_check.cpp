#include "patcher/stack_check.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "base/hex.h"
#include "patcher/kernel_memory.h"

namespace hv::patcher {
namespace {

const CodeRange* Inside(std::span<const CodeRange> ranges, std::uint64_t v) {
  for (const auto& r : ranges)
    if (v >= r.begin && v < r.end) return &r;
  return nullptr;
}

}  // namespace

StackScanner::StackScanner(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode,
                           std::span<const CodeRange> ranges)
    : kmem_(mem, mode), ranges_(ranges), hint_(kmem_.direct() && mem.ReadsFromMapping()) {
  std::uint64_t hi = 0;
  lo_ = ~std::uint64_t{0};
  for (const auto& r : ranges) {
    if (r.begin >= r.end) continue;
    lo_ = std::min(lo_, r.begin);
    hi = std::max(hi, r.end);
  }
  width_ = hi > lo_ ? hi - lo_ : 0;
}

void StackScanner::PrefetchAhead(std::span<const StackRegion> regions, std::size_t i) const {
  if (!hint_) return;
  if (i + 2 * kAhead < regions.size()) PrefetchTranslation(regions[i + 2 * kAhead]);
  if (i + kAhead < regions.size()) PrefetchStack(regions[i + kAhead]);
}

void StackScanner::PrefetchTranslation(const StackRegion& region) const {
  if (hint_) kmem_.PrefetchTranslation(region.begin);
}

void StackScanner::PrefetchStack(const StackRegion& region) const {
  if (!hint_) return;
  std::uint64_t at = region.begin & ~std::uint64_t{63};
  const std::uint64_t end = std::min(region.end, at + kPrefetchBytes);
  while (at < end) {
    const std::uint64_t page_end = std::min(end, (at | 4095) + 1);
    if (const std::uint8_t* p = kmem_.Direct(at, static_cast<std::size_t>(page_end - at))) {
      for (std::uint64_t off = 0; off < page_end - at; off += 64) __builtin_prefetch(p + off);
    }
    at = page_end;
  }
}

Result<std::uint64_t> StackScanner::Scan(const StackRegion& region, std::vector<StackHit>& hits) {
  if (region.begin == 0) return 0;
  if (region.begin > region.end || region.end - region.begin > kMaxStackRegion) {
    return InvalidArgument("stack of pid " + std::to_string(region.tid) + " ('" + region.comm +
                           "') has a bad range " + Hex(region.begin) + ".." + Hex(region.end));
  }
  const std::uint64_t begin = region.begin & ~7ull;
  std::uint64_t scanned = 0;
  // Page by page: where guest RAM is mapped here, the words are scanned where they are
  // (KernelMemory::Direct); elsewhere a page is copied first. Every page of the region must
  // be readable, or the stack cannot be proven safe.
  for (std::uint64_t at = begin; at < region.end;) {
    const std::uint64_t n = std::min<std::uint64_t>(region.end - at, 4096 - (at & 4095));
    const std::uint8_t* words = kmem_.Direct(at, static_cast<std::size_t>(n));
    if (words == nullptr) {
      buf_.resize(static_cast<std::size_t>(n));
      Status s = kmem_.Read(at, buf_);
      if (!s.ok()) {
        return FailedPrecondition("cannot read the " + region.kind + " stack of pid " +
                                  std::to_string(region.tid) + " ('" + region.comm + "'): " + s.message());
      }
      words = buf_.data();
    }
    for (std::uint64_t off = 0; off + 8 <= n; off += 8) {
      std::uint64_t word;
      std::memcpy(&word, words + off, 8);
      if (word - lo_ >= width_) continue;  // outside every range: almost every word
      if (const CodeRange* r = Inside(ranges_, word)) {
        hits.push_back({region.pid, region.tid, region.comm, r->function, word, region.kind + " stack"});
      }
    }
    scanned += n;
    at += n;
  }
  return scanned;
}

Result<StackCheckReport> CheckStacks(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode,
                                     std::span<const vmm::VcpuState> vcpus,
                                     std::span<const StackRegion> regions,
                                     std::span<const CodeRange> ranges) {
  StackCheckReport report = CheckVcpus(vcpus, ranges);
  // One scanner (one translation cache) for all stacks: vmalloc'ed stacks share page tables, so
  // after the first stack of a 2 MiB region each page costs one PTE read (KernelMemory).
  StackScanner scanner(mem, mode, ranges);
  std::vector<int> threads;  // tids, counted once at the end
  threads.reserve(regions.size());
  for (std::size_t i = 0; i < regions.size(); ++i) {
    scanner.PrefetchAhead(regions, i);
    const StackRegion& region = regions[i];
    if (region.begin == 0) continue;
    HV_ASSIGN_OR_RETURN(const std::uint64_t n, scanner.Scan(region, report.hits));
    report.bytes_scanned += n;
    threads.push_back(region.tid);
  }
  report.threads_scanned = CountThreads(threads);
  return report;
}

StackCheckReport CheckVcpus(std::span<const vmm::VcpuState> vcpus, std::span<const CodeRange> ranges) {
  StackCheckReport report;
  for (const auto& v : vcpus) {
    if (const CodeRange* r = Inside(ranges, v.rip)) {
      report.hits.push_back({-1, -1, "", r->function, v.rip, "vCPU " + std::to_string(v.index) + " RIP"});
    }
  }
  return report;
}

std::size_t CountThreads(std::vector<int>& tids) {
  std::sort(tids.begin(), tids.end());
  return static_cast<std::size_t>(std::unique(tids.begin(), tids.end()) - tids.begin());
}

std::string DescribeHits(std::span<const StackHit> hits) {
  std::set<std::pair<int, std::string>> seen;
  std::string out;
  for (const auto& h : hits) {
    if (!seen.insert({h.tid, h.function}).second) continue;
    if (!out.empty()) out += ", ";
    if (h.tid < 0) {
      out += h.where + " in " + h.function;
    } else {
      out += "pid " + std::to_string(h.tid) + " (" + h.comm + ") in " + h.function;
    }
  }
  return out;
}

}  // namespace hv::patcher
