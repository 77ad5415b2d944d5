#include "builder/kernel_tree.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>
#include <algorithm>
#include <cctype>

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

bool Exists(const std::string& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// A shell word, quoted.
std::string Sh(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// Output of a short query command (apt-cache), or an error.
Result<std::string> Capture(const std::string& command) {
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) return ErrnoError("running '" + command + "'", errno);
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  if (rc != 0) return Unavailable("'" + command + "' failed (status " + std::to_string(rc) + ")");
  return out;
}

std::string MakeVar(const std::string& k, const std::string& v) { return k + "=" + v; }

std::vector<std::string> Make(const PreparedTree& t) {
  return {"make", "-s", "-C", t.source.source_dir, "O=" + t.objdir, "-j" + std::to_string(std::max(1u, std::min(2u, std::thread::hardware_concurrency()))),
          MakeVar("KERNELRELEASE", t.source.release)};
}

}  // namespace

Status RunLogged(const std::vector<std::string>& argv, const std::string& log, const std::string& cwd) {
  std::vector<std::string> full = {"nice", "-n", "10"};
  full.insert(full.end(), argv.begin(), argv.end());
  std::string shown;
  for (const auto& a : full) shown += (shown.empty() ? "" : " ") + a;
  {
    std::ofstream l(log, std::ios::app);
    l << "$ " << shown << "\n";
  }
  const pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork", errno);
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) _exit(126);
    // A killed hvpatch takes its make with it: a make left running would go on building from a
    // tree that the next build is about to put back (make's own compilers finish their file).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::vector<char*> args;
    for (auto& a : full) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return ErrnoError("waitpid", errno);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Unavailable("'" + shown.substr(0, 200) + "' failed (status " + std::to_string(WEXITSTATUS(status)) + ")")
        .WithHint("see the log '" + log + "'");
  }
  return Status::Ok();
}

Result<KernelSource> FetchDebianKernel(const std::string& release, const std::string& cache_dir) {
  const std::string ctx = "fetching kernel '" + release + "' from Debian's archive";
  for (char c : release) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_' && c != '+') {
      return InvalidArgument("'" + release + "' is not a kernel release").WithContext(ctx);
    }
  }
  const std::string dir = cache_dir + "/debian/" + release;
  KernelSource ks;
  ks.release = release;
  ks.config = dir + "/config";
  ks.module_symvers = dir + "/Module.symvers";
  // No System.map: Debian's linux-image ships a placeholder ("The real System.map is in the
  // linux-image-<version>-dbg package"). Static symbols then get sympos 0, and hvpatch's run-pre
  // picks among same-named ones at apply (docs/build.md).
  const std::string stamp = dir + "/fetched";
  // "6.1.0-47-cloud-amd64" -> "6.1"
  const auto dot2 = release.find('.', release.find('.') + 1);
  const std::string series = release.substr(0, dot2);
  ks.source_dir = dir + "/linux-source-" + series;
  if (Exists(stamp)) return ks;

  auto version = Capture("apt-cache show --no-all-versions " + Sh("linux-headers-" + release) +
                         " 2>/dev/null | sed -n 's/^Version: //p' | head -1");
  if (!version.ok() || version->empty()) {
    return NotFound("the archive has no package 'linux-headers-" + release + "'")
        .WithContext(ctx).WithHint("run apt-get update; the release is what `uname -r` prints in the guest");
  }
  std::string ver = *version;
  while (!ver.empty() && (ver.back() == '\n' || ver.back() == ' ')) ver.pop_back();
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir + "/debs", ec);
  if (ec) return ErrnoError("creating '" + dir + "'", ec.value()).WithContext(ctx);
  const std::string log = dir + "/fetch.log";
  auto run = [&](const std::string& script) { return RunLogged({"sh", "-c", script}, log, dir); };
  HV_RETURN_IF_ERROR(run("cd debs && apt-get download -q " + Sh("linux-source-" + series + "=" + ver) + " " +
                         Sh("linux-headers-" + release + "=" + ver))
                         .WithContext(ctx));
  HV_RETURN_IF_ERROR(run("dpkg-deb -x debs/linux-headers-*.deb hdr && cp hdr/usr/src/linux-headers-" + release +
                         "/.config config && cp hdr/usr/src/linux-headers-" + release +
                         "/Module.symvers Module.symvers && rm -rf hdr")
                         .WithContext(ctx));
  HV_RETURN_IF_ERROR(run("dpkg-deb --fsys-tarfile debs/linux-source-*.deb | tar -xO ./usr/src/linux-source-" + series +
                         ".tar.xz | tar -xJ && rm -rf debs")
                         .WithContext(ctx));
  std::ofstream(stamp) << ver << "\n";
  return ks;
}

