// A warm start for GuestKernel::Build: the decoded vmlinux kallsyms, kept between hvpatch runs
// (the state directory, cli/kernel_cache_file.h) and keyed by the kernel's build-id and KASLR
// offset, which cannot change within one boot.
//
// Validated on use, never trusted: the entry records a digest of the raw kallsyms tables it was
// decoded from (KallsymsRaw::Digest), and Build digests the tables in guest memory again (about
// 1.5 MB streamed through a small buffer, KallsymsDecoder::DigestInPlace: no copy of them) and
// uses the entry only when the digests match. Decode is
// deterministic, so a matching entry holds exactly what decoding would produce.
//
// What is saved is the finished vmlinux symbol table (SymbolTable::Image: records, names, name
// index, address order), and the warm start reads it in place from a file mapping: no decode,
// no index build, and no anonymous memory to fault in, which on some hosts costs more than the
// work itself (bench/README.md, "Sixth session"). The file is untrusted input too: the whole
// content is checksummed, every offset, length and index is bounds-checked before use
// (SymbolTable::FromImage), and any mismatch falls back to decoding.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "patcher/symbol_table.h"

namespace hv::patcher {

// Where entries live. patcher/ does no I/O; the CLI gives a file-backed store.
class KernelCacheStore {
 public:
  // An entry's bytes, readable (and 8-byte aligned) as long as the object lives.
  class Entry {
   public:
    virtual ~Entry() = default;
    virtual std::string_view bytes() const = 0;
  };

  virtual ~KernelCacheStore() = default;
  // The bytes saved under `key`; kNotFound when there are none.
  virtual Result<std::string> Load(const std::string& key) = 0;
  virtual Status Save(const std::string& key, std::string_view bytes) = 0;
  // The entry read in place where the store can (a file mapping); by default a copy from Load.
  virtual Result<std::shared_ptr<const Entry>> Map(const std::string& key);
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

// Serializes `vmlinux` (a table of vmlinux alone, as decoded) under `key`. Errors: as
// SymbolTable::Image, or kInvalidArgument for a build-id over 128 characters.
Result<std::string> EncodeKallsymsCache(const KallsymsCacheKey& key, const SymbolTable& vmlinux);

// Checks an entry against `expected` and returns the table it holds, read in place: `owner`
// keeps `bytes` alive for the table's life. Errors: kInvalidArgument for a malformed or corrupt
// entry (bad magic, truncation, checksum, anything SymbolTable::FromImage refuses);
// kFailedPrecondition naming the field when it is for another build-id, KASLR offset or tables.
Result<SymbolTable> DecodeKallsymsCache(std::string_view bytes, std::shared_ptr<const void> owner,
                                        const KallsymsCacheKey& expected);

}  // namespace hv::patcher
