// Atomic replace (klp_patch.replace): what a replacing patch does to the hvpatch patches below
// it, decided before the pause and carried out in the same pause as the new patch's own writes.
//
// Upstream livepatch (Linux 6.1, kernel/livepatch/core.c klp_add_nops(), transition.c) gives a
// replacing patch a no-op function for every function of an earlier patch that it does not
// patch itself; once the transition completes, the earlier patches are discarded and the no-ops
// removed, so those functions run the kernel's own code again. hvpatch has no transition: in
// one pause, the new patch's trampolines are written (over the earlier patches' where it takes a
// function over) and every other site of the earlier patches gets the kernel's original entry
// back. See docs/atomic-replace.md.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "patcher/arena_layout.h"
#include "patcher/commit.h"
#include "patcher/ledger.h"

namespace hv::patcher {

struct AtomicReplacePlan {
  std::vector<std::string> replaced;  // the patches taken over, bottom to top
  // Sites of replaced patches that the new patch does not patch: each goes back to the kernel's
  // original entry. `expected` is the top replaced patch's trampoline there (the run-pre check),
  // `bytes` the original the bottom one found.
  std::vector<CodeWrite> restores;
  std::vector<std::string> restored_functions;  // old_name of each restore, same order
  // The kernel's own function behind each restore, same order: an undo of the replace (crash
  // recovery) puts the replaced patch's trampoline back, so it must be idle then.
  std::vector<CodeRange> restored_code;
  // Code that must not be on any stack when the switch happens: every code run of every
  // replaced patch (the un-patched functions' replacements and the taken-over ones alike).
  std::vector<CodeRange> busy;
  // For each site the new patch takes over from a replaced patch: the kernel's original entry
  // (what the new patch's ledger record keeps as `original`, so its revert gives the kernel's
  // code back) and what the site holds before the switch (the top replaced trampoline).
  std::map<std::uint64_t, std::vector<std::uint8_t>> originals;
  std::map<std::uint64_t, std::vector<std::uint8_t>> current;
};

// Plans the take-over of `replaced` (ledger records, bottom to top, every one kApplied) by a
// patch whose trampolines go to `new_sites`. `layout` holds the replaced patches' arena runs.
// Pure. Errors: kFailedPrecondition when a replaced patch is not applied (a transaction of its
// own is unfinished), or when two replaced patches disagree on a site's original bytes (the
// ledger does not describe one stack of patches).
Result<AtomicReplacePlan> PlanAtomicReplace(std::span<const LedgerPatch> replaced, const ArenaLayout& layout,
                                            std::span<const std::uint64_t> new_sites);

}  // namespace hv::patcher
