#include "guest-agent/channel.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "guest-agent/fd_io.h"

namespace hv::agent {

namespace fs = std::filesystem;

namespace {

constexpr auto kRetryPause = std::chrono::milliseconds(250);
constexpr auto kPortSearchPause = std::chrono::seconds(1);

// Asks the kernel for SIGIO on `fd`, kept blocked so it never interrupts or kills the agent and
// stays pending for sigtimedwait (WaitForSigio). False if the descriptor does not support it.
bool RequestSigio(int fd) {
  sigset_t io;
  sigemptyset(&io);
  sigaddset(&io, SIGIO);
  // Blocked before O_ASYNC is set: SIGIO's default action ends the process. The agent is
  // single-threaded, so this thread's mask is the one the signal meets.
  if (pthread_sigmask(SIG_BLOCK, &io, nullptr) != 0) return false;
  const int flags = fcntl(fd, F_GETFL);
  return flags >= 0 && fcntl(fd, F_SETOWN, getpid()) == 0 && fcntl(fd, F_SETFL, flags | O_ASYNC) == 0;
}

// Waits up to `d` for a (blocked, pending) SIGIO; returns early when one comes or is pending.
void WaitForSigio(std::chrono::milliseconds d) {
  sigset_t io;
  sigemptyset(&io);
  sigaddset(&io, SIGIO);
  const struct timespec ts = {static_cast<time_t>(d.count() / 1000), static_cast<long>(d.count() % 1000) * 1000000L};
  (void)sigtimedwait(&io, nullptr, &ts);  // EAGAIN on timeout, EINTR: the caller polls again either way
}

}  // namespace

// ---- UnixSocketChannel ----

Result<std::unique_ptr<UnixSocketChannel>> UnixSocketChannel::Listen(const std::string& path) {
  // Bound and listening under a temporary name, then renamed into place: a client that sees
  // the path can connect at once (bind creates the file before listen, and a connect in
  // between is refused).
  const std::string tmp = path + ".new";
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || tmp.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument("unix socket path '" + path + "' is empty or too long");
  }
  std::memcpy(addr.sun_path, tmp.c_str(), tmp.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoError("socket", errno);
  unlink(tmp.c_str());
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) < 0 || listen(fd, 4) < 0 ||
      rename(tmp.c_str(), path.c_str()) < 0) {
    const int err = errno;
    close(fd);
    unlink(tmp.c_str());
    return ErrnoError("listening on '" + path + "'", err);
  }
  return std::unique_ptr<UnixSocketChannel>(new UnixSocketChannel(path, fd));
}

UnixSocketChannel::~UnixSocketChannel() {
  EndSession(SessionEnd::kFailed);
  if (listen_fd_ >= 0) close(listen_fd_);
}

Result<int> UnixSocketChannel::WaitForHost() {
  EndSession(SessionEnd::kFailed);
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      session_fd_ = fd;
      return fd;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    return ErrnoError("accept on '" + path_ + "'", errno);
  }
}

bool UnixSocketChannel::EndSession(SessionEnd) {
  if (session_fd_ >= 0) close(session_fd_);
  session_fd_ = -1;
  return false;  // the next connection is a new stream
}

// ---- VirtioSerialChannel ----

VirtioSerialChannel::~VirtioSerialChannel() { Close(); }

std::string VirtioSerialChannel::Describe() const {
  return "virtio-serial port '" + port_name_ + "'" + (device_.empty() ? "" : " at " + device_);
}

Result<std::string> VirtioSerialChannel::FindPort(const std::string& sys_root,
                                                  const std::string& dev_root,
                                                  const std::string& port_name) {
  std::error_code ec;
  const fs::path dir = fs::path(sys_root) / "class" / "virtio-ports";
  fs::directory_iterator it(dir, ec), end;
  if (ec) return NotFound("no virtio-serial ports ('" + dir.string() + "': " + ec.message() + ")");
  // A guest has a handful of ports; the bound only guards against a pathological sysfs.
  for (int n = 0; it != end && n < 4096; it.increment(ec), ++n) {
    if (ec) break;
    std::ifstream in(it->path() / "name");
    std::string name;
    if (in && std::getline(in, name) && name == port_name) {
      return (fs::path(dev_root) / it->path().filename()).string();
    }
  }
  return NotFound("no virtio-serial port named '" + port_name + "'");
}

void IdleWait(std::chrono::milliseconds d) {
  const auto until = std::chrono::steady_clock::now() + d;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    poll(nullptr, 0, static_cast<int>(left.count()));
  }
}

Result<int> VirtioSerialChannel::WaitForHost() {
  for (;;) {
    if (fd_ < 0) {
      auto device = FindPort(sys_root_, dev_root_, port_name_);
      if (!device.ok()) {
        if (!logged_wait_) std::fprintf(stderr, "hvpatch-agent: waiting: %s\n", device.status().message().c_str());
        logged_wait_ = true;
        IdleWait(kPortSearchPause);
        continue;
      }
      device_ = *device;
      fd_ = open(device_.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
      if (fd_ < 0) {
        // EBUSY: a previous agent still holds the port (a port has one opener at a time).
        if (!logged_wait_) std::fprintf(stderr, "hvpatch-agent: opening '%s': %s\n", device_.c_str(), std::strerror(errno));
        logged_wait_ = true;
        IdleWait(kPortSearchPause);
        continue;
      }
      logged_wait_ = false;
      sigio_ = RequestSigio(fd_);
    }
    struct pollfd p = {fd_, POLLIN, 0};
    const int n = poll(&p, 1, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll on '" + device_ + "'", errno);
    }
    if (p.revents & POLLNVAL) {
      Close();
      continue;
    }
    if (p.revents & POLLHUP) {
      // The host side is not connected; QEMU sends the port-open event when it is, and the
      // driver turns that event into a SIGIO (virtio_console.c, handle_control_message,
      // VIRTIO_CONSOLE_PORT_OPEN: send_sigio_to_port). Waiting for that signal answers a host
      // at once instead of up to kRetryPause later (under TCG, a fixed sleep cost every
      // hvpatch command 125 ms on average). kRetryPause stays as the bound: the poll decides.
      WaitForHostSignal(kRetryPause);
      continue;
    }
    if (p.revents & POLLIN) return fd_;
    IdleWait(kRetryPause);
  }
}

bool VirtioSerialChannel::EndSession(SessionEnd why) {
  if (why == SessionEnd::kHostLeft && fd_ >= 0) return true;  // see the class comment
  Close();
  return false;
}

bool VirtioSerialChannel::WaitOutHangup(const Deadline& deadline) {
  const int left = deadline.RemainingMs();
  if (left == 0 || fd_ < 0) return false;
  WaitForHostSignal(left < 0 ? kRetryPause : std::min(kRetryPause, std::chrono::milliseconds(left)));
  return true;
}

void VirtioSerialChannel::WaitForHostSignal(std::chrono::milliseconds d) const {
  if (sigio_) {
    WaitForSigio(d);
  } else {
    IdleWait(d);
  }
}

void VirtioSerialChannel::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

}  // namespace hv::agent
