// A warm start for GuestKernel::Build: the decoded vmlinux kallsyms, kept between hvpatch runs
// (the state directory, cli/kernel_cache_file.h) and keyed by the kernel's build-id and KASLR
// offset, which cannot change within one boot.
//
// Validated on use, never trusted: the entry records a digest of the raw kallsyms tables it was
// decoded from (KallsymsRaw::Digest), and Build reads the tables from guest memory again (about
// 1.5 MB, a few milliseconds) and uses the entry only when the digests match. Decode is
// deterministic, so a matching entry holds exactly what decoding would produce; what is saved is
// only the decode (~87k names) itself. The file is untrusted input too: every length is bounded,
// the whole content is checksummed, and any mismatch falls back to decoding.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "patcher/symbol_table.h"

namespace hv::patcher {

// Where entries live. patcher/ does no I/O; the CLI gives a file-backed store.
class KernelCacheStore {
 public:
  virtual ~KernelCacheStore() = default;
  // The bytes saved under `key`; kNotFound when there are none.
  virtual Result<std::string> Load(const std::string& key) = 0;
  virtual Status Save(const std::string& key, std::string_view bytes) = 0;
};

struct KallsymsCacheKey {
  std::string build_id;  // hex, from vmcoreinfo
  std::uint64_t kaslr_offset = 0;
  std::uint64_t tables_digest = 0;

  // "kallsyms-<build-id>-<kaslr>", or empty when the build-id is not 1..128 hex digits (a key
  // from guest memory must never become an odd file name).
  std::string StoreKey() const;
};

inline constexpr std::size_t kMaxKallsymsCacheBytes = 256u << 20;

// Serializes `symbols` (vmlinux, in kallsyms order: name, address, type) under `key`.
std::string EncodeKallsymsCache(const KallsymsCacheKey& key, std::span<const KernelSymbol> symbols);

// Parses an entry and checks it against `expected`. Errors: kInvalidArgument for a malformed
// or corrupt entry (bad magic, a length out of bounds, truncation, trailing bytes, checksum);
// kFailedPrecondition naming the field when it is for another build-id, KASLR offset or tables.
Result<std::vector<KernelSymbol>> DecodeKallsymsCache(std::string_view bytes, const KallsymsCacheKey& expected);

}  // namespace hv::patcher
