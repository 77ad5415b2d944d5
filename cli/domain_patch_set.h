// A libvirt domain's patch set: the patches `apply` put on the domain, in stack order, each with
// a copy of its .ko (the original path may be gone at the next start), so the libvirt hook can
// re-apply them when the domain starts again. Kept per domain UUID in the state directory:
//   STATE/domains/UUID/set.json     {"domain": NAME, "patches": [{"name": N, "file": "N.ko"}]}
//   STATE/domains/UUID/N.ko         the copy
//   STATE/domains/UUID/hvpatch.log  what the hook did, or why it could not
// set.json is replaced atomically (temp file, fsync, rename), like the ledger.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace hv::cli {

struct PatchSetEntry {
  std::string name;  // the patch's name (the module name, as in the ledger)
  std::string file;  // the copy of the .ko, a path
};

class DomainPatchSet {
 public:
  DomainPatchSet(const std::string& state_dir, const std::string& domain_uuid);

  // The set in stack order (bottom first); empty when none was recorded. Errors: kIo,
  // kInvalidArgument naming the file when it is not a patch set.
  Result<std::vector<PatchSetEntry>> Load() const;
  // Records patch `name` on top (replacing an entry of that name), with a copy of `module`.
  Status Add(const std::string& domain_name, const std::string& name, const std::vector<std::uint8_t>& module);
  // Removes patch `name` and its copy (absent: nothing to do).
  Status Remove(const std::string& name);
  // Appends a time-stamped line to the domain's log.
  void Log(const std::string& line) const;

  const std::string& dir() const { return dir_; }
  std::string log_path() const { return dir_ + "/hvpatch.log"; }

 private:
  Status Save(const std::string& domain_name, const std::vector<PatchSetEntry>& entries) const;
  std::string dir_;
};

}  // namespace hv::cli
