#include "vmm/qemu_memory_map.h"

#include <algorithm>
#include <charconv>

#include "base/hex.h"

namespace hv::vmm {
namespace {

bool ParseHex(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  return ec == std::errc() && p == s.data() + s.size();
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// "0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000 KVM"
Result<FlatRange> ParseRangeLine(std::string_view line) {
  const auto bad = [&] { return InvalidArgument("malformed flat view line '" + std::string(line) + "'"); };
  const std::size_t dash = line.find('-');
  const std::size_t space = line.find(' ');
  if (dash == std::string_view::npos || space == std::string_view::npos || dash > space) return bad();
  std::uint64_t start = 0, last = 0;
  if (!ParseHex(line.substr(0, dash), start) || !ParseHex(line.substr(dash + 1, space - dash - 1), last) ||
      last < start) {
    return bad();
  }
  const std::size_t comma = line.find(", ", space);
  const std::size_t close = line.find("):", space);
  if (comma == std::string_view::npos || close == std::string_view::npos || comma > close) return bad();
  FlatRange r;
  r.start = start;
  r.size = last - start + 1;
  r.kind = std::string(line.substr(comma + 2, close - comma - 2));
  std::string_view rest = Trim(line.substr(close + 2));
  const std::size_t at = rest.find(" @");
  if (at != std::string_view::npos) {
    std::string_view off = rest.substr(at + 2);
    off = off.substr(0, off.find(' '));
    if (!ParseHex(off, r.offset)) return bad();
    rest = rest.substr(0, at);
  } else {
    const std::size_t sp = rest.rfind(' ');
    if (sp != std::string_view::npos && rest.substr(sp + 1) == "KVM") rest = rest.substr(0, sp);
  }
  r.region = std::string(Trim(rest));
  if (r.region.empty()) return bad();
  return r;
}

}  // namespace

Result<std::vector<FlatRange>> ParseSystemFlatView(std::string_view mtree) {
  std::vector<FlatRange> out;
  bool in_view = false, is_system = false, seen = false;
  std::size_t pos = 0;
  while (pos < mtree.size()) {
    std::size_t nl = mtree.find('\n', pos);
    if (nl == std::string_view::npos) nl = mtree.size();
    const std::string_view line = Trim(mtree.substr(pos, nl - pos));
    pos = nl + 1;
    if (line.rfind("FlatView #", 0) == 0) {
      if (seen) break;  // the system view is complete
      in_view = true;
      is_system = false;
      continue;
    }
    if (!in_view || line.empty()) continue;
    if (line.rfind("AS \"", 0) == 0) {
      if (line.rfind("AS \"memory\",", 0) == 0) is_system = seen = true;
      continue;
    }
    if (!is_system || line.rfind("Root memory region", 0) == 0 || line.rfind("No rendered", 0) == 0) {
      continue;
    }
    HV_ASSIGN_OR_RETURN(FlatRange r, ParseRangeLine(line));
    out.push_back(std::move(r));
  }
  if (!seen) return NotFound("no flat view serves address space 'memory'");
  return out;
}

Result<std::vector<HostMapping>> ParseProcMaps(std::string_view maps) {
  std::vector<HostMapping> out;
  std::size_t pos = 0;
  while (pos < maps.size()) {
    std::size_t nl = maps.find('\n', pos);
    if (nl == std::string_view::npos) nl = maps.size();
    const std::string_view line = maps.substr(pos, nl - pos);
    pos = nl + 1;
    if (Trim(line).empty()) continue;
    const auto bad = [&] { return InvalidArgument("malformed maps line '" + std::string(line) + "'"); };
    // start-end perms offset dev inode [path]
    std::string_view f[5];
    std::size_t i = 0;
    for (int k = 0; k < 5; ++k) {
      while (i < line.size() && line[i] == ' ') ++i;
      const std::size_t e = line.find(' ', i);
      f[k] = line.substr(i, e == std::string_view::npos ? std::string_view::npos : e - i);
      i = e == std::string_view::npos ? line.size() : e;
    }
    HostMapping m;
    const std::size_t dash = f[0].find('-');
    if (dash == std::string_view::npos || !ParseHex(f[0].substr(0, dash), m.start) ||
        !ParseHex(f[0].substr(dash + 1), m.end) || m.end < m.start || f[1].size() != 4 ||
        !ParseHex(f[2], m.file_offset)) {
      return bad();
    }
    m.perms = std::string(f[1]);
    for (char c : f[4]) {
      if (c < '0' || c > '9' || m.inode > (~std::uint64_t{0} - 9) / 10) return bad();
      m.inode = m.inode * 10 + static_cast<std::uint64_t>(c - '0');
    }
    m.path = std::string(Trim(line.substr(i)));
    out.push_back(std::move(m));
  }
  return out;
}

Result<std::vector<HostRange>> RangesOfRegion(const std::vector<FlatRange>& flat, std::string_view region,
                                              std::uint64_t block_hva, std::uint64_t block_size) {
  std::vector<HostRange> out;
  for (const FlatRange& f : flat) {
    if (f.region != region || (f.kind != "ram" && f.kind != "rom")) continue;
    if (f.offset > block_size || f.size > block_size - f.offset) {
      return InvalidArgument("flat range " + Hex(f.start) + " of '" + f.region +
                             "' lies beyond its " + Hex(block_size) + "-byte block");
    }
    const std::uint64_t hva = block_hva + f.offset;
    if (!out.empty() && out.back().end() == f.start && out.back().hva + out.back().size == hva) {
      out.back().size += f.size;
      continue;
    }
    out.push_back(HostRange{f.start, f.size, hva, f.region});
  }
  if (out.empty()) return NotFound("region '" + std::string(region) + "' is not mapped in guest memory");
  return out;
}

std::vector<HostMapping> CandidateMappings(const std::vector<HostMapping>& maps, std::uint64_t size,
                                           std::string_view path, std::string_view id) {
  std::vector<HostMapping> named, anon;
  const std::string memfd = "/memfd:" + std::string(id);
  // QEMU 7.2's memory-backend-memfd names every memfd after its type, not its id.
  const std::string memfd_type = "/memfd:memory-backend-memfd";
  const auto is_memfd = [](const std::string& p, const std::string& name) {
    return p.rfind(name, 0) == 0 && (p.size() == name.size() || p[name.size()] == ' ');
  };
  for (const HostMapping& m : maps) {
    if (m.size() != size || m.perms.size() < 2 || m.perms[0] != 'r' || m.perms[1] != 'w') continue;
    if (!path.empty() && m.path == path) named.push_back(m);
    else if (is_memfd(m.path, memfd) || (path.empty() && is_memfd(m.path, memfd_type)))
      named.push_back(m);
    else if (m.path.empty() && path.empty()) anon.push_back(m);
  }
  return named.empty() ? anon : named;
}

Result<std::uint64_t> ChooseHostMapping(const std::vector<FlatRange>& flat, std::string_view region,
                                        std::uint64_t block_size, const std::vector<std::uint64_t>& candidates,
                                        const std::vector<MemorySample>& samples, const HostReader& read) {
  const std::string name(region);
  const bool any_nonzero = std::any_of(samples.begin(), samples.end(), [](const MemorySample& m) {
    return std::any_of(m.bytes.begin(), m.bytes.end(), [](std::uint8_t c) { return c != 0; });
  });
  if (!any_nonzero) {
    return FailedPrecondition("every gdbstub sample of memory backend '" + name +
                              "' is zero: cannot check its host mapping");
  }
  std::vector<std::uint64_t> good;
  std::string first_difference;
  std::vector<std::uint8_t> host;
  for (std::uint64_t base : candidates) {
    HV_ASSIGN_OR_RETURN(std::vector<HostRange> ranges, RangesOfRegion(flat, region, base, block_size));
    bool match = true;
    for (const MemorySample& m : samples) {
      const auto r = std::find_if(ranges.begin(), ranges.end(), [&](const HostRange& h) {
        return m.gpa >= h.gpa && m.gpa - h.gpa + m.bytes.size() <= h.size;
      });
      host.resize(m.bytes.size());
      Status s = r == ranges.end() ? InvalidArgument("sample outside the region")
                                   : read(r->hva + (m.gpa - r->gpa), host);
      if (!s.ok() || host != m.bytes) {
        if (first_difference.empty()) {
          first_difference = "host mapping " + Hex(base) + " differs from the gdbstub at gpa " + Hex(m.gpa);
          if (!s.ok()) first_difference += " (" + s.message() + ")";
        }
        match = false;
        break;
      }
    }
    if (match) good.push_back(base);
  }
  if (good.size() == 1) return good[0];
  return Status(Code::kFailedPrecondition,
                std::to_string(good.size()) + " of " + std::to_string(candidates.size()) +
                    " host mappings of memory backend '" + name + "' match gdbstub reads" +
                    (first_difference.empty() ? "" : ": " + first_difference),
                "the fast path is unsafe; check that QEMU's guest RAM is an ordinary mapping of its process");
}

}  // namespace hv::vmm
