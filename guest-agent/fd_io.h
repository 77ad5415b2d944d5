// Reads and writes on a non-blocking file descriptor with a deadline, so that a silent or stuck
// peer (agent or host) can never hang the caller.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>

#include "base/status.h"

namespace hv::agent {

// A point on the monotonic clock. Infinite() never expires.
class Deadline {
 public:
  static Deadline In(int timeout_ms);
  static Deadline Infinite() { return Deadline(); }

  bool expired() const;
  // Milliseconds left, clamped to [0, INT_MAX]; -1 for an infinite deadline (poll's "forever").
  int RemainingMs() const;

 private:
  Deadline() = default;
  bool infinite_ = true;
  std::chrono::steady_clock::time_point at_{};
};

// Sets O_NONBLOCK. kIo on failure.
Status SetNonBlocking(int fd);

// Reads at most `size` bytes once some are available. Returns 0 at end of file (for a virtio-serial
// port: the host side is not connected). kDeadlineExceeded when nothing arrived in time, kIo on a
// read error.
Result<size_t> ReadSome(int fd, void* buf, size_t size, const Deadline& deadline);

// Asked when the fd reports a hangup and cannot take data. Returns true, after waiting as it sees
// fit, to try the write again: a virtio-serial port hangs up while its host reconnects, and the
// write goes on to the next host. Returns false to give up.
using HangupWait = std::function<bool(const Deadline&)>;

// Writes all `size` bytes. kDeadlineExceeded when the peer stopped draining in time (part of the
// data may have been written), kUnavailable when the peer is gone (EPIPE, ECONNRESET, or a hangup
// that `on_hangup` does not wait out), kIo otherwise. Never raises SIGPIPE on a socket.
Status WriteAll(int fd, const void* buf, size_t size, const Deadline& deadline,
                const HangupWait& on_hangup = nullptr);

}  // namespace hv::agent
