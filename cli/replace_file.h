// Replacing a small host-side file whole: written to a temp file beside it (0600) and renamed
// into place, so a reader sees the old file, the new one, or none; never half of one. No fsync:
// for files whose loss only costs the next run some work (the warm-start cache, the vmcoreinfo
// hint). The ledger and the domain's patch set are durable and fsync (ledger_file.cpp,
// domain_patch_set.cpp).
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"

namespace hv::cli {

// Creates the parent directory (0700) if it is missing, then writes `bytes` to `path` as above.
// Errors: kIo naming the file and the step (creating, writing, renaming); the temp file is
// removed on error.
Status ReplaceFile(const std::string& path, std::string_view bytes);

}  // namespace hv::cli
