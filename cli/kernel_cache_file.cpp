#include "cli/kernel_cache_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "cli/replace_file.h"

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
  return ReplaceFile(dir_ + "/" + key + ".bin", bytes);
}

}  // namespace hv::cli
