#include "cli/kernel_cache_file.h"

#include <fcntl.h>
#include <sys/mman.h>
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

// An open entry file, checked to be a regular file within the size bound.
Result<int> OpenEntry(const std::string& path, std::uint64_t* size) {
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
  *size = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

class MappedEntry : public patcher::KernelCacheStore::Entry {
 public:
  MappedEntry(void* at, std::size_t size) : at_(at), size_(size) {}
  ~MappedEntry() override { munmap(at_, size_); }
  std::string_view bytes() const override { return std::string_view(static_cast<const char*>(at_), size_); }

 private:
  void* at_;
  std::size_t size_;
};

}  // namespace

Result<std::shared_ptr<const patcher::KernelCacheStore::Entry>> KernelCacheFile::Map(const std::string& key) {
  HV_RETURN_IF_ERROR(CheckKey(key));
  const std::string path = dir_ + "/" + key + ".bin";
  std::uint64_t size = 0;
  HV_ASSIGN_OR_RETURN(const int fd, OpenEntry(path, &size));
  if (size == 0) {
    close(fd);
    return InvalidArgument("cache entry '" + path + "' is empty");
  }
  void* at = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  close(fd);
  if (at == MAP_FAILED) return ErrnoError("mapping '" + path + "'", err);
  return std::shared_ptr<const Entry>(std::make_shared<MappedEntry>(at, size));
}

Result<std::string> KernelCacheFile::Load(const std::string& key) {
  HV_RETURN_IF_ERROR(CheckKey(key));
  const std::string path = dir_ + "/" + key + ".bin";
  std::uint64_t size = 0;
  HV_ASSIGN_OR_RETURN(const int fd, OpenEntry(path, &size));
  std::string out(static_cast<std::size_t>(size), '\0');
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
