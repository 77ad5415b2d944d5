#include "guest-agent/livepatch_tree.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

namespace hv::agent {

namespace fs = std::filesystem;
namespace pb = ::hvpatch::agent;

namespace {

constexpr int kMaxPatches = 256;
constexpr int kMaxObjects = 256;
constexpr int kMaxFunctions = 4096;
// MODULE_NAME_LEN is 56 and KSYM_NAME_LEN 512 in Linux 6.1.
constexpr size_t kMaxPatchName = 64;
constexpr size_t kMaxObjectName = 64;
constexpr size_t kMaxFunctionName = 512;
// Staging directories start with '.', which no patch name may.
constexpr std::string_view kStagingPrefix = ".staging-";

// Reads a small sysfs attribute and parses it as a decimal integer; `fallback` when absent or odd.
long ReadNumber(const fs::path& path, long fallback) {
  std::ifstream in(path);
  std::string text;
  if (!in || !std::getline(in, text)) return fallback;
  long v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  return ec == std::errc() ? v : fallback;
}

// Lists the subdirectories of `dir`, sorted, at most `limit`.
std::vector<std::string> SubDirectories(const fs::path& dir, int limit) {
  std::vector<std::string> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  for (int seen = 0; !ec && it != end && seen < 4 * limit; it.increment(ec), ++seen) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) out.push_back(it->path().filename().string());
  }
  std::sort(out.begin(), out.end());
  if (out.size() > static_cast<size_t>(limit)) out.resize(static_cast<size_t>(limit));
  return out;
}

Status WriteAttribute(const fs::path& path, std::string_view text, mode_t mode) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("creating '" + path.string() + "'", errno);
  const ssize_t n = write(fd, text.data(), text.size());
  const int err = errno;
  if (fchmod(fd, mode) < 0 || n != static_cast<ssize_t>(text.size())) {
    close(fd);
    return ErrnoError("writing '" + path.string() + "'", n < 0 ? err : EIO);
  }
  close(fd);
  return Status::Ok();
}

Status MakeDir(const fs::path& path) {
  if (mkdir(path.c_str(), 0755) < 0 && errno != EEXIST) {
    return ErrnoError("creating directory '" + path.string() + "'", errno);
  }
  return Status::Ok();
}

std::string Flag(bool b) { return b ? "1\n" : "0\n"; }

}  // namespace

SysfsAbi SysfsAbi::ForRelease(std::string_view release) {
  int major = 0, minor = 0;
  const char* p = release.data();
  const char* end = release.data() + release.size();
  auto r1 = std::from_chars(p, end, major);
  bool ok = r1.ec == std::errc() && r1.ptr < end && *r1.ptr == '.';
  if (ok) ok = std::from_chars(r1.ptr + 1, end, minor).ec == std::errc();
  SysfsAbi abi;
  if (!ok) major = 6, minor = 1;
  const auto at_least = [&](int ma, int mi) { return major > ma || (major == ma && minor >= mi); };
  abi.patched = at_least(6, 1);
  abi.replace = at_least(6, 11);
  abi.stack_order = at_least(6, 13);
  abi.name = abi.stack_order ? "6.13" : abi.replace ? "6.11" : abi.patched ? "6.1" : "3.19";
  return abi;
}

Result<pb::LivepatchState> ReadLivepatchSysfs(const std::string& dir) {
  pb::LivepatchState state;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    state.set_available(false);
    return state;
  }
  state.set_available(true);
  for (const std::string& patch_name : SubDirectories(dir, kMaxPatches)) {
    const fs::path pdir = fs::path(dir) / patch_name;
    pb::Patch* patch = state.add_patches();
    patch->set_name(patch_name);
    patch->set_enabled(ReadNumber(pdir / "enabled", 0) != 0);
    patch->set_transition(ReadNumber(pdir / "transition", 0) != 0);
    patch->set_replace(ReadNumber(pdir / "replace", 0) != 0);
    patch->set_stack_order(static_cast<uint32_t>(std::max(0L, ReadNumber(pdir / "stack_order", 0))));
    for (const std::string& object_name : SubDirectories(pdir, kMaxObjects)) {
      const fs::path odir = pdir / object_name;
      pb::Object* object = patch->add_objects();
      object->set_name(object_name);
      // Before 6.1 there is no `patched`: a listed object of an enabled patch is patched.
      object->set_patched(ReadNumber(odir / "patched", patch->enabled() ? 1 : 0) != 0);
      for (const std::string& entry : SubDirectories(odir, kMaxFunctions)) {
        // "<function>,<sympos>"
        const size_t comma = entry.rfind(',');
        pb::Function* f = object->add_functions();
        f->set_name(comma == std::string::npos ? entry : entry.substr(0, comma));
        uint32_t sympos = 0;
        if (comma != std::string::npos) {
          std::from_chars(entry.data() + comma + 1, entry.data() + entry.size(), sympos);
        }
        f->set_sympos(sympos);
      }
    }
  }
  return state;
}

Status CheckTreeName(std::string_view what, std::string_view name, size_t max_len) {
  if (name.empty() || name.size() > max_len) {
    return InvalidArgument(std::string(what) + " name of " + std::to_string(name.size()) +
                           " characters (1.." + std::to_string(max_len) + " allowed)");
  }
  if (name == "." || name == ".." || name.front() == '.') {
    return InvalidArgument(std::string(what) + " name '" + std::string(name) + "' starts with '.'");
  }
  for (char c : name) {
    if (c <= ' ' || c > '~' || c == '/') {
      return InvalidArgument(std::string(what) + " name '" + std::string(name.substr(0, 64)) +
                             "' has a character that is not allowed");
    }
  }
  return Status::Ok();
}

