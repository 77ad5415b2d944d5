// Keeps a libvirt domain's patch set (cli/domain_patch_set.h) in step with apply and revert.
// Other targets (qmp:) have no set: the hook only serves libvirt domains.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/session.h"

namespace hv::cli {

// After a successful apply: records patch `name` with a copy of `module`. A failure to record
// is reported on stderr (the patch is live; only the hook will not know it).
void RecordApplied(const GlobalOptions& options, Session& session, const std::string& name,
                   const std::vector<std::uint8_t>& module);
// After a successful revert: removes `name` from the set.
void RecordReverted(const GlobalOptions& options, Session& session, const std::string& name);
// An atomic replace took `names` over: they leave the set (RecordApplied adds `by`).
void RecordReplaced(const GlobalOptions& o, Session& s, const std::vector<std::string>& names, const std::string& by);
// The domain's set as "name name ..." for `list`, or empty for a VM that is not a libvirt domain.
std::vector<std::string> PatchSetNames(const GlobalOptions& options, Session& session, bool* is_domain);

}  // namespace hv::cli
