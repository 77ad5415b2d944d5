#include "vmm/libvirt_domain.h"

#include <dlfcn.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <cstdlib>
#include <mutex>

namespace hv::vmm {

namespace {

// libvirt is loaded when a libvirt domain is first opened, not linked: linked, it and the
// libraries it pulls in (GnuTLS, curl, Kerberos, ICU, ...: about 50) cost every hvpatch
// process ~11 ms of dynamic loading before main, `qmp:` targets included (measured on the
// test machine: an empty program linked with libvirt starts in 14 ms, /bin/true in 3.5 ms).
// The headers still type every entry point.
struct LibvirtApi {
#define HV_LIBVIRT_FN(name) decltype(&::name) name = nullptr;
  HV_LIBVIRT_FN(virSetErrorFunc)
  HV_LIBVIRT_FN(virGetLastErrorMessage)
  HV_LIBVIRT_FN(virConnectOpen)
  HV_LIBVIRT_FN(virConnectClose)
  HV_LIBVIRT_FN(virConnectListAllDomains)
  HV_LIBVIRT_FN(virDomainLookupByName)
  HV_LIBVIRT_FN(virDomainLookupByUUIDString)
  HV_LIBVIRT_FN(virDomainGetName)
  HV_LIBVIRT_FN(virDomainGetUUIDString)
  HV_LIBVIRT_FN(virDomainFree)
  HV_LIBVIRT_FN(virDomainGetState)
  HV_LIBVIRT_FN(virDomainGetXMLDesc)
  HV_LIBVIRT_FN(virDomainIsPersistent)
  HV_LIBVIRT_FN(virDomainAttachDeviceFlags)
  HV_LIBVIRT_FN(virDomainQemuMonitorCommand)
#undef HV_LIBVIRT_FN
};

// The API, loaded once; kUnavailable naming what is missing when it cannot be. Silences
// libvirt's own printing of every error to stderr: we report them ourselves, with context.
Result<const LibvirtApi*> Api() {
  static const Result<const LibvirtApi*> api = []() -> Result<const LibvirtApi*> {
    static LibvirtApi a;
    void* core = dlopen("libvirt.so.0", RTLD_NOW | RTLD_LOCAL);
    void* qemu = core ? dlopen("libvirt-qemu.so.0", RTLD_NOW | RTLD_LOCAL) : nullptr;
    if (core == nullptr || qemu == nullptr) {
      const char* why = dlerror();
      return Status(Code::kUnavailable, std::string("cannot load libvirt: ") + (why ? why : "unknown error"),
                    "install libvirt0 (Debian), or use qmp:PATH for a QEMU without libvirt");
    }
#define HV_LIBVIRT_LOAD(lib, name)                                                               \
  a.name = reinterpret_cast<decltype(a.name)>(dlsym(lib, #name));                              \
  if (a.name == nullptr) {                                                                     \
    return Status(Code::kUnavailable, "libvirt has no " #name, "libvirt 1.2.8 or later is needed"); \
  }
    HV_LIBVIRT_LOAD(core, virSetErrorFunc)
    HV_LIBVIRT_LOAD(core, virGetLastErrorMessage)
    HV_LIBVIRT_LOAD(core, virConnectOpen)
    HV_LIBVIRT_LOAD(core, virConnectClose)
    HV_LIBVIRT_LOAD(core, virConnectListAllDomains)
    HV_LIBVIRT_LOAD(core, virDomainLookupByName)
    HV_LIBVIRT_LOAD(core, virDomainLookupByUUIDString)
    HV_LIBVIRT_LOAD(core, virDomainGetName)
    HV_LIBVIRT_LOAD(core, virDomainGetUUIDString)
    HV_LIBVIRT_LOAD(core, virDomainFree)
    HV_LIBVIRT_LOAD(core, virDomainGetState)
    HV_LIBVIRT_LOAD(core, virDomainGetXMLDesc)
    HV_LIBVIRT_LOAD(core, virDomainIsPersistent)
    HV_LIBVIRT_LOAD(core, virDomainAttachDeviceFlags)
    HV_LIBVIRT_LOAD(qemu, virDomainQemuMonitorCommand)
#undef HV_LIBVIRT_LOAD
    a.virSetErrorFunc(nullptr, [](void*, virErrorPtr) {});
    return &a;
  }();
  return api;
}

// For the methods of an open domain: Open succeeded, so the API is loaded.
const LibvirtApi* Loaded() { return *Api(); }

}  // namespace

Status LibvirtError(const std::string& what, Code code) {
  auto api = Api();
  const char* m = api.ok() ? (*api)->virGetLastErrorMessage() : nullptr;
  return Status(code, what + ": " + std::string(m ? m : "unknown libvirt error"));
}

Result<std::unique_ptr<LibvirtDomain>> LibvirtDomain::Open(const std::string& uri, const std::string& name_or_uuid) {
  HV_ASSIGN_OR_RETURN(const LibvirtApi* v, Api());
  std::unique_ptr<LibvirtDomain> d(new LibvirtDomain());
  d->uri_ = uri;
  d->conn_ = v->virConnectOpen(uri.c_str());
  if (d->conn_ == nullptr) {
    return LibvirtError("connecting to libvirt at '" + uri + "'", Code::kUnavailable)
        .WithHint("is libvirtd running? choose another connection with -c URI");
  }
  d->dom_ = v->virDomainLookupByName(d->conn_, name_or_uuid.c_str());
  if (d->dom_ == nullptr) d->dom_ = v->virDomainLookupByUUIDString(d->conn_, name_or_uuid.c_str());
  if (d->dom_ == nullptr) {
    return Status(Code::kNotFound, "no domain '" + name_or_uuid + "' on '" + uri + "'",
                  "'virsh -c " + uri + " list --all' lists the domains; use qmp:PATH for a QEMU without libvirt");
  }
  const char* name = v->virDomainGetName(d->dom_);
  d->name_ = name ? name : name_or_uuid;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (v->virDomainGetUUIDString(d->dom_, uuid) == 0) d->uuid_ = uuid;
  return d;
}

LibvirtDomain::~LibvirtDomain() {
  const LibvirtApi* v = Loaded();
  if (dom_ != nullptr) v->virDomainFree(dom_);
  if (conn_ != nullptr) v->virConnectClose(conn_);
}

Result<bool> LibvirtDomain::Active() {
  const LibvirtApi* v = Loaded();
  int state = 0, reason = 0;
  if (v->virDomainGetState(dom_, &state, &reason, 0) < 0) return LibvirtError("reading the state of domain '" + name_ + "'");
  return state == VIR_DOMAIN_RUNNING || state == VIR_DOMAIN_PAUSED;
}

Result<std::string> LibvirtDomain::Xml(bool inactive) {
  const LibvirtApi* v = Loaded();
  char* xml = v->virDomainGetXMLDesc(dom_, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
  if (xml == nullptr) return LibvirtError("reading the XML of domain '" + name_ + "'");
  std::string out = xml;
  std::free(xml);
  return out;
}

bool LibvirtDomain::Persistent() { return Loaded()->virDomainIsPersistent(dom_) == 1; }

Result<std::string> LibvirtDomain::MonitorCommand(const std::string& command, bool hmp) {
  const LibvirtApi* v = Loaded();
  char* out = nullptr;
  if (v->virDomainQemuMonitorCommand(dom_, command.c_str(), &out,
                                  hmp ? VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP : 0) < 0) {
    return LibvirtError("monitor command on domain '" + name_ + "'", Code::kUnavailable);
  }
  std::string reply = out ? out : "";
  std::free(out);
  return reply;
}

Status LibvirtDomain::AttachDevice(const std::string& xml, bool config) {
  const LibvirtApi* v = Loaded();
  unsigned flags = VIR_DOMAIN_AFFECT_LIVE;
  if (config) flags |= VIR_DOMAIN_AFFECT_CONFIG;
  if (v->virDomainAttachDeviceFlags(dom_, xml.c_str(), flags) < 0) {
    return LibvirtError("attaching a device to domain '" + name_ + "'");
  }
  return Status::Ok();
}

Result<std::vector<std::string>> ListRunningDomains(const std::string& uri) {
  HV_ASSIGN_OR_RETURN(const LibvirtApi* v, Api());
  virConnectPtr conn = v->virConnectOpen(uri.c_str());
  if (conn == nullptr) {
    return LibvirtError("connecting to libvirt at '" + uri + "'", Code::kUnavailable)
        .WithHint("is libvirtd running? choose another connection with -c URI");
  }
  virDomainPtr* doms = nullptr;
  const int n = v->virConnectListAllDomains(conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
  if (n < 0) {
    Status s = LibvirtError("listing the domains on '" + uri + "'");
    v->virConnectClose(conn);
    return s;
  }
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) {
    const char* name = v->virDomainGetName(doms[i]);
    if (name) names.emplace_back(name);
    v->virDomainFree(doms[i]);
  }
  std::free(doms);
  v->virConnectClose(conn);
  return names;
}

}  // namespace hv::vmm
