// Ksplice's conservative safety check: with every vCPU paused, no vCPU may be executing, and no
// thread may hold a return address (or any word that looks like one) inside code that is about
// to be replaced or removed. It scans word by word, so a stale value in a stack slot also counts:
// a false "busy" costs a retry, a missed return address costs a crashed guest.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_memory.h"
#include "vmm/guest_memory.h"
#include "vmm/page_walk.h"
#include "vmm/vm.h"

namespace hv::patcher {

// A stack (or part of one) to scan, from `begin` (lowest address to read: the saved SP for a
// sleeping thread, the live RSP for a running one) up to `end` (the top).
struct StackRegion {
  int pid = 0;  // thread-group id
  int tid = 0;
  std::string comm;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  std::string kind;  // "task", "irq", "exception", ... for messages
};

// Code that must not be in use: an old function being replaced, or (on revert, or when a patch
// is stacked on another) the arena code being removed or bypassed.
struct CodeRange {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;  // exclusive
  std::string function;
};

struct StackHit {
  int pid = -1, tid = -1;  // -1 for a vCPU's RIP
  std::string comm;
  std::string function;
  std::uint64_t address = 0;  // the word found
  std::string where;          // "vCPU 1 RIP", "task stack"
};

struct StackCheckReport {
  std::vector<StackHit> hits;
  std::size_t threads_scanned = 0;
  std::uint64_t bytes_scanned = 0;
  bool safe() const { return hits.empty(); }
};

// Largest region scanned; larger ones are refused as corrupt (task and IRQ stacks are 16 KiB).
inline constexpr std::uint64_t kMaxStackRegion = 256 * 1024;

// Scans every vCPU's RIP and every region. `mode` translates kernel addresses (any vCPU's CR3
// maps the kernel half). Regions with begin == 0 (a dead task without a stack) are skipped.
// Errors: kInvalidArgument for a region over kMaxStackRegion or with begin > end;
// kFailedPrecondition when a region cannot be read (an unreadable stack cannot be proven safe).
Result<StackCheckReport> CheckStacks(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode,
                                     std::span<const vmm::VcpuState> vcpus,
                                     std::span<const StackRegion> regions,
                                     std::span<const CodeRange> ranges);

// The vCPUs' part of CheckStacks: a hit for each RIP inside `ranges`.
StackCheckReport CheckVcpus(std::span<const vmm::VcpuState> vcpus, std::span<const CodeRange> ranges);

// Sorts `tids` and counts the distinct ones.
std::size_t CountThreads(std::vector<int>& tids);

// The scan of one region at a time, as CheckStacks does it: for callers that share the regions
// between threads (one scanner per thread; it keeps a translation cache, KernelMemory).
class StackScanner {
 public:
  // Where guest RAM is mapped here, the stacks ahead are requested while one is scanned, so the
  // cache (and TLB) misses of thousands of small scattered stacks overlap instead of coming one
  // after another. Two stages: the line with the PTE of the stack 2 * kAhead regions on
  // (vmalloc'ed stacks: KernelMemory reads one PTE per page), then the first kPrefetchBytes of
  // the stack kAhead regions on (a sleeping task's stack, from its saved SP up, is ~1 KiB).
  static constexpr std::size_t kAhead = 8;
  static constexpr std::uint64_t kPrefetchBytes = 2048;

  StackScanner(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode, std::span<const CodeRange> ranges);

  // Appends the hits in `region` to `hits`; returns the bytes scanned (0 for begin == 0).
  // Errors as CheckStacks.
  Result<std::uint64_t> Scan(const StackRegion& region, std::vector<StackHit>& hits);
  // Hints (nothing read through them is trusted), only where guest RAM is mapped here: both
  // stages for a scan about to reach regions[i], which stops at the end of `regions`.
  void PrefetchAhead(std::span<const StackRegion> regions, std::size_t i) const;

 private:
  void PrefetchTranslation(const StackRegion& region) const;
  void PrefetchStack(const StackRegion& region) const;

  KernelMemory kmem_;
  std::span<const CodeRange> ranges_;
  bool hint_;
  // The smallest span that holds every range: one compare rejects almost every stack word
  // (data, stack addresses, user values); only a word inside it is matched range by range.
  std::uint64_t lo_ = 0, width_ = 0;
  std::vector<std::uint8_t> buf_;
};

// "pid 42 (sleep) in do_nanosleep" lines, one per distinct (tid, function).
std::string DescribeHits(std::span<const StackHit> hits);

}  // namespace hv::patcher
