// QmpChannel: a way to send QMP commands to one QEMU. QEMU's own QMP socket (QmpClient) is one;
// libvirt's passthrough (virDomainQemuMonitorCommand, vmm/libvirt_monitor.h) is another, for
// domains whose QMP socket libvirtd owns. The QEMU backend of vmm::Vm works over either.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace hv::qmp {

struct QmpEvent {
  std::string name;
  nlohmann::json data;
};

// One command of a batch (QmpChannel::ExecuteAll).
struct QmpCall {
  std::string command;
  nlohmann::json arguments = nlohmann::json::object();
};

class QmpChannel {
 public:
  virtual ~QmpChannel() = default;

  // Runs `calls` in order and returns each one's result, exactly as Execute would have. A
  // channel that can pipeline sends them all before it reads the first reply: one round trip
  // to QEMU's main loop instead of one per command, which is what a command waits for on a
  // busy host. The default runs them one after another.
  virtual std::vector<Result<nlohmann::json>> ExecuteAll(const std::vector<QmpCall>& calls) {
    std::vector<Result<nlohmann::json>> out;
    for (const QmpCall& c : calls) out.push_back(Execute(c.command, c.arguments));
    return out;
  }

  // Runs `command` and returns its "return" value. Errors: the QMP error class mapped to a
  // code (see CodeForQmpClass), transport errors (kDeadlineExceeded, kIo, kUnavailable).
  virtual Result<nlohmann::json> Execute(std::string_view command,
                                         const nlohmann::json& arguments = nlohmann::json::object()) = 0;

  // Runs an HMP command and returns its text output. HMP reports many failures only in that
  // text: callers check it.
  virtual Result<std::string> Hmp(std::string_view command_line) = 0;

  // Events received so far (oldest first); the queue is emptied. A channel that cannot see
  // events (libvirt keeps them) returns none.
  virtual std::vector<QmpEvent> TakeEvents() { return {}; }

  // QEMU's greeting ({"QMP": {"version": ...}}), or an empty object where the channel never
  // saw it.
  virtual const nlohmann::json& greeting() const {
    static const nlohmann::json kNone = nlohmann::json::object();
    return kNone;
  }
};

// Maps a QMP error class to the code a caller should act on.
Code CodeForQmpClass(std::string_view error_class);

}  // namespace hv::qmp
