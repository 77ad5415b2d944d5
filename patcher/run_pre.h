// Ksplice's run-pre matching: a patch built from source (`hvpatch build`) carries the *before*
// code of every function it replaces, compiled from the same source as the running kernel. Before
// writing anything, hvpatch compares it with the guest's memory. A match proves the source is the
// running kernel's, and picks the right one of several static functions of one name.
//
// The records travel in a non-allocated section of the module, kRunPreSection (an in-guest
// insmod ignores it). Format, little-endian:
//   "HVRUNPR2" u32 count, then per function:
//     u16 len + name, u16 len + object ("vmlinux" or a module), u32 size + code (relocation fields
//     zero), u32 count + holes {u32 offset, u8 width, u8 type (R_X86_64_*), i64 addend,
//     u16 len + target symbol},
//     u32 count + volatile ranges {u32 offset, u8 length, u8 kind}
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

inline constexpr const char* kRunPreSection = ".hvpatch.runpre";

// Bytes the running kernel rewrites at boot (or at runtime), from the object's metadata sections.
enum class VolatileKind : std::uint8_t {
  kAlternative = 1,  // .altinstructions: the guest may hold the replacement
  kJumpLabel = 2,    // __jump_table: jmp or nop
  kStaticCall = 3,   // .static_call_sites: call or nop
  kParavirt = 4,     // .parainstructions
  kLockPrefix = 5,   // .smp_locks: lock or ds prefix
};

struct RunPreHole {
  std::uint32_t offset = 0;  // of the relocation field
  std::uint8_t width = 4;
  std::uint8_t type = 0;     // R_X86_64_PC32, _PLT32, _32S, _64
  std::int64_t addend = 0;   // from `target`'s address (the field holds target + addend [- place])
  std::string target;        // the symbol it refers to ("__fentry__", "kfree", ...); "" if none
};

struct RunPreVolatile {
  std::uint32_t offset = 0;
  std::uint8_t length = 0;
  VolatileKind kind = VolatileKind::kAlternative;
};

struct RunPreFunction {
  std::string name;
  std::string object = "vmlinux";
  std::vector<std::uint8_t> code;
  std::vector<RunPreHole> holes;          // sorted by offset
  std::vector<RunPreVolatile> volatiles;  // sorted by offset
};

std::vector<std::uint8_t> SerializeRunPre(const std::vector<RunPreFunction>& functions);

// Parses kRunPreSection's bytes (untrusted: every length is bounded).
// Errors: kInvalidArgument naming the record and field that is malformed.
Result<std::vector<RunPreFunction>> ParseRunPre(std::span<const std::uint8_t> bytes);

struct RunPreMismatch {
  std::uint64_t offset = 0;
  std::string detail;  // "guest has 0x41, the build 0x40"
};

// Compares the before code with `guest` (the function's bytes read from guest memory, at least
// code.size()). Equal outside relocation fields and volatile ranges, and with the kernel's own
// rewrites counted as equal: the ftrace site at offset 0 (`call __fentry__` -> 5-byte nop, or an
// ftrace/livepatch call, or a jmp trampoline), `jmp __x86_return_thunk` -> `ret; int3...`, and a
// call or jmp through a retpoline thunk -> an indirect call/jmp padded with nops/int3.
// Returns nullopt on a match, else the first differing offset.
std::optional<RunPreMismatch> MatchRunPre(const RunPreFunction& f, std::span<const std::uint8_t> guest);

// The relocation fields too (Ksplice's run-pre checks what the code refers to, not only its
// bytes): a field whose target `resolve` knows must hold what the relocation would have written
// for code at `va`. `resolve` returns the target's address, or nullopt when it cannot tell (a
// static name of several, a string literal); such fields, and those the kernel rewrites at boot
// (ftrace, return thunks, retpolines, volatile ranges), are skipped.
std::optional<RunPreMismatch> MatchRunPreRelocations(
    const RunPreFunction& f, std::span<const std::uint8_t> guest, std::uint64_t va,
    const std::function<std::optional<std::uint64_t>(const std::string&)>& resolve);

}  // namespace hv::patcher