Result<PreparedTree> PrepareTree(const KernelSource& source, const std::string& cache_dir) {
  const std::string ctx = "preparing kernel tree '" + source.source_dir + "'";
  HV_ASSIGN_OR_RETURN(std::string config, ReadText(source.config));
  const std::size_t key = std::hash<std::string>{}(fs::weakly_canonical(source.source_dir).string() + '\n' + source.release +
                                                   '\n' + config);
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016zx", key);
  PreparedTree t;
  t.source = source;
  t.objdir = cache_dir + "/trees/" + hex;
  const std::string stamp = t.objdir + "/.hvpatch-prepared";
  if (Exists(stamp)) {
    t.cached = true;
    return t;
  }
  std::error_code ec;
  fs::create_directories(t.objdir, ec);
  if (ec) return ErrnoError("creating '" + t.objdir + "'", ec.value()).WithContext(ctx);
  fs::copy_file(source.config, t.objdir + "/.config", fs::copy_options::overwrite_existing, ec);
  if (ec) return ErrnoError("copying the config", ec.value()).WithContext(ctx);
  const auto start = std::chrono::steady_clock::now();
  const std::string log = t.objdir + "/prepare.log";
  auto argv = Make(t);
  for (const char* target : {"olddefconfig", "prepare", "modules_prepare"}) argv.push_back(target);
  HV_RETURN_IF_ERROR(RunLogged(argv, log).WithContext(ctx));
  // Modpost needs vmlinux's exports (and their CRCs, for __versions) to link the module.
  if (!source.module_symvers.empty()) {
    fs::copy_file(source.module_symvers, t.objdir + "/Module.symvers", fs::copy_options::overwrite_existing, ec);
    if (ec) return ErrnoError("copying Module.symvers", ec.value()).WithContext(ctx);
  }
  t.prepare_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::ofstream(stamp) << t.prepare_seconds << "\n";
  return t;
}

Result<std::vector<std::string>> FilesOfDiff(const std::string& diff_text) {
  std::vector<std::string> files;
  std::istringstream in(diff_text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("+++ ", 0) != 0) continue;
    std::string p = line.substr(4);
    if (auto tab = p.find('\t'); tab != std::string::npos) p.resize(tab);
    if (p == "/dev/null") continue;
    if (auto slash = p.find('/'); slash != std::string::npos) p = p.substr(slash + 1);  // -p1
    if (p.find("..") != std::string::npos || p.empty() || p[0] == '/') {
      return InvalidArgument("the diff touches '" + p + "', outside the source tree");
    }
    if (p.size() < 3 || p.substr(p.size() - 2) != ".c") {
      return InvalidArgument("the diff changes '" + p + "', which is not a C source file")
          .WithHint("a header change may change struct layouts or many objects; hvpatch build takes "
                    "fixes to .c files");
    }
    if (std::find(files.begin(), files.end(), p) == files.end()) files.push_back(p);
  }
  if (files.empty()) return InvalidArgument("the diff touches no file (no '+++ b/PATH' line)");
  return files;
}

Result<std::vector<std::vector<std::uint8_t>>> BuildObjects(const PreparedTree& tree,
                                                            const std::vector<std::string>& objects,
                                                            const std::string& log) {
  auto argv = Make(tree);
  argv.push_back("KCFLAGS=-ffunction-sections -fdata-sections");
  for (const auto& o : objects) argv.push_back(o);
  // Force a rebuild: the same object is built before and after the diff in one tree.
  for (const auto& o : objects) {
    std::error_code ec;
    fs::remove(tree.objdir + "/" + o, ec);
  }
  HV_RETURN_IF_ERROR(RunLogged(argv, log).WithContext("building " + std::to_string(objects.size()) + " object(s)"));
  std::vector<std::vector<std::uint8_t>> out;
  for (const auto& o : objects) {
    HV_ASSIGN_OR_RETURN(std::string bytes, ReadText(tree.objdir + "/" + o));
    out.emplace_back(bytes.begin(), bytes.end());
  }
  return out;
}

Status ApplyDiff(const PreparedTree& tree, const std::string& diff_path, bool reverse, const std::string& log) {
  std::vector<std::string> argv = {"patch", "-p1", "--batch", "-s", "--no-backup-if-mismatch", "-d",
                                   tree.source.source_dir, "-i", fs::absolute(diff_path).string()};
  argv.push_back(reverse ? "-R" : "-N");
  const std::string what = std::string(reverse ? "reverting" : "applying") + " '" + diff_path + "'";
  // A diff that does not fit would be applied in part (the hunks that fit): try it first, so the
  // shared tree is either patched whole or not touched.
  std::vector<std::string> dry = argv;
  dry.push_back("--dry-run");
  HV_RETURN_IF_ERROR(RunLogged(dry, log)
                         .WithContext(what)
                         .WithHint("the diff does not fit this kernel source (see the log); nothing was changed"));
  return RunLogged(argv, log).WithContext(what);
}

Result<std::string> StructLayouts(const std::string& object) {
  auto r = Capture("pahole " + Sh(object) + " 2>/dev/null");
  if (!r.ok()) return r.status().WithContext("reading the struct layouts of '" + object + "'").WithHint("install dwarves");
  return r;
}

Status BuildModule(const PreparedTree& tree, const std::string& dir, const std::string& log) {
  auto argv = Make(tree);
  argv.push_back("M=" + fs::absolute(dir).string());
  argv.push_back("KBUILD_MODPOST_WARN=1");
  argv.push_back("modules");
  return RunLogged(argv, log).WithContext("linking the module with kbuild");
}

}  // namespace hv::builder
