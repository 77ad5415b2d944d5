#include "vmm/libvirt_domain.h"

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <cstdlib>
#include <mutex>

namespace hv::vmm {

namespace {

// libvirt prints every error to stderr by default; we report them ourselves, with context.
void SilenceLibvirt() {
  static std::once_flag once;
  std::call_once(once, [] { virSetErrorFunc(nullptr, [](void*, virErrorPtr) {}); });
}

}  // namespace

Status LibvirtError(const std::string& what, Code code) {
  const char* m = virGetLastErrorMessage();
  return Status(code, what + ": " + std::string(m ? m : "unknown libvirt error"));
}

Result<std::unique_ptr<LibvirtDomain>> LibvirtDomain::Open(const std::string& uri, const std::string& name_or_uuid) {
  SilenceLibvirt();
  std::unique_ptr<LibvirtDomain> d(new LibvirtDomain());
  d->uri_ = uri;
  d->conn_ = virConnectOpen(uri.c_str());
  if (d->conn_ == nullptr) {
    return LibvirtError("connecting to libvirt at '" + uri + "'", Code::kUnavailable)
        .WithHint("is libvirtd running? choose another connection with -c URI");
  }
  d->dom_ = virDomainLookupByName(d->conn_, name_or_uuid.c_str());
  if (d->dom_ == nullptr) d->dom_ = virDomainLookupByUUIDString(d->conn_, name_or_uuid.c_str());
  if (d->dom_ == nullptr) {
    return Status(Code::kNotFound, "no domain '" + name_or_uuid + "' on '" + uri + "'",
                  "'virsh -c " + uri + " list --all' lists the domains; use qmp:PATH for a QEMU without libvirt");
  }
  const char* name = virDomainGetName(d->dom_);
  d->name_ = name ? name : name_or_uuid;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(d->dom_, uuid) == 0) d->uuid_ = uuid;
  return d;
}

LibvirtDomain::~LibvirtDomain() {
  if (dom_ != nullptr) virDomainFree(dom_);
  if (conn_ != nullptr) virConnectClose(conn_);
}

Result<bool> LibvirtDomain::Active() {
  int state = 0, reason = 0;
  if (virDomainGetState(dom_, &state, &reason, 0) < 0) return LibvirtError("reading the state of domain '" + name_ + "'");
  return state == VIR_DOMAIN_RUNNING || state == VIR_DOMAIN_PAUSED;
}

Result<std::string> LibvirtDomain::Xml(bool inactive) {
  char* xml = virDomainGetXMLDesc(dom_, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
  if (xml == nullptr) return LibvirtError("reading the XML of domain '" + name_ + "'");
  std::string out = xml;
  std::free(xml);
  return out;
}

bool LibvirtDomain::Persistent() { return virDomainIsPersistent(dom_) == 1; }

Result<std::string> LibvirtDomain::MonitorCommand(const std::string& command, bool hmp) {
  char* out = nullptr;
  if (virDomainQemuMonitorCommand(dom_, command.c_str(), &out,
                                  hmp ? VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP : 0) < 0) {
    return LibvirtError("monitor command on domain '" + name_ + "'", Code::kUnavailable);
  }
  std::string reply = out ? out : "";
  std::free(out);
  return reply;
}

Status LibvirtDomain::AttachDevice(const std::string& xml, bool config) {
  unsigned flags = VIR_DOMAIN_AFFECT_LIVE;
  if (config) flags |= VIR_DOMAIN_AFFECT_CONFIG;
  if (virDomainAttachDeviceFlags(dom_, xml.c_str(), flags) < 0) {
    return LibvirtError("attaching a device to domain '" + name_ + "'");
  }
  return Status::Ok();
}

Result<std::vector<std::string>> ListRunningDomains(const std::string& uri) {
  SilenceLibvirt();
  virConnectPtr conn = virConnectOpen(uri.c_str());
  if (conn == nullptr) {
    return LibvirtError("connecting to libvirt at '" + uri + "'", Code::kUnavailable)
        .WithHint("is libvirtd running? choose another connection with -c URI");
  }
  virDomainPtr* doms = nullptr;
  const int n = virConnectListAllDomains(conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
  if (n < 0) {
    Status s = LibvirtError("listing the domains on '" + uri + "'");
    virConnectClose(conn);
    return s;
  }
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) {
    const char* name = virDomainGetName(doms[i]);
    if (name) names.emplace_back(name);
    virDomainFree(doms[i]);
  }
  std::free(doms);
  virConnectClose(conn);
  return names;
}

}  // namespace hv::vmm
