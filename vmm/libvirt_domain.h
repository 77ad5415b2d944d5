// LibvirtDomain: one libvirt connection and one domain on it, owned (virConnectClose and
// virDomainFree on destruction), with libvirt's errors turned into hv::Status. Shared by the
// libvirt backend of vmm::Vm, its QMP passthrough, the fleet runs and the hook.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

struct _virConnect;
struct _virDomain;

namespace hv::vmm {

class LibvirtDomain {
 public:
  // Opens `uri` (e.g. qemu:///system) and finds `name_or_uuid` there, as virsh does (a name
  // first, then a UUID). Errors: kUnavailable (no libvirtd at `uri`), kNotFound (no such
  // domain on it), with the libvirt message and a hint.
  static Result<std::unique_ptr<LibvirtDomain>> Open(const std::string& uri, const std::string& name_or_uuid);
  ~LibvirtDomain();
  LibvirtDomain(const LibvirtDomain&) = delete;
  LibvirtDomain& operator=(const LibvirtDomain&) = delete;

  const std::string& name() const { return name_; }
  const std::string& uuid() const { return uuid_; }
  const std::string& uri() const { return uri_; }

  // virDomainGetState: true for VIR_DOMAIN_RUNNING and VIR_DOMAIN_PAUSED (QEMU is there).
  Result<bool> Active();
  // The live XML (virDomainGetXMLDesc with no flags), or with `inactive`, the persistent one.
  Result<std::string> Xml(bool inactive = false);
  bool Persistent();
  // QMP passthrough (virDomainQemuMonitorCommand): the raw reply text. With `hmp`, an HMP
  // command line and its text output.
  Result<std::string> MonitorCommand(const std::string& command, bool hmp);
  // virDomainAttachDeviceFlags with VIR_DOMAIN_AFFECT_LIVE, plus VIR_DOMAIN_AFFECT_CONFIG when
  // `config`.
  Status AttachDevice(const std::string& xml, bool config);

 private:
  LibvirtDomain() = default;
  _virConnect* conn_ = nullptr;
  _virDomain* dom_ = nullptr;
  std::string uri_, name_, uuid_;
};

// The names of the running domains on `uri` (virConnectListAllDomains, active only).
Result<std::vector<std::string>> ListRunningDomains(const std::string& uri);

// libvirt's last error as a status: `what` failed, with libvirt's message.
Status LibvirtError(const std::string& what, Code code = Code::kFailedPrecondition);

}  // namespace hv::vmm
