// Where QEMU keeps guest memory: parsers for HMP `info mtree -f` and /proc/<pid>/maps, and
// the join of the two into guest-physical ranges with host addresses. Pure (text in, tables
// out), so the layouts QEMU really produces are unit-tested from recordings.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::vmm {

// One line of a rendered flat view: [start, start+size) maps `region` at `offset` into it.
struct FlatRange {
  std::uint64_t start = 0;
  std::uint64_t size = 0;
  std::string kind;          // "ram", "rom", "i/o", "romd", ...
  std::string region;        // memory region name ("pc.ram", "arena")
  std::uint64_t offset = 0;  // "@offset" into the region, 0 when absent
};

// Parses `info mtree -f` and returns the flat view that serves address space "memory" (the
// one the vCPUs see). Errors: kNotFound when no flat view names AS "memory";
// kInvalidArgument for a malformed range line in it.
Result<std::vector<FlatRange>> ParseSystemFlatView(std::string_view mtree);

// One line of /proc/<pid>/maps.
struct HostMapping {
  std::uint64_t start = 0, end = 0;
  std::string perms;         // "rw-p"
  std::uint64_t file_offset = 0;
  std::uint64_t inode = 0;   // of the file behind it (0 for anonymous memory)
  std::string path;          // empty for anonymous memory
  std::uint64_t size() const { return end - start; }
};

// Errors: kInvalidArgument naming the first malformed line.
Result<std::vector<HostMapping>> ParseProcMaps(std::string_view maps);

// A guest-physical range and the host virtual address of its first byte in QEMU.
struct HostRange {
  std::uint64_t gpa = 0;
  std::uint64_t size = 0;
  std::uint64_t hva = 0;
  std::string region;
  // The same bytes mapped into this process (vmm/shared_ram_map.h), or null: then only
  // process_vm_readv reaches them.
  const std::uint8_t* local = nullptr;
  // The same mapping when it is writable (QEMU's file opened read-write), for hvpatch's own
  // writes: a store instead of a process_vm_writev call each (the commit makes dozens in its
  // pause). Null: writes go through process_vm_writev.
  std::uint8_t* local_writable = nullptr;
  std::uint64_t end() const { return gpa + size; }
};

// The flat ranges of `region` (RAM or ROM views of it, merged when contiguous) placed at
// `block_hva` + offset. Errors: kNotFound when `region` does not appear in `flat`.
Result<std::vector<HostRange>> RangesOfRegion(const std::vector<FlatRange>& flat,
                                              std::string_view region, std::uint64_t block_hva,
                                              std::uint64_t block_size);

// Host mappings that could hold a memory backend of `size` bytes: writable, exactly that
// size, and either anonymous, or the file `path` (when non-empty), or QEMU's memfd for `id`.
std::vector<HostMapping> CandidateMappings(const std::vector<HostMapping>& maps, std::uint64_t size,
                                           std::string_view path, std::string_view id);

// Bytes read at `gpa` through a trusted but slow path (the gdbstub).
struct MemorySample {
  std::uint64_t gpa = 0;
  std::vector<std::uint8_t> bytes;
};

// Reads `out.size()` bytes of QEMU's memory at host address `hva`.
using HostReader = std::function<Status(std::uint64_t hva, std::span<std::uint8_t> out)>;

// Picks, among `candidates` (host addresses where memory backend `region` of `block_size`
// bytes might be mapped), the one whose host reads match every sample. Errors:
//   kFailedPrecondition  every sample is zero (nothing to tell mappings apart), or not exactly
//                        one candidate matches (the message names the first difference)
Result<std::uint64_t> ChooseHostMapping(const std::vector<FlatRange>& flat, std::string_view region,
                                        std::uint64_t block_size, const std::vector<std::uint64_t>& candidates,
                                        const std::vector<MemorySample>& samples, const HostReader& read);

}  // namespace hv::vmm
