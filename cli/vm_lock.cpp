#include "cli/vm_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

namespace hv::cli {

Result<VmLock> VmLock::Acquire(const std::string& path, const std::string& vm_name,
                               std::chrono::milliseconds wait) {
  const auto slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    const std::string dir = path.substr(0, slash);
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoError("creating state directory '" + dir + "'", errno);
    }
  }
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("opening lock '" + path + "'", errno);
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      int err = errno;
      close(fd);
      return ErrnoError("locking '" + path + "'", err);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      char buf[32] = {};
      ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
      close(fd);
      std::string holder = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "unknown";
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      return Busy("VM '" + vm_name + "' is locked by hvpatch pid " + holder)
          .WithHint("another hvpatch is working on this VM; retry when it ends (lock " + path + ")");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    int err = errno;
    close(fd);
    return ErrnoError("writing lock '" + path + "'", err);
  }
  return VmLock(fd);
}

VmLock::~VmLock() {
  if (fd_ >= 0) close(fd_);  // closing drops the flock
}

}  // namespace hv::cli
