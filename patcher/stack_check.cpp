#include "patcher/stack_check.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "base/hex.h"

namespace hv::patcher {
namespace {

const CodeRange* Inside(std::span<const CodeRange> ranges, std::uint64_t v) {
  for (const auto& r : ranges)
    if (v >= r.begin && v < r.end) return &r;
  return nullptr;
}

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
  std::vector<std::uint8_t> buf;
  std::vector<int> threads;  // tids, counted once at the end
  // No prefetch hints here: measured in one pause on a mapping (bench/pause_scaling's A/B),
  // translating each stack a second time for its hint cost more than the overlap saved.
  for (const auto& region : regions) {
    if (region.begin == 0) continue;
    if (region.begin > region.end || region.end - region.begin > kMaxStackRegion) {
      return InvalidArgument("stack of pid " + std::to_string(region.tid) + " ('" + region.comm +
                             "') has a bad range " + Hex(region.begin) + ".." + Hex(region.end));
    }
    const std::uint64_t begin = region.begin & ~7ull;
    buf.resize(region.end - begin);
    Status s = vmm::ReadVirt(mem, mode, begin, buf);
    if (!s.ok()) {
      return FailedPrecondition("cannot read the " + region.kind + " stack of pid " +
                                std::to_string(region.tid) + " ('" + region.comm + "'): " +
                                s.message());
    }
    threads.push_back(region.tid);
    report.bytes_scanned += buf.size();
    for (std::size_t off = 0; off + 8 <= buf.size(); off += 8) {
      std::uint64_t word;
      std::memcpy(&word, buf.data() + off, 8);
      if (const CodeRange* r = Inside(ranges, word)) {
        report.hits.push_back({region.pid, region.tid, region.comm, r->function, word, region.kind + " stack"});
      }
    }
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
