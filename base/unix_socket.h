// Connecting to a unix stream socket: QMP, the gdbstub, the agent's chardev, the test channel.
#pragma once

#include <string>

#include "base/status.h"

namespace hv {

// Connects to `path` and returns the descriptor (close-on-exec). QEMU's chardev sockets serve one
// client at a time and answer further connects with EAGAIN while their backlog is full: that is
// retried until `timeout_ms`. With `nonblocking` the descriptor is O_NONBLOCK.
// Errors: kInvalidArgument for an empty path or one too long for sockaddr_un ("socket path of N
// bytes"); kUnavailable "cannot connect: <strerror>" (ENOENT, ECONNREFUSED, EAGAIN after the wait);
// kIo when socket(2) fails. Callers prepend which socket it was.
Result<int> ConnectUnixSocket(const std::string& path, int timeout_ms, bool nonblocking = false);

}  // namespace hv
