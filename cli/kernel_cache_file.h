// The warm-start cache on the host's disk (patcher/kallsyms_cache.h): one file per key in
// STATE_DIR/cache/, written to a temp file and renamed into place (a reader sees the old file,
// the new one, or none; never half of one). No fsync: a lost entry only costs one decode.
// Map reads an entry in place: a file mapping costs one page fault per 16 pages (the kernel's
// fault-around), where a copy into the heap costs one per page.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "patcher/kallsyms_cache.h"

namespace hv::cli {

class KernelCacheFile : public patcher::KernelCacheStore {
 public:
  // `dir` is created (0700) on the first Save.
  explicit KernelCacheFile(std::string dir) : dir_(std::move(dir)) {}
  // Errors: kNotFound (no entry), kInvalidArgument (a key that is not [0-9a-zA-Z-] only, or a
  // file over patcher::kMaxKallsymsCacheBytes), kIo.
  Result<std::string> Load(const std::string& key) override;
  Status Save(const std::string& key, std::string_view bytes) override;
  // The file mapped read-only (MAP_PRIVATE). Entries are replaced by rename, never rewritten in
  // place, so a mapping keeps the bytes it saw. Errors as Load.
  Result<std::shared_ptr<const Entry>> Map(const std::string& key) override;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace hv::cli
