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

// The smallest span that holds every range: one compare rejects almost every stack word
// (data, stack addresses, user values), and only a word inside it is matched range by range.
struct Envelope {
  std::uint64_t lo = 0, width = 0;  // [lo, lo + width); width 0: no range at all
  explicit Envelope(std::span<const CodeRange> ranges) {
    std::uint64_t hi = 0;
    lo = ~std::uint64_t{0};
    for (const auto& r : ranges) {
      if (r.begin >= r.end) continue;
      lo = std::min(lo, r.begin);
      hi = std::max(hi, r.end);
    }
    width = hi > lo ? hi - lo : 0;
  }
  bool Maybe(std::uint64_t v) const { return v - lo < width; }
};

}  // namespace

Result<StackCheckReport> CheckStacks(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode,
                                     std::span<const vmm::VcpuState> vcpus,
                                     std::span<const StackRegion> regions,
                                     std::span<const CodeRange> ranges) {
  StackCheckReport report;
  for (const auto& v : vcpus) {
    if (const CodeRange* r = Inside(ranges, v.rip)) {
      report.hits.push_back({-1, -1, "", r->function, v.rip, "vCPU " + std::to_string(v.index) + " RIP"});
    }
  }
  // One translation cache for all stacks: vmalloc'ed stacks share page tables, so after the
  // first stack of a 2 MiB region each page costs one PTE read (KernelMemory).
  const KernelMemory kmem(mem, mode);
  const Envelope envelope(ranges);
  std::vector<std::uint8_t> buf;
  std::vector<int> threads;  // tids, counted once at the end
  threads.reserve(regions.size());
  // Where guest RAM is mapped here, the stacks ahead are requested while this one is scanned,
  // so the cache (and TLB) misses of thousands of small scattered stacks overlap instead of
  // coming one after another. Two stages: the line with the PTE of the stack 2 * kAhead regions
  // on (vmalloc'ed stacks: KernelMemory reads one PTE per page), then the first kPrefetchBytes
  // of the stack kAhead regions on (a sleeping task's stack, from its saved SP up, is ~1 KiB).
  // A hint: nothing read through it is trusted.
  constexpr std::size_t kAhead = 8;
  constexpr std::uint64_t kPrefetchBytes = 2048;
  const bool hint = kmem.direct() && mem.ReadsFromMapping();
  auto prefetch_stack = [&](const StackRegion& next) {
    std::uint64_t at = next.begin & ~std::uint64_t{63};
    const std::uint64_t end = std::min(next.end, at + kPrefetchBytes);
    while (at < end) {
      const std::uint64_t page_end = std::min(end, (at | 4095) + 1);
      if (const std::uint8_t* p = kmem.Direct(at, static_cast<std::size_t>(page_end - at))) {
        for (std::uint64_t off = 0; off < page_end - at; off += 64) __builtin_prefetch(p + off);
      }
      at = page_end;
    }
  };
  for (std::size_t i = 0; i < regions.size(); ++i) {
    if (hint) {
      if (i + 2 * kAhead < regions.size()) kmem.PrefetchTranslation(regions[i + 2 * kAhead].begin);
      if (i + kAhead < regions.size()) prefetch_stack(regions[i + kAhead]);
    }
    const StackRegion& region = regions[i];
    if (region.begin == 0) continue;
    if (region.begin > region.end || region.end - region.begin > kMaxStackRegion) {
      return InvalidArgument("stack of pid " + std::to_string(region.tid) + " ('" + region.comm +
                             "') has a bad range " + Hex(region.begin) + ".." + Hex(region.end));
    }
    const std::uint64_t begin = region.begin & ~7ull;
    // Page by page: where guest RAM is mapped here, the words are scanned where they are
    // (KernelMemory::Direct); elsewhere a page is copied first. Every page of the region must
    // be readable, or the stack cannot be proven safe.
    for (std::uint64_t at = begin; at < region.end;) {
      const std::uint64_t n = std::min<std::uint64_t>(region.end - at, 4096 - (at & 4095));
      const std::uint8_t* words = kmem.Direct(at, static_cast<std::size_t>(n));
      if (words == nullptr) {
        buf.resize(static_cast<std::size_t>(n));
        Status s = kmem.Read(at, buf);
        if (!s.ok()) {
          return FailedPrecondition("cannot read the " + region.kind + " stack of pid " +
                                    std::to_string(region.tid) + " ('" + region.comm + "'): " + s.message());
        }
        words = buf.data();
      }
      for (std::uint64_t off = 0; off + 8 <= n; off += 8) {
        std::uint64_t word;
        std::memcpy(&word, words + off, 8);
        if (!envelope.Maybe(word)) continue;
        if (const CodeRange* r = Inside(ranges, word)) {
          report.hits.push_back({region.pid, region.tid, region.comm, r->function, word, region.kind + " stack"});
        }
      }
      report.bytes_scanned += n;
      at += n;
    }
    threads.push_back(region.tid);
  }
  std::sort(threads.begin(), threads.end());
  report.threads_scanned = static_cast<std::size_t>(std::unique(threads.begin(), threads.end()) - threads.begin());
  return report;
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
