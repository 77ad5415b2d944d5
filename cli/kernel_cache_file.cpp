#include "cli/kernel_cache_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace hv::cli {
namespace {

Status CheckKey(const std::string& key) {
  if (key.empty() || key.size() > 200) return InvalidArgument("cache key of " + std::to_string(key.size()) + " characters");
  for (char c : key) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-')) {
      return InvalidArgument("cache key '" + key + "' has a character other than [0-9a-zA-Z-]");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> KernelCacheFile::Load(const std::string& key) {
  HV_RETURN_IF_ERROR(CheckKey(key));
  const std::string path = dir_ + "/" + key + ".bin";
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("no cache entry '" + path + "'");
    return ErrnoError("opening '" + path + "'", errno);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) > patcher::kMaxKallsymsCacheBytes) {
    close(fd);
    return InvalidArgument("cache entry '" + path + "' is not a regular file under " +
                           std::to_string(patcher::kMaxKallsymsCacheBytes) + " bytes");
  }
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      close(fd);
      return ErrnoError("reading '" + path + "'", err);
    }
    done += static_cast<std::size_t>(n);
  }
  close(fd);
  return out;
}

Status KernelCacheFile::Save(const std::string& key, std::string_view bytes) {
  HV_RETURN_IF_ERROR(CheckKey(key));
  if (mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoError("creating '" + dir_ + "'", errno);
  const std::string path = dir_ + "/" + key + ".bin";
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoError("creating '" + tmp + "'", errno);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      close(fd);
      unlink(tmp.c_str());
      return ErrnoError("writing '" + tmp + "'", err);
    }
    done += static_cast<std::size_t>(n);
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    unlink(tmp.c_str());
    return ErrnoError("renaming '" + tmp + "'", err);
  }
  return Status::Ok();
}

}  // namespace hv::cli
