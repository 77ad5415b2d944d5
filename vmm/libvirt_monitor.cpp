#include "vmm/libvirt_monitor.h"

namespace hv::vmm {

using nlohmann::json;

Result<json> LibvirtMonitor::Execute(std::string_view command, const json& arguments) {
  json request = {{"execute", std::string(command)}};
  if (!arguments.empty()) request["arguments"] = arguments;
  Result<std::string> raw = domain_.MonitorCommand(request.dump(), false);
  if (!raw.ok()) return raw.status().WithContext("'" + std::string(command) + "'");
  json reply = json::parse(*raw, nullptr, false);
  if (!reply.is_object()) {
    return InvalidArgument("'" + std::string(command) + "': libvirt passed back a reply that is not JSON");
  }
  if (auto e = reply.find("error"); e != reply.end() && e->is_object()) {
    const std::string cls = e->value("class", "GenericError");
    return Status(qmp::CodeForQmpClass(cls), "'" + std::string(command) + "': " + cls + ": " + e->value("desc", ""));
  }
  auto r = reply.find("return");
  if (r == reply.end()) return InvalidArgument("'" + std::string(command) + "': the reply has no 'return'");
  return *r;
}

Result<std::string> LibvirtMonitor::Hmp(std::string_view command_line) {
  Result<std::string> out = domain_.MonitorCommand(std::string(command_line), true);
  if (!out.ok()) return out.status().WithContext("HMP '" + std::string(command_line) + "'");
  return std::move(*out);
}

}  // namespace hv::vmm
