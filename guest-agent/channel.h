// The agent's transport, behind one interface as qemu-ga's GAChannel: the daemon serves sessions on
// whatever Channel main() picked, so the real binary runs in tests over a unix socket.
#pragma once

#include <chrono>

#include <memory>
#include <string>

#include "base/status.h"
#include "guest-agent/fd_io.h"

namespace hv::agent {

// Waits `d` without sitting in do_nanosleep: poll(2) with no descriptors sleeps in
// do_sys_poll instead. hvpatch refuses to switch a function while any task is inside it, so an
// agent idling in nanosleep would block a host-side patch of do_nanosleep (or its callers) for as
// long as no host is connected.
void IdleWait(std::chrono::milliseconds d);

enum class SessionEnd { kHostLeft, kFailed };

class Channel {
 public:
  virtual ~Channel() = default;

  // Blocks until a host may be talking to us and returns the non-blocking fd of that session.
  // Transient conditions (port not there yet, host not connected) are waited out inside; an error
  // means the channel itself is broken (the caller logs it and retries later).
  virtual Result<int> WaitForHost() = 0;
  // The session ended: the host left (its fd read end of file) or the fd failed. Returns true when
  // the next WaitForHost continues the same byte stream, so bytes read but not yet framed stay
  // valid; false when it starts a new stream.
  virtual bool EndSession(SessionEnd why) = 0;
  // The session's fd hung up in the middle of a write. Returns true, after a bounded wait, when the
  // write should go on (the host may be reconnecting), false when the session is over.
  virtual bool WaitOutHangup(const Deadline& /*deadline*/) { return false; }
  // For logs: "virtio-serial port /dev/vport1p1", "unix socket /tmp/x".
  virtual std::string Describe() const = 0;
};

// A listening unix socket; one host connection is served at a time.
class UnixSocketChannel : public Channel {
 public:
  // Removes a stale socket file at `path`, binds and listens. kIo on failure.
  static Result<std::unique_ptr<UnixSocketChannel>> Listen(const std::string& path);
  ~UnixSocketChannel() override;

  Result<int> WaitForHost() override;
  bool EndSession(SessionEnd why) override;  // closes the connection: false
  std::string Describe() const override { return "unix socket " + path_; }

 private:
  explicit UnixSocketChannel(std::string path, int listen_fd)
      : path_(std::move(path)), listen_fd_(listen_fd) {}

  std::string path_;
  int listen_fd_ = -1;
  int session_fd_ = -1;
};

// The virtio-serial port named `port_name` (org.hvpatch.agent.0), found through
// <sys_root>/class/virtio-ports/*/name and opened as <dev_root>/<vportNpM>. There is no udev in the
// test initramfs, hence no /dev/virtio-ports/ symlinks.
//
// A port's read returns 0 and poll reports POLLHUP while the host side is not connected
// (drivers/char/virtio_console.c: will_read_block / port_fops_poll), so waiting for the host is a
// wait-and-recheck loop, never a busy one: the wait ends on the SIGIO the driver sends when the
// host connects (the port is opened O_ASYNC, SIGIO blocked and taken with sigtimedwait), or after
// 250 ms where no SIGIO comes.
//
// The port stays open when a host leaves. Closing it would throw away input the next host has
// already sent: the driver discards a port's buffered input on release and drops input that
// arrives while the port is closed (port_fops_release, in_intr). Its control messages (host
// connected or not) and its data also travel on different virtqueues, so the next host's first
// bytes can arrive before the old host's disconnect is seen. A close in that window lost a
// request the host had sent after a successful sync, and the host waited out its timeout.
class VirtioSerialChannel : public Channel {
 public:
  VirtioSerialChannel(std::string port_name, std::string sys_root, std::string dev_root)
      : port_name_(std::move(port_name)), sys_root_(std::move(sys_root)), dev_root_(std::move(dev_root)) {}
  ~VirtioSerialChannel() override;

  Result<int> WaitForHost() override;
  // kHostLeft keeps the port open (true); kFailed closes it, to be found and opened again.
  bool EndSession(SessionEnd why) override;
  // A write that meets a hangup waits for the host (and then goes to the next host, which skips
  // what it did not ask for while it syncs): the hangup may be the old host's disconnect, seen
  // after the next host's sync was already read.
  bool WaitOutHangup(const Deadline& deadline) override;
  std::string Describe() const override;

  // Returns the device path of the port named `port_name`, or kNotFound.
  static Result<std::string> FindPort(const std::string& sys_root, const std::string& dev_root,
                                      const std::string& port_name);

 private:
  void Close();
  // Waits up to `d`, less if the host connects (SIGIO).
  void WaitForHostSignal(std::chrono::milliseconds d) const;

  std::string port_name_;
  std::string sys_root_;
  std::string dev_root_;
  std::string device_;
  int fd_ = -1;
  bool logged_wait_ = false;
  bool sigio_ = false;  // fd_ raises SIGIO on the host's connect (see WaitForHost)
};

}  // namespace hv::agent
