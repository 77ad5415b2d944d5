// From a loaded patch module to the bytes the arena receives: choose the sections the new
// functions need (SelectImage), then place and relocate them against the guest (Link).
//
// What is copied: starting from the sections of the new functions, every section their
// relocations reach, transitively. Sections are copied whole, because the assembler resolves calls
// and jumps inside one section without a relocation (a kbuild module without
// -ffunction-sections has one .text). The module's own plumbing is never used: the klp tables and
// the init/exit functions (MetadataRange) are blanked inside copied sections (zeroes, or int3 in
// code) and their relocations skipped; THIS_MODULE, .modinfo and __versions are never copied.
//
// Sections that only tell an in-guest loader about the code (they point INTO copied code) are
// either ignored or refused. Ignored, because the code is correct without them:
//   __mcount_loc, __patchable_function_entries   ftrace call sites: hvpatch turns each
//                                                `call __fentry__` into a 5-byte nop itself
//   .return_sites, .retpoline_sites, .call_sites  where the kernel rewrites `jmp
//                                                __x86_return_thunk` / `call __x86_indirect_thunk_*`
//                                                for the speculation mitigations it chose at boot.
//                                                Left alone, those sites go through the guest's own
//                                                thunks: functionally correct; the indirect thunks
//                                                carry the guest's retpoline choice, but a return
//                                                through __x86_return_thunk gets only what that
//                                                symbol holds (in 6.1 stable a plain `ret`, the
//                                                chosen untrain/SRSO thunk being patched into the
//                                                kernel's own sites), so arena code may be less
//                                                mitigated than the kernel's
//   .orc_unwind, .orc_unwind_ip                  unwind tables: never copied as sections; with a
//                                                shadow module its tables carry the entries of the
//                                                copied code (shadow_module.h)
//   .static_call_sites                           inline static call sites (HAVE_STATIC_CALL_INLINE):
//                                                a site calls (or jumps to) its key's trampoline
//                                                `__SCT__name`, and the kernel keeps every
//                                                trampoline jumping to the key's current function
//                                                (static_call_update rewrites it first), so an
//                                                unregistered site always reaches the current
//                                                target, one jmp later. Registering it would
//                                                only inline that jmp (docs/shadow-module.md)
//   .smp_locks                                   LOCK prefixes the kernel could drop on one CPU;
//                                                keeping them is always correct
//   .ibt_endbr_seal, _kprobe_blacklist           IBT sealing (off in the test kernel) and kprobe
//                                                hints
// Refused, because the code would misbehave without the kernel's help (kUnimplemented, naming
// the function and the section): __ex_table (a fault in user access would oops), .altinstructions
// / .altinstr_replacement (the unpatched instruction may be wrong, e.g. no STAC before a user
// access), __jump_table (static keys stuck at their default), .static_call.text (the patch's
// own static call trampolines), .parainstructions, __bug_table (WARN/BUG's ud2 would be an unknown oops),
// .data..percpu (module per-cpu variables need per-cpu space), tracepoints, trace events,
// dynamic debug, module parameters and exports. Any other non-standard section that points into
// copied code is refused as unknown.
// With ImageOptions::shadow_module (the engine's default when it has the guest's BTF), the patch's
// struct module is placed (THIS_MODULE) and __ex_table, .altinstructions /
// .altinstr_replacement, __bug_table and __jump_table are placed instead of refused:
// kernel_tables.h and static_keys.h finish them and the shadow module registers them with the
// guest kernel (docs/shadow-module.md).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "patcher/arena_layout.h"
#include "patcher/patch_module.h"
#include "patcher/symbol_resolver.h"

namespace hv::patcher {

// One module section in the image: where it goes within its memory class.
struct PlacedSection {
  std::uint32_t section = 0;  // index in PatchModule::sections()
  MemoryClass memory = MemoryClass::kCode;
  std::uint64_t offset = 0;  // from the start of the class's area (aligned as the section asks)
  std::uint64_t size = 0;
};

// The sections to copy, and how big each memory class's area is.
struct PatchImage {
  std::vector<PlacedSection> sections;
  std::array<std::uint64_t, kMemoryClasses> size{};  // bytes per MemoryClass
  // With ImageOptions::shadow_module: the placed `.gnu.linkonce.this_module` section. Link
  // leaves its bytes zero and applies none of its relocations: the shadow module builder writes
  // the guest's struct module there (shadow_module.h), and THIS_MODULE resolves to it.
  std::optional<std::uint32_t> this_module;

  const PlacedSection* Find(std::uint32_t section) const;
  // Size of a class rounded up to whole arena pages.
  std::uint32_t Pages(MemoryClass c) const;
};

// Chooses the sections (see the file comment). Pure: depends on the module only.
// Errors (kUnimplemented): a copied function needs a refused section ("function 'hvp_foo' needs
// section '__ex_table' (exception table): not supported"), refers to the module's plumbing (klp
// tables, THIS_MODULE), or needs a section aligned to more than a page.
// kInvalidArgument: a relocation of copied code points to a non-allocated section, or COMMON
// symbols.
struct ImageOptions {
  // Place the patch's struct module (`.gnu.linkonce.this_module`) in data, so THIS_MODULE
  // resolves, instead of refusing references to it (see shadow_module.h).
  bool shadow_module = false;
};
Result<PatchImage> SelectImage(const PatchModule& module, ImageOptions options = {});

// A new function at its final address.
struct LinkedFunction {
  KlpFunction klp;
  std::uint64_t new_va = 0;
};

// The relocated bytes of each memory class, ready to be written at `base[class]`.
struct LinkedPatch {
  std::array<std::uint64_t, kMemoryClasses> base{};
  std::array<std::vector<std::uint8_t>, kMemoryClasses> bytes;  // image.size[class] bytes each
  std::vector<LinkedFunction> functions;
  std::size_t fentry_nops = 0;  // `call __fentry__` sites turned into nops
};

// Places `image` with class `c` starting at `base[c]` (page aligned) and applies every relocation
// of the copied sections: R_X86_64_64, PC64, PC32, PLT32, 32, 32S (overflow checked for the 32-bit
// kinds). Symbols defined in the module resolve to their new address; undefined ones through
// `resolver` with object "" (any object, non-exported included), livepatch's `.klp.sym.OBJ.NAME,POS`
// symbols with that object and position. Per-cpu symbols resolve to their per-cpu offset; a
// PC-relative reference to one is only taken in a %gs-prefixed RIP-relative operand.
// `call __fentry__` becomes the 5-byte nop 0f 1f 44 00 00.
// Errors (prefixed "linking patch 'NAME'"): kInvalidArgument for an unsupported relocation type
// ("section '.rela.text' entry 12: unsupported relocation type R_X86_64_GOTPCREL"), an overflow
// (e.g. a PC-relative reference to a per-cpu symbol outside a %gs operand, or the arena out of
// rel32 reach), a
// relocation that does not fit its section; the resolver's kNotFound / kInvalidArgument with the
// symbol and the function that refers to it.
Result<LinkedPatch> Link(const PatchModule& module, const PatchImage& image,
                         const SymbolResolver& resolver,
                         const std::array<std::uint64_t, kMemoryClasses>& base);

}  // namespace hv::patcher
