#include "patcher/plain_entry.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "base/hex.h"
#include "patcher/plan.h"

namespace hv::patcher {

namespace {

// A table larger than this is not a kernel's (vmlinux's __jump_table is ~0.5 MB).
constexpr std::uint64_t kMaxTableBytes = 32ull << 20;

struct TableSpec {
  const char* start;
  const char* stop;
  std::uint32_t entry_size;  // bytes per entry; its first field is an s32 relative to itself
  const char* what;
};

// The guest's kallsyms bounds of one table: nullopt when the kernel has neither bound.
Result<std::optional<std::pair<std::uint64_t, std::uint64_t>>> Bounds(const SymbolResolver& resolver,
                                                                      const TableSpec& t) {
  auto start = resolver.Resolve(t.start, "vmlinux", 0);
  auto stop = resolver.Resolve(t.stop, "vmlinux", 0);
  const bool no_start = !start.ok() && start.status().code() == Code::kNotFound;
  const bool no_stop = !stop.ok() && stop.status().code() == Code::kNotFound;
  if (no_start && no_stop) return std::optional<std::pair<std::uint64_t, std::uint64_t>>{};
  if (!start.ok()) return start.status().WithContext(std::string("the bounds of ") + t.what);
  if (!stop.ok()) return stop.status().WithContext(std::string("the bounds of ") + t.what);
  const std::uint64_t size = stop->address - start->address;
  if (stop->address < start->address || size > kMaxTableBytes || size % t.entry_size != 0) {
    return FailedPrecondition(std::string(t.what) + " from " + Hex(start->address) + " to " + Hex(stop->address) +
                              " is not a table of " + std::to_string(t.entry_size) + "-byte entries");
  }
  return std::optional<std::pair<std::uint64_t, std::uint64_t>>{{start->address, stop->address}};
}

Result<std::vector<std::uint64_t>> ReadSites(const SymbolResolver& resolver, const GuestCodeReader& reader,
                                             const TableSpec& t) {
  HV_ASSIGN_OR_RETURN(auto bounds, Bounds(resolver, t));
  std::vector<std::uint64_t> sites;
  if (!bounds || bounds->first == bounds->second) return sites;
  auto bytes = reader.Read(bounds->first, bounds->second - bounds->first);
  if (!bytes.ok()) return bytes.status().WithContext(std::string("reading ") + t.what);
  sites.reserve(bytes->size() / t.entry_size);
  for (std::size_t off = 0; off + t.entry_size <= bytes->size(); off += t.entry_size) {
    std::int32_t rel;
    std::memcpy(&rel, bytes->data() + off, 4);
    sites.push_back(bounds->first + off + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel)));
  }
  std::sort(sites.begin(), sites.end());
  return sites;
}

// The first site in `sorted` that overlaps [begin, end) when each site is `len` bytes long.
std::optional<std::uint64_t> Overlap(const std::vector<std::uint64_t>& sorted, std::uint64_t begin,
                                     std::uint64_t end, std::uint64_t len) {
  auto it = std::lower_bound(sorted.begin(), sorted.end(), begin >= len ? begin - len + 1 : 0);
  if (it != sorted.end() && *it < end) return *it;
  return std::nullopt;
}

}  // namespace

Result<TextSites> ReadVmlinuxTextSites(const SymbolResolver& resolver, const GuestCodeReader& reader) {
  // x86-64 layouts (arch/x86/include/asm/jump_label.h, static_call_types.h, alternative.h):
  // struct jump_entry { s32 code; s32 target; long key; }, struct static_call_site { s32 addr;
  // s32 key; }, and .smp_locks holds s32 offsets to lock prefixes.
  static const TableSpec kJump{"__start___jump_table", "__stop___jump_table", 16, "vmlinux's __jump_table"};
  static const TableSpec kCalls{"__start_static_call_sites", "__stop_static_call_sites", 8,
                                "vmlinux's .static_call_sites"};
  static const TableSpec kLocks{"__smp_locks", "__smp_locks_end", 4, "vmlinux's .smp_locks"};
  TextSites s;
  HV_ASSIGN_OR_RETURN(s.jump_labels, ReadSites(resolver, reader, kJump));
  HV_ASSIGN_OR_RETURN(s.static_calls, ReadSites(resolver, reader, kCalls));
  HV_ASSIGN_OR_RETURN(s.lock_prefixes, ReadSites(resolver, reader, kLocks));
  return s;
}

Status CheckNoTextSiteUnderJump(const EntrySite& entry, std::string_view function, const TextSites& sites) {
  const std::uint64_t begin = entry.site_va;
  const std::uint64_t end = entry.site_va + 5;
  const std::string who = "function '" + std::string(function) + "' at " + Hex(entry.function_va) +
                          " has no ftrace site, and its first instructions (" + entry.covered + ") hold ";
  const std::string hint = "the kernel rewrites that site at run time and would destroy the jump; patch "
                           "its caller instead";
  if (auto a = Overlap(sites.jump_labels, begin, end, 5)) {
    return FailedPrecondition(who + "a jump-label site at " + Hex(*a)).WithHint(hint);
  }
  if (auto a = Overlap(sites.static_calls, begin, end, 5)) {
    return FailedPrecondition(who + "a static-call site at " + Hex(*a)).WithHint(hint);
  }
  if (auto a = Overlap(sites.lock_prefixes, begin, end, 1)) {
    return FailedPrecondition(who + "a lock prefix the kernel switches for UP/SMP at " + Hex(*a)).WithHint(hint);
  }
  return Status::Ok();
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> ColdParts(const SymbolResolver& resolver,
                                                                std::string_view function) {
  const std::string cold = std::string(function) + ".cold";
  std::vector<std::pair<std::uint64_t, std::uint64_t>> parts;
  auto found = Occurrences(resolver, cold, "vmlinux");
  if (!found.ok()) return parts;  // no .cold part (the common case)
  for (const auto& [pos, r] : *found) parts.push_back({r.address, r.address + std::max<std::uint64_t>(r.size, 1)});
  return parts;
}

}  // namespace hv::patcher
