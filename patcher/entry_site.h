// What sits at the entry of a function hvpatch is about to replace, decoded with Capstone.
//
// The guest kernel (CONFIG_DYNAMIC_FTRACE, -mfentry) starts every traceable function with
// `call __fentry__`, which ftrace turns into the 5-byte nop 0f 1f 44 00 00 at boot; with IBT an
// `endbr64` comes first. Those 5 bytes are where the trampoline goes. Anything else there means
// someone else owns the entry:
//   e8 rel32        ftrace's call: the function is traced in the guest, or an in-guest livepatch
//                   (which is built on ftrace) patched it
//   e9 rel32        a jump: into hvpatch's arena it is our own trampoline (the new patch stacks on
//                   it); elsewhere, another tool's
//   cc              int3: a kprobe, or the kernel's text_poke_bp in the middle of a write
//   other           not an ftrace site at all (notrace function, or not the function's start)
//
// A function built without ftrace (the guest's lib/, for one) starts with ordinary instructions.
// Those can be overwritten the way Ksplice did it: the old function is replaced whole and the
// stack check proves nobody is inside it, so the instructions under the jump never run again.
// ClassifyEntry calls that kPlainCode; the plan must prove more before using it
// (plain_entry.h: no jump-label, static-call or lock-prefix site under the jump, a `.cold` part
// counted as busy), so CheckPatchable alone still refuses it.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

namespace hv::patcher {

// Read this many bytes at a function's entry for ClassifyEntry: endbr64, then whole instructions
// covering the 5-byte jump (the last may start at +4 and be 15 bytes long).
inline constexpr std::size_t kEntryReadSize = 24;

struct AddressRange {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;  // exclusive
  bool Contains(std::uint64_t a) const { return a >= begin && a < end; }
};

enum class EntryKind {
  kFtraceNop,   // patchable
  kArenaJump,   // our own trampoline: stack on it
  kCall,        // ftrace owns the function
  kOtherJump,   // a jump outside the arena
  kPlainCode,   // ordinary instructions, no ftrace site: patchable once plain_entry.h proves it
  kOther,       // anything else (a breakpoint, or bytes that do not decode into plain code)
};
std::string_view EntryKindName(EntryKind k);

struct EntrySite {
  EntryKind kind = EntryKind::kOther;
  std::uint64_t function_va = 0;
  bool endbr64 = false;
  std::uint64_t site_va = 0;  // where the 5-byte trampoline goes: function_va, +4 after endbr64
  std::array<std::uint8_t, 5> current{};  // the 5 bytes at site_va as read
  std::uint64_t target = 0;   // destination of a call/jmp at the site
  std::string instruction;    // Capstone's text of the instruction at the site, "call 0xffff..."
  // kPlainCode: the whole instructions the jump overwrites ("mov rax, rsi; xor edx, edx") and
  // their length (>= 5).
  std::string covered;
  std::uint32_t covered_size = 0;
};

// Decodes `bytes`, read at guest address `va` (the function's start). `arena` is hvpatch's arena,
// to recognise our own trampolines.
// Errors: kInvalidArgument if fewer than 9 bytes are given (endbr64 + 5).
Result<EntrySite> ClassifyEntry(std::span<const std::uint8_t> bytes, std::uint64_t va, AddressRange arena);

// Ok for kFtraceNop and kArenaJump. kPlainCode is refused here (its proof is ProvePlainEntry's).
// Otherwise kFailedPrecondition naming `function` and what its
// entry holds, e.g. "function 'cmdline_proc_show' at 0xffffffff81300000 starts with 'call
// 0xffffffffc0002000', not the ftrace nop: ftrace owns it (traced in the guest, or patched by an
// in-guest livepatch)".
Status CheckPatchable(const EntrySite& site, std::string_view function);

}  // namespace hv::patcher
