// The proof that a function without an ftrace site may have its first instructions overwritten
// by the 5-byte jump (Ksplice's way; entry_site.h's kPlainCode).
//
// The stack check already proves that no vCPU and no stack is inside the old function, and the
// jump sends every new call away, so the overwritten instructions never run again. What is left:
//  - the kernel itself must never write those bytes later. Jump labels (`__jump_table`), inline
//    static calls (`.static_call_sites`) and the UP/SMP lock-prefix switch (`.smp_locks`) are
//    the runtime text writers with a table: a site of theirs under the jump is refused. kprobes
//    and optprobes leave an int3 or a rel32 jump, which ClassifyEntry already refuses;
//  - no other code may jump into the middle of them. Compiled C enters a function only at its
//    start, except from the function's own `.cold` part (gcc's hot/cold split), which jumps back
//    into the body: a thread in `NAME.cold` must count as inside the function, so its range is
//    added to what the stack check treats as busy.
// Only vmlinux functions: a module's tables would have to be read through its struct module.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "patcher/entry_site.h"
#include "patcher/symbol_resolver.h"

namespace hv::patcher {

class GuestCodeReader;

// Addresses of vmlinux's runtime-rewritten text sites, each sorted.
struct TextSites {
  std::vector<std::uint64_t> jump_labels;   // jump_entry code addresses
  std::vector<std::uint64_t> static_calls;  // static_call_site addresses
  std::vector<std::uint64_t> lock_prefixes; // .smp_locks addresses
};

// Reads vmlinux's `__jump_table`, `.static_call_sites` and `.smp_locks` through their kallsyms
// bounds (`__start___jump_table` ... `__stop___jump_table`, etc.). A table whose bounds kallsyms
// lacks counts as absent only when both of its bounds are absent (a kernel without that feature);
// one bound without the other, or an implausible size, is an error.
Result<TextSites> ReadVmlinuxTextSites(const SymbolResolver& resolver, const GuestCodeReader& reader);

// The sites (jump labels and static calls are 5 bytes long, a lock prefix 1) that overlap the
// jump at `entry.site_va`. Ok when none does; otherwise kFailedPrecondition naming `function`,
// the kind of site and its address.
Status CheckNoTextSiteUnderJump(const EntrySite& entry, std::string_view function, const TextSites& sites);

// Code ranges of `function`'s `.cold` parts in vmlinux (every occurrence of "NAME.cold" when the
// name is not unique: conservative), to add to the stack check's busy ranges.
std::vector<std::pair<std::uint64_t, std::uint64_t>> ColdParts(const SymbolResolver& resolver,
                                                                std::string_view function);

}  // namespace hv::patcher
