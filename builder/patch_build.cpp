#include "builder/patch_build.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "builder/kernel_object.h"
#include "builder/kernel_symbols.h"
#include "builder/kernel_tree.h"
#include "builder/klp_finalizer.h"
#include "builder/livepatch_writer.h"
#include "builder/object_diff.h"
#include "builder/struct_layout.h"

namespace hv::builder {

namespace fs = std::filesystem;

namespace {

Result<std::string> ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return ErrnoError("reading '" + path + "'", errno);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  if (!f.flush()) return ErrnoError("writing '" + path + "'", errno);
  return Status::Ok();
}

std::string DefaultName(const std::string& output) {
  std::string n = fs::path(output).filename().string();
  if (n.size() > 3 && n.substr(n.size() - 3) == ".ko") n.resize(n.size() - 3);
  for (char& c : n) {
    if (c == '-') c = '_';
  }
  return n;
}

// An exclusive flock on CACHE/lock, held for a whole build. A second build of the same cache
// waits for it (saying so), as apt waits for its lock.
// The descriptor is deliberately inherited by make and every compiler under it: a flock lasts
// while any process holds the descriptor, so when hvpatch is killed mid-build the lock is only
// free once its last orphaned compiler has exited. Without that, an orphan could write the
// fixed file's object after the next build had put the source back, and that build would take
// it for its "before" object.
class CacheLock {
 public:
  static Result<CacheLock> Take(const std::string& cache_dir) {
    const std::string path = cache_dir + "/lock";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);  // no O_CLOEXEC: see above
    if (fd < 0) return ErrnoError("opening '" + path + "'", errno);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK) {
        const int e = errno;
        ::close(fd);
        return ErrnoError("locking '" + path + "'", e);
      }
      std::fprintf(stderr, "hvpatch: waiting for another build that uses the cache '%s'\n", cache_dir.c_str());
      while (::flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
          const int e = errno;
          ::close(fd);
          return ErrnoError("locking '" + path + "'", e);
        }
      }
    }
    return CacheLock(fd);
  }
  CacheLock(CacheLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  CacheLock& operator=(CacheLock&&) = delete;
  ~CacheLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the flock
  }

 private:
  explicit CacheLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Where a build keeps the diff it has applied to `source_dir`, until it has reverted it.
std::string PendingDiffPath(const std::string& cache_dir, const std::string& source_dir) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a: stable across hvpatch builds
  for (unsigned char c : fs::absolute(source_dir).string()) h = (h ^ c) * 0x100000001b3ull;
  char key[17];
  std::snprintf(key, sizeof(key), "%016llx", static_cast<unsigned long long>(h));
  return cache_dir + "/applied-" + key + ".diff";
}

