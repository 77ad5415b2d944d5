#include "guest-agent/channel.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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

}  // namespace

// ---- UnixSocketChannel ----

Result<std::unique_ptr<UnixSocketChannel>> UnixSocketChannel::Listen(const std::string& path) {
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument("unix socket path '" + path + "' is empty or too long");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoError("socket", errno);
  unlink(path.c_str());
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) < 0 || listen(fd, 4) < 0) {
    const int err = errno;
    close(fd);
    return ErrnoError("listening on '" + path + "'", err);
  }
  return std::unique_ptr<UnixSocketChannel>(new UnixSocketChannel(path, fd));
}

UnixSocketChannel::~UnixSocketChannel() {
  EndSession();
  if (listen_fd_ >= 0) close(listen_fd_);
}

Result<int> UnixSocketChannel::WaitForHost() {
  EndSession();
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

void UnixSocketChannel::EndSession() {
  if (session_fd_ >= 0) close(session_fd_);
  session_fd_ = -1;
}

// ---- VirtioSerialChannel ----

VirtioSerialChannel::~VirtioSerialChannel() { EndSession(); }

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
    }
    struct pollfd p = {fd_, POLLIN, 0};
    const int n = poll(&p, 1, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll on '" + device_ + "'", errno);
    }
    if (p.revents & POLLNVAL) {
      EndSession();
      continue;
    }
    if (p.revents & POLLHUP) {
      // The host side is not connected; QEMU sends the port-open event when it is.
      IdleWait(kRetryPause);
      continue;
    }
    if (p.revents & POLLIN) return fd_;
    IdleWait(kRetryPause);
  }
}

void VirtioSerialChannel::EndSession() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

}  // namespace hv::agent
