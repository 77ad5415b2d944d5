// A warm start for the guest kernel's BTF: the few dozen questions a command asks KernelBtf
// (an offset, a member's size, a type's size, a struct's members), each with its answer, kept
// between hvpatch runs in the same store as the kallsyms entries (patcher/kallsyms_cache.h,
// file-backed by cli/kernel_cache_file.h) so that a later command neither reads the ~4 MiB
// __start_BTF..__stop_BTF blob from guest memory nor parses it with libbpf.
//
// Keyed by the kernel's build-id (vmcoreinfo BUILD-ID) and the BTF's byte count. The build-id is
// a hash over the final vmlinux, and the BTF section is generated from vmlinux's DWARF by pahole
// and linked into that same image before the build-id note is computed (scripts/link-vmlinux.sh),
// so the build-id covers the BTF bytes: one build-id, one BTF, one set of answers. The byte
// count (__stop_BTF - __start_BTF) is a second, cheap check read from kallsyms. An answer is
// recorded exactly as the parse gave it (a value, or the error's code, message and hint), so a
// replay returns the same Result.
//
// The entry is untrusted input: a magic, bounded counts and lengths, a checksum over all of it,
// no trailing bytes; any mismatch (another build-id or size, corruption, truncation, an
// oversized file) is refused, and the caller parses the real BTF instead.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::patcher {

// One named direct member of a struct (KernelBtf::Members).
struct BtfMember {
  std::string name;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  bool operator==(const BtfMember&) const = default;
};

enum class BtfQuestionKind : std::uint8_t {
  kOffset = 1,   // KernelBtf::Offset (and HasMember, which is "Offset is ok")
  kMemberSize,   // KernelBtf::MemberSize
  kTypeSize,     // KernelBtf::TypeSize (path empty)
  kMembers,      // KernelBtf::Members (path empty)
  kTypeCount,    // KernelBtf::type_count (type and path empty)
};

struct BtfQuestion {
  BtfQuestionKind kind = BtfQuestionKind::kOffset;
  std::string type;
  std::string path;
  auto operator<=>(const BtfQuestion&) const = default;
};

// What the parse answered: `code` kOk with `value` (or `members` for kMembers), or an error.
struct BtfAnswer {
  Code code = Code::kOk;
  std::string message;
  std::string hint;
  std::uint64_t value = 0;
  std::vector<BtfMember> members;
  bool operator==(const BtfAnswer&) const = default;
};

using BtfAnswers = std::map<BtfQuestion, BtfAnswer>;

struct BtfAnswersKey {
  std::string build_id;  // hex, from vmcoreinfo
  std::uint64_t btf_bytes = 0;

  // "btf-<build-id>-<bytes in hex>", or empty when the build-id is not 1..128 hex digits (a key
  // from guest memory must never become an odd file name).
  std::string StoreKey() const;
};

// Bounds on an entry. A command asks a few dozen questions; task_struct, the largest struct
// anyone lists, has a few hundred members.
inline constexpr std::size_t kMaxBtfAnswersBytes = 1u << 20;
inline constexpr std::size_t kMaxBtfAnswers = 4096;
inline constexpr std::size_t kMaxBtfMembers = 4096;      // per kMembers answer
inline constexpr std::size_t kMaxBtfNameLength = 512;    // type, path, member name
inline constexpr std::size_t kMaxBtfMessageLength = 4096;

// Whether an answer fits the bounds above, so that an entry holding it decodes (one that does not
// is simply not recorded: that question is answered by a parse each time).
bool FitsBtfAnswers(const BtfQuestion& question, const BtfAnswer& answer);

// Serializes `answers` under `key`. The result may exceed kMaxBtfAnswersBytes (then it does not
// decode, and should not be saved).
std::string EncodeBtfAnswers(const BtfAnswersKey& key, const BtfAnswers& answers);

// Parses an entry and checks it against `expected`. Errors: kInvalidArgument "BTF answers
// entry: ..." for a malformed or corrupt entry (size over kMaxBtfAnswersBytes, bad magic,
// checksum, a count or length out of bounds, an unknown question kind or error code,
// truncation, trailing bytes); kFailedPrecondition naming the field when it is for another
// build-id or BTF size.
Result<BtfAnswers> DecodeBtfAnswers(std::string_view bytes, const BtfAnswersKey& expected);

}  // namespace hv::patcher