Result<BuildReport> Build(const BuildRequest& q) {
  const auto t0 = std::chrono::steady_clock::now();
  BuildReport rep;
  HV_ASSIGN_OR_RETURN(std::string diff_text, ReadText(q.diff));
  HV_ASSIGN_OR_RETURN(std::vector<std::string> files, FilesOfDiff(diff_text));
  const std::string name = q.name.empty() ? DefaultName(q.output) : q.name;

  KernelSource ks;
  if (q.source_dir.empty()) {
    if (q.release.empty()) {
      return InvalidArgument("no kernel source: give --kernel RELEASE, or --source DIR and --config FILE");
    }
    HV_ASSIGN_OR_RETURN(ks, FetchDebianKernel(q.release, q.cache_dir));
  } else {
    if (q.config.empty()) return InvalidArgument("--source needs --config FILE (the running kernel's .config)");
    ks.source_dir = q.source_dir;
    ks.config = q.config;
    ks.release = q.release;
    const std::string symvers = q.source_dir + "/Module.symvers";
    if (fs::exists(symvers)) ks.module_symvers = symvers;
  }
  if (!q.system_map.empty()) ks.system_map = q.system_map;
  if (ks.release.empty()) {
    // The release is the modules' vermagic: a module built for another one does not load.
    return InvalidArgument("the kernel release is unknown").WithHint("give --kernel RELEASE (the guest's uname -r)");
  }
  // One build at a time per cache: the source tree is patched in place.
  std::error_code mk;
  fs::create_directories(q.cache_dir, mk);
  HV_ASSIGN_OR_RETURN(CacheLock lock, CacheLock::Take(q.cache_dir));
  HV_ASSIGN_OR_RETURN(PreparedTree tree, PrepareTree(ks, q.cache_dir));
  // A build killed between applying its fix and reverting it left the fix in the tree; every
  // "before" object would be built from it. Put the tree back first.
  const std::string pending = PendingDiffPath(q.cache_dir, ks.source_dir);
  if (fs::exists(pending)) {
    const Status undone = ApplyDiff(tree, pending, true, q.cache_dir + "/recovery.log");
    if (!undone.ok()) {
      return FailedPrecondition("the kernel source '" + ks.source_dir + "' still holds the fix of an interrupted "
                                "build, and reverting it failed: " + undone.message())
          .WithHint("restore that source tree (for --kernel: remove '" + q.cache_dir +
                    "/debian') and build again");
    }
    fs::remove(pending, mk);
  }
  rep.tree_cached = tree.cached;
  rep.prepare_seconds = tree.prepare_seconds;
  const auto t1 = std::chrono::steady_clock::now();

  const std::string work = q.cache_dir + "/work/" + name;
  std::error_code ec;
  fs::remove_all(work, ec);
  fs::create_directories(work, ec);
  if (ec) return ErrnoError("creating '" + work + "'", ec.value());
  rep.log = work + "/build.log";

  std::vector<std::string> objects;
  for (const auto& f : files) objects.push_back(f.substr(0, f.size() - 2) + ".o");
  HV_ASSIGN_OR_RETURN(auto before, BuildObjects(tree, objects, rep.log));
  // The diff is kept beside the cache while it is in the tree (see `pending` above).
  fs::copy_file(q.diff, pending, fs::copy_options::overwrite_existing, ec);
  if (ec) return ErrnoError("writing '" + pending + "'", ec.value());
  const Status applied = ApplyDiff(tree, q.diff, false, rep.log);
  if (!applied.ok()) {
    fs::remove(pending, ec);  // the dry run failed: the tree is untouched
    return applied;
  }
  auto after = BuildObjects(tree, objects, rep.log);
  // The tree is shared and cached: put it back whatever happened.
  const Status reverted = ApplyDiff(tree, pending, true, rep.log);
  if (!after.ok()) return after.status().WithContext("with the fix applied");
  HV_RETURN_IF_ERROR(reverted);
  fs::remove(pending, ec);
  // The tree's objects are now the patched build's; BuildObjects removes them before every build,
  // so the next build starts from the reverted source anyway.

  std::vector<ComparedObject> compared;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    HV_ASSIGN_OR_RETURN(KernelObject orig, KernelObject::Read(before[i], objects[i]));
    HV_ASSIGN_OR_RETURN(KernelObject patched, KernelObject::Read((*after)[i], objects[i]));
    // Struct layouts first: a changed layout also changes functions, and is the real reason.
    const std::string base = work + "/" + std::to_string(i);
    HV_RETURN_IF_ERROR(WriteText(base + ".orig.o", std::string(before[i].begin(), before[i].end())));
    HV_RETURN_IF_ERROR(WriteText(base + ".patched.o", std::string((*after)[i].begin(), (*after)[i].end())));
    HV_ASSIGN_OR_RETURN(std::string layouts_before, StructLayouts(base + ".orig.o"));
    HV_ASSIGN_OR_RETURN(std::string layouts_after, StructLayouts(base + ".patched.o"));
    HV_RETURN_IF_ERROR(CheckStructLayouts(layouts_before, layouts_after).WithContext("comparing '" + objects[i] + "'"));
    HV_ASSIGN_OR_RETURN(ObjectDiff d, CompareObjects(orig, patched));
    if (d.empty()) continue;
    for (const auto& f : d.replaced) rep.replaced.push_back(f.old_name + " in " + objects[i] + ": " + f.difference);
    for (const auto& f : d.new_functions) rep.carried.push_back("function " + f);
    for (const auto& f : d.new_data) rep.carried.push_back("data " + f);
    compared.push_back({objects[i], std::move(orig), std::move(patched), std::move(d)});
  }
  if (compared.empty()) return FailedPrecondition("the fix changes no function's object code");

  std::string symvers, sysmap;
  if (!ks.module_symvers.empty()) {
    HV_ASSIGN_OR_RETURN(symvers, ReadText(ks.module_symvers));
  }
  if (!ks.system_map.empty()) {
    HV_ASSIGN_OR_RETURN(sysmap, ReadText(ks.system_map));
  }
  const KernelSymbols symbols = KernelSymbols::Parse(symvers, sysmap);
  HV_ASSIGN_OR_RETURN(LivepatchSources src, WriteLivepatchSources(name, compared, symbols));
  HV_RETURN_IF_ERROR(WriteText(work + "/Kbuild", src.kbuild));
  HV_RETURN_IF_ERROR(WriteText(work + "/hvp_klp.c", src.klp_c));
  HV_RETURN_IF_ERROR(WriteText(work + "/hvp_code.S", src.code_s));
  HV_RETURN_IF_ERROR(BuildModule(tree, work, rep.log));
  const std::string ko = work + "/" + name + ".ko";
  HV_ASSIGN_OR_RETURN(KlpFinalizeStats st, FinalizeKlpModule(ko));
  (void)st;
  fs::copy_file(ko, q.output, fs::copy_options::overwrite_existing, ec);
  if (ec) return ErrnoError("writing '" + q.output + "'", ec.value());
  rep.module = q.output;
  rep.build_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  (void)t0;
  return rep;
}

}  // namespace

Result<BuildReport> BuildLivePatch(const BuildRequest& request) {
  auto r = Build(request);
  if (!r.ok()) return r.status().WithContext("building '" + request.diff + "'");
  return r;
}

}  // namespace hv::builder
