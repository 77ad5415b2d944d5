// The kernel source tree `hvpatch build` compiles in, and the I/O around it: fetching Debian's
// source and config for a kernel release, preparing the tree once per (source, config), building
// single objects with the kernel's own flags (kbuild) plus -ffunction-sections -fdata-sections,
// applying and reverting the fix, and linking the generated livepatch module with kbuild.
// Every command runs under `nice -n 10` with its output in a log file; docs/build.md has the
// cache layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace hv::builder {

// Where a kernel's source, config and symbol files are.
struct KernelSource {
  std::string source_dir;     // a kernel source tree (top Makefile)
  std::string config;         // the kernel's .config
  std::string release;        // `uname -r` of that kernel (KERNELRELEASE: the modules' vermagic)
  std::string module_symvers; // vmlinux's exports (Module.symvers), or ""
  std::string system_map;     // System.map (or a guest's /proc/kallsyms), or ""
};

// Downloads (once, cached under `cache_dir`/debian/RELEASE) Debian's linux-source-X.Y of the
// version that built `release` and the .config and Module.symvers of linux-headers-RELEASE, with
// apt-get download. (Debian ships no real System.map outside the -dbg package.)
// Errors: kNotFound if the archive has no such kernel; kUnavailable if a command fails (its log
// is named).
Result<KernelSource> FetchDebianKernel(const std::string& release, const std::string& cache_dir);

// A prepared tree: `olddefconfig prepare modules_prepare` run in an output directory of its own.
struct PreparedTree {
  KernelSource source;
  std::string objdir;
  bool cached = false;  // prepared by an earlier run
  double prepare_seconds = 0;
};

// Prepares (or finds in `cache_dir`/trees, keyed by the source path, the config's contents and the
// release) an output directory for `source`.
// Errors: kUnavailable naming the failed make and its log.
Result<PreparedTree> PrepareTree(const KernelSource& source, const std::string& cache_dir);

// The source files a unified diff touches ("+++ b/PATH" lines, -p1), in order.
// Errors: kInvalidArgument if it touches none, or a file that is not a .c source (a header:
// which objects include it is not known, and a struct change there must be refused).
Result<std::vector<std::string>> FilesOfDiff(const std::string& diff_text);

// Builds `objects` ("fs/pipe.o") in the tree and returns their bytes, in order.
Result<std::vector<std::vector<std::uint8_t>>> BuildObjects(const PreparedTree& tree,
                                                            const std::vector<std::string>& objects,
                                                            const std::string& log);

// Applies (reverse = false) or reverts the diff in the source tree with patch -p1.
Status ApplyDiff(const PreparedTree& tree, const std::string& diff_path, bool reverse, const std::string& log);

// Runs kbuild on the module directory `dir` (Kbuild + sources) against the tree; the module is
// dir/NAME.ko. Modpost's "undefined" for .klp.sym symbols is expected (KBUILD_MODPOST_WARN).
Status BuildModule(const PreparedTree& tree, const std::string& dir, const std::string& log);

// pahole's description of the structs in `object` (its DWARF), for CheckStructLayouts.
// Errors: kUnavailable if pahole (dwarves) fails.
Result<std::string> StructLayouts(const std::string& object);

// Runs `argv` (under nice -n 10), appending its output to `log`. Errors: kUnavailable with the
// exit status and the log's path.
Status RunLogged(const std::vector<std::string>& argv, const std::string& log, const std::string& cwd = "");

}  // namespace hv::builder
