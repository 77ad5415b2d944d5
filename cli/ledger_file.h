// The ledger on the host's disk: one JSON file per VM, replaced atomically (write a temp file,
// fsync it, rename over the old one, fsync the directory), so a crash at any point leaves either
// the old or the new ledger. Default directory /var/lib/hvpatch (HVPATCH_STATE_DIR overrides).
#pragma once

#include <string>

#include "patcher/ledger.h"

namespace hv::cli {

// The state directory: $HVPATCH_STATE_DIR, or /var/lib/hvpatch.
std::string StateDir(const std::string& override_dir = {});

// A file name safe for any VM identity (QEMU UUIDs, socket paths).
std::string StateFileStem(const std::string& vm_identity);

class LedgerFile : public patcher::LedgerStore {
 public:
  explicit LedgerFile(std::string path) : path_(std::move(path)) {}
  // Errors: kIo for file system errors, kInvalidArgument when the file is not a ledger (the
  // message names the file: a human may have edited it).
  Result<patcher::Ledger> Load() override;
  Status Save(const patcher::Ledger& ledger) override;
  // Renames the file to <stem>.archived-<UTC time>.json beside it.
  Result<std::string> Archive() override;
  std::string Describe() const override { return path_; }

 private:
  std::string path_;
};

}  // namespace hv::cli
