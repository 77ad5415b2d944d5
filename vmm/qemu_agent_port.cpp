#include "vmm/qemu_agent_port.h"

#include <nlohmann/json.hpp>

namespace hv::vmm {

Result<PortSocket> FindPortSocket(qmp::QmpClient& qmp, std::string_view port_name) {
  std::string chardev;
  // Bounded: a guest cannot add devices, and QEMU's lists are finite; still cap the scan.
  int checked = 0;
  for (const char* parent : {"/machine/peripheral", "/machine/peripheral-anon"}) {
    auto children = qmp.Execute("qom-list", {{"path", parent}});
    if (!children.ok() || !children->is_array()) continue;
    for (const auto& c : *children) {
      if (++checked > 4096) break;
      if (!c.is_object() || !c.contains("type") || !c["type"].is_string() || !c.contains("name") ||
          !c["name"].is_string() || c["type"].get<std::string>() != "child<virtserialport>") {
        continue;
      }
      const std::string path = std::string(parent) + "/" + c["name"].get<std::string>();
      auto name = qmp.Execute("qom-get", {{"path", path}, {"property", "name"}});
      if (!name.ok() || !name->is_string() || name->get<std::string>() != port_name) continue;
      auto dev = qmp.Execute("qom-get", {{"path", path}, {"property", "chardev"}});
      if (dev.ok() && dev->is_string()) chardev = dev->get<std::string>();
      break;
    }
    if (!chardev.empty()) break;
  }
  if (chardev.empty()) {
    return NotFound("the VM has no virtio-serial port '" + std::string(port_name) + "'");
  }
  HV_ASSIGN_OR_RETURN(nlohmann::json chardevs, qmp.Execute("query-chardev", nlohmann::json::object()));
  for (const auto& c : chardevs) {
    if (!c.is_object() || !c.contains("label") || !c["label"].is_string() || c["label"] != chardev) continue;
    // QEMU 7.2 says "unix:PATH,server=on", or "disconnected:unix:PATH,server=on" while no
    // client is attached.
    std::string f = c.contains("filename") && c["filename"].is_string() ? c["filename"].get<std::string>() : "";
    if (f.rfind("disconnected:", 0) == 0) f = f.substr(13);
    if (f.rfind("unix:", 0) != 0) break;
    f = f.substr(5);
    PortSocket port;
    port.path = f.substr(0, f.find(','));
    port.guest_open = c.contains("frontend-open") && c["frontend-open"].is_boolean() && c["frontend-open"].get<bool>();
    return port;
  }
  return NotFound("port '" + std::string(port_name) + "' uses chardev '" + chardev +
                  "', which is not a unix socket");
}

}  // namespace hv::vmm