Status ParityTree::WritePatch(const std::string& dir, const pb::Patch& patch) const {
  const fs::path pdir(dir);
  HV_RETURN_IF_ERROR(MakeDir(pdir));
  HV_RETURN_IF_ERROR(WriteAttribute(pdir / "enabled", Flag(patch.enabled()), 0644));
  HV_RETURN_IF_ERROR(WriteAttribute(pdir / "transition", Flag(patch.transition()), 0444));
  HV_RETURN_IF_ERROR(WriteAttribute(pdir / "force", "", 0200));
  if (abi_.replace) HV_RETURN_IF_ERROR(WriteAttribute(pdir / "replace", Flag(patch.replace()), 0444));
  if (abi_.stack_order) {
    HV_RETURN_IF_ERROR(
        WriteAttribute(pdir / "stack_order", std::to_string(patch.stack_order()) + "\n", 0444));
  }
  for (const pb::Object& object : patch.objects()) {
    const fs::path odir = pdir / object.name();
    HV_RETURN_IF_ERROR(MakeDir(odir));
    if (abi_.patched) HV_RETURN_IF_ERROR(WriteAttribute(odir / "patched", Flag(object.patched()), 0444));
    for (const pb::Function& f : object.functions()) {
      HV_RETURN_IF_ERROR(MakeDir(odir / (f.name() + "," + std::to_string(f.sympos()))));
    }
  }
  return Status::Ok();
}

Status ParityTree::Publish(const google::protobuf::RepeatedPtrField<pb::Patch>& patches) {
  if (patches.size() > kMaxPatches) {
    return InvalidArgument(std::to_string(patches.size()) + " patches (at most " +
                           std::to_string(kMaxPatches) + ")");
  }
  std::set<std::string> names;
  for (const pb::Patch& patch : patches) {
    HV_RETURN_IF_ERROR(CheckTreeName("patch", patch.name(), kMaxPatchName));
    if (!names.insert(patch.name()).second) {
      return InvalidArgument("patch '" + patch.name() + "' is listed twice");
    }
    if (patch.objects_size() > kMaxObjects) {
      return InvalidArgument("patch '" + patch.name() + "' has " +
                             std::to_string(patch.objects_size()) + " objects");
    }
    std::set<std::string> objects;
    for (const pb::Object& object : patch.objects()) {
      HV_RETURN_IF_ERROR(CheckTreeName("object", object.name(), kMaxObjectName)
                             .WithContext("patch '" + patch.name() + "'"));
      if (object.name() == "enabled" || object.name() == "transition" || object.name() == "force" ||
          object.name() == "replace" || object.name() == "stack_order" ||
          !objects.insert(object.name()).second) {
        return InvalidArgument("patch '" + patch.name() + "': object name '" + object.name() +
                               "' is a duplicate or an attribute name");
      }
      if (object.functions_size() > kMaxFunctions) {
        return InvalidArgument("patch '" + patch.name() + "' object '" + object.name() + "' has " +
                               std::to_string(object.functions_size()) + " functions");
      }
      for (const pb::Function& f : object.functions()) {
        HV_RETURN_IF_ERROR(CheckTreeName("function", f.name(), kMaxFunctionName)
                               .WithContext("patch '" + patch.name() + "' object '" + object.name() + "'"));
        if (f.name().find(',') != std::string::npos || f.name() == "patched") {
          return InvalidArgument("patch '" + patch.name() + "': function name '" + f.name() +
                                 "' is not a symbol name");
        }
      }
    }
  }

  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) return Status(Code::kIo, "creating '" + root_ + "': " + ec.message());

  for (const pb::Patch& patch : patches) {
    const std::string final_dir = root_ + "/" + patch.name();
    const std::string staging = root_ + "/" + std::string(kStagingPrefix) + patch.name();
    fs::remove_all(staging, ec);
    HV_RETURN_IF_ERROR(WritePatch(staging, patch).WithContext("patch '" + patch.name() + "'"));
    // Swap the finished directory in, so a reader sees the old tree or the new one.
    // RENAME_EXCHANGE needs both to exist (tmpfs supports it); otherwise a plain rename, after
    // removing an old directory that a rename cannot replace.
    if (renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      fs::remove_all(staging, ec);
      continue;
    }
    if (errno != ENOENT) fs::remove_all(final_dir, ec);
    if (rename(staging.c_str(), final_dir.c_str()) < 0) {
      return ErrnoError("renaming '" + staging + "' to '" + final_dir + "'", errno);
    }
  }

  // Remove what is not listed: reverted patches and leftovers of an interrupted publish.
  std::vector<fs::path> stale;
  fs::directory_iterator it(root_, ec), end;
  for (int seen = 0; !ec && it != end && seen < 4096; it.increment(ec), ++seen) {
    if (!names.count(it->path().filename().string())) stale.push_back(it->path());
  }
  for (const fs::path& p : stale) {
    fs::remove_all(p, ec);
    if (ec) return Status(Code::kIo, "removing '" + p.string() + "': " + ec.message());
  }
  return Status::Ok();
}

}  // namespace hv::agent
