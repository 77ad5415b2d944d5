// Finds the host end of a guest's virtio-serial port by its name, through QMP alone:
// QOM lists the virtserialport devices (with and without ids), each has a `name` and a `chardev`
// property, and `query-chardev` gives that chardev's host socket ("unix:PATH,server=on").
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"
#include "qmp/qmp_client.h"

namespace hv::vmm {

// The host end of a port and whether the guest holds it open.
struct PortSocket {
  std::string path;  // the chardev's unix socket
  // query-chardev's `frontend-open`: for a virtserialport QEMU sets it when a guest process
  // opens the port and clears it when the last one closes it (virtio-serial's guest_connected).
  // False means no agent is running in the guest: nobody would answer a connection.
  bool guest_open = false;
};

// The unix socket path of the chardev behind the port called `port_name`.
// Errors: kNotFound (no such port, or its chardev is not a unix socket), QMP errors.
Result<PortSocket> FindPortSocket(qmp::QmpClient& qmp, std::string_view port_name);

}  // namespace hv::vmm
