// Where a VM's vmcoreinfo was last found (patcher::GuestKernelOptions::vmcoreinfo_hint), kept
// in STATE_DIR/<vm stem>.vmcoreinfo as one hex guest-physical address, so the next hvpatch
// process reads one page instead of scanning guest RAM (docs/guest-kernel.md). Best effort: a
// missing, unreadable or garbled file is no hint (the scan runs), and the patcher checks any
// hint against the running kernel before using it. Written to a temp file and renamed into
// place; no fsync (a lost hint only costs one scan).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "base/status.h"

namespace hv::cli {

class VmcoreinfoHintFile {
 public:
  explicit VmcoreinfoHintFile(std::string path) : path_(std::move(path)) {}
  // The address saved last; nullopt for no file or anything but one hex address.
  std::optional<std::uint64_t> Load() const;
  // Errors: kIo when the file cannot be written, e.g. a read-only state
  // directory.
  Status Save(std::uint64_t gpa) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace hv::cli
