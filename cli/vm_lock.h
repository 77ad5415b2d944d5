// One writer per VM: an flock(2) on <state dir>/<vm>.lock, held for the whole command. The
// holder writes its pid into the file so a waiting process can name it. flock is released by the
// kernel when the holder dies (kill -9 included), so a crash never leaves a stale lock.
#pragma once

#include <chrono>
#include <string>

#include "base/status.h"

namespace hv::cli {

class VmLock {
 public:
  // Waits up to `wait` for the lock. Errors: kBusy "VM 'X' is locked by hvpatch pid N"
  // after the wait; kIo for file system errors.
  static Result<VmLock> Acquire(const std::string& path, const std::string& vm_name,
                                std::chrono::milliseconds wait);
  VmLock(VmLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  VmLock& operator=(VmLock&&) = delete;
  ~VmLock();

 private:
  explicit VmLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace hv::cli
