// The tables a module load finishes in the module's own memory before its code runs, done by
// hvpatch on the linked image before it reaches the arena (Linux 6.1, x86-64):
//
//   __ex_table        struct exception_table_entry {int insn, fixup, data;}, insn and fixup
//                     relative to the field. Sorted as sort_extable() sorts a module's table
//                     (lib/extable.c: by absolute instruction address, relative fields rewritten
//                     for each entry's new place), so search_exception_tables()' binary search
//                     through the shadow module finds it.
//   __bug_table       struct bug_entry {int bug_addr_disp, file_disp; u16 line, flags;}
//                     (GENERIC_BUG_RELATIVE_POINTERS), placed in writable data ("aw"), found by
//                     report_bug() through module_bug_list; nothing to rewrite.
//   .altinstructions  struct alt_instr {s32 instr_offset, repl_offset; u16 cpuid; u8 instrlen,
//                     replacementlen;} (packed, 12 bytes). Applied as apply_alternatives()
//                     (arch/x86/kernel/alternative.c) applies a module's: an entry is patched
//                     when the guest CPU has the feature (or lacks it, with ALTINSTR_FLAG_INV);
//                     the replacement is copied over the original, a 5-byte `call` has its
//                     displacement moved to the new place, a 5-byte `jmp` is retargeted
//                     (recompute_jump; hvpatch keeps the 5-byte form the kernel may shorten),
//                     and the rest is padded with 0x90. The kernel then turns NOP runs into long
//                     NOPs (optimize_nops), which only changes speed; hvpatch leaves them as 0x90.
// The CPU features come from the guest's boot_cpu_data.x86_capability (read by the engine).
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "patcher/patch_module.h"
#include "patcher/relocator.h"

namespace hv::patcher {

// boot_cpu_data.x86_capability: NCAPINTS + NBUGINTS 32-bit words.
struct CpuFeatures {
  std::vector<std::uint32_t> words;
  // Errors: kInvalidArgument for a bit past the words.
  Result<bool> Has(std::uint32_t bit) const;
};

struct KernelTables {
  std::uint64_t extable_va = 0;    // the placed, sorted __ex_table (0: none)
  std::uint32_t num_exentries = 0;
  std::uint64_t bug_table_va = 0;  // the placed __bug_table (writable data: WARN_ONCE sets its flag)
  std::uint32_t num_bugs = 0;
  std::size_t alternatives = 0;    // .altinstructions entries
  std::size_t alternatives_applied = 0;
};

// Sorts __ex_table and applies .altinstructions in `linked` (both, when placed in `image`).
// Errors (kInvalidArgument): a table whose size is not a multiple of its entry, an entry that
// points outside the placed code, a replacement longer than its original; kUnimplemented for a
// feature bit beyond the guest's capability words.
Result<KernelTables> FinishKernelTables(const PatchModule& module, const PatchImage& image, LinkedPatch& linked,
                                        const CpuFeatures& cpu);

}  // namespace hv::patcher
