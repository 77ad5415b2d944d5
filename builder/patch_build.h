// `hvpatch build`'s pipeline, as one typed request (cli/cmd_build.cpp fills it from argv):
// source -> prepared tree -> each touched object before and after the fix -> comparison ->
// livepatch module sources -> kbuild -> FinalizeKlpModule -> OUT.ko.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"

namespace hv::builder {

struct BuildRequest {
  std::string diff;         // FIX.diff (unified, -p1)
  std::string output;       // OUT.ko
  std::string name;         // module name; default from OUT.ko's file name
  std::string release;      // --kernel: fetch the source and config from Debian
  std::string source_dir;   // --source
  std::string config;       // --config
  std::string system_map;   // System.map of the running kernel (sympos of static symbols), optional
  std::string cache_dir;    // downloads, prepared trees, module work directories
};

struct BuildReport {
  std::string module;                   // the written .ko
  std::vector<std::string> replaced;    // "pipe_fasync (sympos 0) in fs/pipe.o: size 168 -> 196 bytes"
  std::vector<std::string> carried;     // new functions and data carried along
  bool tree_cached = false;
  double prepare_seconds = 0;           // preparing the tree (0 when cached)
  double build_seconds = 0;             // objects before/after, compare, module
  std::string log;                      // the build log
};

// Errors: those of each step, with context ("building 'fix.diff': comparing 'fs/pipe.o': ...").
// The source tree is always left as it was found (the fix is reverted after the patched build).
Result<BuildReport> BuildLivePatch(const BuildRequest& request);

}  // namespace hv::builder
