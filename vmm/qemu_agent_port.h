// Finds the host end of a guest's virtio-serial port by its name, through QMP alone:
// QOM lists the virtserialport devices (with and without ids), each has a `name` and a `chardev`
// property, and `query-chardev` gives that chardev's host socket ("unix:PATH,server=on").
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"
#include "qmp/qmp_channel.h"

namespace hv::vmm {

// The unix socket path of the chardev behind the port called `port_name`.
// Errors: kNotFound (no such port, or its chardev is not a unix socket), QMP errors.
Result<std::string> FindPortSocket(qmp::QmpChannel& qmp, std::string_view port_name);

}  // namespace hv::vmm
