// LibvirtMonitor: QMP to a libvirt domain's QEMU through libvirt's passthrough
// (virDomainQemuMonitorCommand), since libvirtd owns the domain's QMP socket and QEMU serves
// one client on it. libvirt marks the domain tainted ("custom-monitor") on the first use: the
// price of reaching the gdbstub and QEMU's memory layout, which libvirt's API does not expose.
#pragma once

#include "qmp/qmp_channel.h"
#include "vmm/libvirt_domain.h"

namespace hv::vmm {

class LibvirtMonitor final : public qmp::QmpChannel {
 public:
  // `domain` must outlive this object.
  explicit LibvirtMonitor(LibvirtDomain& domain) : domain_(domain) {}

  // Errors: QMP errors mapped as QmpClient does ("'command': Class: desc"); kUnavailable when
  // libvirt refuses (domain not running); kInvalidArgument for a reply that is not QMP.
  Result<nlohmann::json> Execute(std::string_view command,
                                 const nlohmann::json& arguments = nlohmann::json::object()) override;
  Result<std::string> Hmp(std::string_view command_line) override;

 private:
  LibvirtDomain& domain_;
};

}  // namespace hv::vmm
