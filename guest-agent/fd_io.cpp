#include "guest-agent/fd_io.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

namespace hv::agent {

Deadline Deadline::In(int timeout_ms) {
  Deadline d;
  d.infinite_ = false;
  d.at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms);
  return d;
}

bool Deadline::expired() const {
  return !infinite_ && std::chrono::steady_clock::now() >= at_;
}

int Deadline::RemainingMs() const {
  if (infinite_) return -1;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      at_ - std::chrono::steady_clock::now());
  if (left.count() <= 0) return 0;
  if (left.count() >= INT_MAX) return INT_MAX;
  return static_cast<int>(left.count());
}

Status SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoError("setting O_NONBLOCK", errno);
  }
  return Status::Ok();
}

namespace {

// Waits for `events` on fd. Returns the revents, 0 on timeout.
Result<short> WaitFor(int fd, short events, const Deadline& deadline) {
  for (;;) {
    struct pollfd p = {fd, events, 0};
    const int n = poll(&p, 1, deadline.RemainingMs());
    if (n > 0) return p.revents;
    if (n == 0) return static_cast<short>(0);
    if (errno != EINTR) return ErrnoError("poll", errno);
  }
}

}  // namespace

Result<size_t> ReadSome(int fd, void* buf, size_t size, const Deadline& deadline) {
  for (;;) {
    const ssize_t n = read(fd, buf, size);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return ErrnoError("read", errno);
    HV_ASSIGN_OR_RETURN(short revents, WaitFor(fd, POLLIN, deadline));
    if (revents == 0) return DeadlineExceeded("no data within the time limit");
    if (revents & POLLNVAL) return Status(Code::kIo, "read: bad file descriptor");
    // POLLIN, POLLHUP or POLLERR: the next read reports data, EOF or the error.
  }
}

Status WriteAll(int fd, const void* buf, size_t size, const Deadline& deadline,
                const HangupWait& on_hangup) {
  const char* p = static_cast<const char*>(buf);
  bool is_socket = true;
  while (size > 0) {
    ssize_t n = is_socket ? send(fd, p, size, MSG_NOSIGNAL) : write(fd, p, size);
    if (n < 0 && is_socket && errno == ENOTSOCK) {
      is_socket = false;
      continue;
    }
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      return Unavailable("peer closed the connection");
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return ErrnoError("write", errno);
    HV_ASSIGN_OR_RETURN(short revents, WaitFor(fd, POLLOUT, deadline));
    if (revents == 0) return DeadlineExceeded("peer did not accept data within the time limit");
    if (revents & POLLNVAL) return Status(Code::kIo, "write: bad file descriptor");
    if ((revents & (POLLERR | POLLHUP)) && !(revents & POLLOUT)) {
      if ((revents & POLLHUP) && on_hangup && on_hangup(deadline)) continue;
      return Unavailable("peer closed the connection");
    }
  }
  return Status::Ok();
}

}  // namespace hv::agent
