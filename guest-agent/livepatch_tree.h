// The livepatch sysfs shape (Documentation/ABI/testing/sysfs-kernel-livepatch), both ways:
//   - ReadLivepatchSysfs reads the guest kernel's own /sys/kernel/livepatch;
//   - ParityTree writes hvpatch's patches under /run/hvpatch/livepatch in that same shape, so people
//     and tools in the guest see hvpatch patches as they would see livepatch ones.
//
//   <root>/<patch>/enabled                     "1\n" / "0\n"   (0644)
//   <root>/<patch>/transition                  "0\n"           (0444)
//   <root>/<patch>/force                       write-only      (0200, empty)
//   <root>/<patch>/replace                     since 6.11      (0444)
//   <root>/<patch>/stack_order                 since 6.13      (0444)
//   <root>/<patch>/<object>/patched            since 6.1       (0444)
//   <root>/<patch>/<object>/<function>,<sympos>/
// <object> is "vmlinux" or a module name.
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"
#include "guest-agent/hvpatch_agent.pb.h"

namespace hv::agent {

// Which optional sysfs attributes the guest kernel's version has.
struct SysfsAbi {
  std::string name;       // "6.1", "6.11", "6.13": the first version with this attribute set
  bool patched = true;    // <object>/patched: Linux 6.1 (the ABI file says 6.0, first released in 6.1)
  bool replace = false;   // <patch>/replace: Linux 6.11
  bool stack_order = false;  // <patch>/stack_order: Linux 6.13

  // Decides by the "MAJOR.MINOR" prefix of `release` (uname -r). An unparsable release gets the 6.1
  // set, the kernel this project targets first.
  static SysfsAbi ForRelease(std::string_view release);
};

// Reads `dir` (normally /sys/kernel/livepatch). A missing directory gives available=false.
// Bounded: at most 256 patches, 256 objects per patch, 4096 functions per object; entries past a
// bound are dropped. kIo when the directory exists but cannot be listed.
Result<hvpatch::agent::LivepatchState> ReadLivepatchSysfs(const std::string& dir);

// Checks that `name` can be a file name in the tree: 1..max_len printable ASCII characters, no '/'
// and not "." or "..". kInvalidArgument naming `what` otherwise.
Status CheckTreeName(std::string_view what, std::string_view name, size_t max_len);

class ParityTree {
 public:
  ParityTree(std::string root, SysfsAbi abi) : root_(std::move(root)), abi_(std::move(abi)) {}

  // Makes the tree hold exactly `patches`: each listed patch's directory is rebuilt aside and swapped
  // in; directories of patches not listed are removed (a reverted patch disappears). Validates every
  // name first (kInvalidArgument, nothing changed), kIo when the file system fails us.
  Status Publish(const google::protobuf::RepeatedPtrField<hvpatch::agent::Patch>& patches);

  const std::string& root() const { return root_; }
  const SysfsAbi& abi() const { return abi_; }

 private:
  Status WritePatch(const std::string& dir, const hvpatch::agent::Patch& patch) const;

  std::string root_;
  SysfsAbi abi_;
};

}  // namespace hv::agent
