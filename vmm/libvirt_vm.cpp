#include "vmm/libvirt_vm.h"

#include <cctype>

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "base/hex.h"
#include "vmm/libvirt_monitor.h"

namespace hv::vmm {

namespace {

// The value of attribute `name` in one start tag's text, XML entities decoded. libvirt writes
// its XML itself (single quotes, escaped values): this reads that, not arbitrary XML.
std::string Attr(std::string_view tag, std::string_view name) {
  for (std::size_t at = 0; (at = tag.find(name, at)) != std::string_view::npos; at += name.size()) {
    const bool starts = at > 0 && (tag[at - 1] == ' ' || tag[at - 1] == '\n' || tag[at - 1] == '\t');
    const std::size_t eq = at + name.size();
    if (!starts || eq + 1 >= tag.size() || tag[eq] != '=' || (tag[eq + 1] != '\'' && tag[eq + 1] != '"')) continue;
    const char quote = tag[eq + 1];
    const std::size_t end = tag.find(quote, eq + 2);
    if (end == std::string_view::npos) return {};
    std::string raw(tag.substr(eq + 2, end - eq - 2)), out;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      static const std::pair<const char*, char> kEntities[] = {
          {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
      bool done = false;
      for (const auto& [ent, ch] : kEntities) {
        if (raw.compare(i, std::strlen(ent), ent) == 0) {
          out += ch;
          i += std::strlen(ent) - 1;
          done = true;
          break;
        }
      }
      if (!done) out += raw[i];
    }
    return out;
  }
  return {};
}

// The first start tag `<name ...>` in `text`, or empty.
std::string_view Tag(std::string_view text, std::string_view name) {
  const std::string open = "<" + std::string(name);
  for (std::size_t at = 0; (at = text.find(open, at)) != std::string_view::npos; at += open.size()) {
    const std::size_t after = at + open.size();
    if (after < text.size() && (text[after] == ' ' || text[after] == '>' || text[after] == '/')) {
      const std::size_t end = text.find('>', after);
      if (end == std::string_view::npos) return {};
      return text.substr(at, end - at + 1);
    }
  }
  return {};
}

Result<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return ErrnoError("opening '" + path + "'", errno);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

Result<std::string> ChannelSocketFromXml(const std::string& xml, const std::string& port_name) {
  const std::string_view all(xml);
  for (std::size_t at = 0; (at = all.find("<channel ", at)) != std::string_view::npos;) {
    const std::size_t end = all.find("</channel>", at);
    if (end == std::string_view::npos) break;
    const std::string_view channel = all.substr(at, end - at);
    at = end;
    const std::string_view target = Tag(channel, "target");
    if (Attr(target, "name") != port_name) continue;
    if (Attr(Tag(channel, "channel"), "type") != "unix") {
      return NotFound("channel '" + port_name + "' is not a unix socket");
    }
    const std::string path = Attr(Tag(channel, "source"), "path");
    if (path.empty()) return NotFound("channel '" + port_name + "' has no source path");
    return path;
  }
  return NotFound("no channel '" + port_name + "' in the domain's XML");
}

Result<std::string> DomainDirFromCmdline(const std::string& cmdline) {
  // libvirt passes its master key as a file in the domain's private directory:
  //   -object {"qom-type":"secret","id":"masterKey0","format":"raw","file":"DIR/master-key.aes"}
  // (older libvirt: secret,id=masterKey0,format=raw,file=DIR/master-key.aes).
  const std::string key = "/master-key.aes";
  const std::size_t at = cmdline.find(key);
  if (at == std::string::npos) return NotFound("QEMU's command line names no libvirt master-key.aes");
  std::size_t begin = at;
  while (begin > 0 && cmdline[begin - 1] != '"' && cmdline[begin - 1] != '=' && cmdline[begin - 1] != '\0' &&
         cmdline[begin - 1] != ',') {
    --begin;
  }
  std::string dir = cmdline.substr(begin, at - begin);
  if (dir.empty() || dir[0] != '/') return NotFound("QEMU's master-key.aes path is not absolute");
  return dir;
}

std::string ArenaShmemXml(const std::string& domain_uuid) {
  // role='master' is QEMU's master=on: the arena's contents travel with save/restore and
  // migration (without it libvirt leaves master=off, which blocks migration; lab notes).
  return "<shmem name='" + ArenaShmemName(domain_uuid) +
         "' role='master'>\n"
         "  <model type='ivshmem-plain'/>\n"
         "  <size unit='M'>2</size>\n"
         "</shmem>\n";
}

std::string ArenaShmemName(const std::string& domain_uuid) { return "hvpatch-arena-" + domain_uuid; }

std::string ArenaShmemPath(const std::string& domain_uuid) {
  if (domain_uuid.size() != 36) return {};
  for (char c : domain_uuid) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) && c != '-') return {};
  }
  return "/dev/shm/" + ArenaShmemName(domain_uuid);
}

Result<std::unique_ptr<LibvirtVm>> LibvirtVm::Open(const std::string& name_or_uuid, const LibvirtVmOptions& options) {
  std::unique_ptr<LibvirtVm> vm(new LibvirtVm());
  vm->options_ = options;
  HV_ASSIGN_OR_RETURN(vm->domain_, LibvirtDomain::Open(options.uri, name_or_uuid));
  const std::string name = vm->domain_->name();
  HV_ASSIGN_OR_RETURN(const bool active, vm->domain_->Active());
  if (!active) {
    return Status(Code::kFailedPrecondition, "domain '" + name + "' is not running",
                  "start it with 'virsh -c " + options.uri + " start " + name + "'");
  }
  auto monitor = std::make_unique<LibvirtMonitor>(*vm->domain_);
  // QEMU runs as libvirt-qemu by default and cannot create a socket in our own /tmp
  // directory: give it the domain's directory, found through a vCPU thread's command line.
  QemuVmOptions qo = options.qemu;
  if (qo.gdb_socket_dir.empty()) {
    HV_ASSIGN_OR_RETURN(nlohmann::json cpus, monitor->Execute("query-cpus-fast"));
    if (!cpus.is_array() || cpus.empty() || !cpus[0].is_object() || !cpus[0].contains("thread-id") ||
        !cpus[0]["thread-id"].is_number_unsigned()) {
      return InvalidArgument("domain '" + name + "': query-cpus-fast gives no vCPU thread");
    }
    const std::string path = "/proc/" + std::to_string(cpus[0]["thread-id"].get<std::uint64_t>()) + "/cmdline";
    HV_ASSIGN_OR_RETURN(std::string cmdline, ReadSmallFile(path));
    Result<std::string> dir = DomainDirFromCmdline(cmdline);
    if (!dir.ok()) return dir.status().WithContext("domain '" + name + "': finding its libvirt directory");
    qo.gdb_socket_dir = *dir;
  }
  HV_ASSIGN_OR_RETURN(vm->qemu_, QemuVm::Attach(std::move(monitor), "(domain '" + name + "')", qo));
  return vm;
}

LibvirtVm::~LibvirtVm() {
  // The QEMU side (gdbstub, pause) goes first: it talks through the domain's connection.
  qemu_.reset();
}

std::string LibvirtVm::Describe() const { return "domain '" + domain_->name() + "'"; }

Result<std::string> LibvirtVm::AgentSocket() {
  HV_ASSIGN_OR_RETURN(std::string xml, domain_->Xml());
  HV_ASSIGN_OR_RETURN(std::string path, ChannelSocketFromXml(xml, "org.hvpatch.agent.0"));
  // Whether a guest process holds the port open: QEMU knows at once (query-chardev, see
  // QemuVm::AgentSocket), so a domain with the channel but no agent costs no sync timeout. Only
  // that answer counts; any other failure of the QMP lookup leaves the decision to the sync.
  if (Result<std::string> q = qemu_->AgentSocket(); !q.ok() && q.status().code() == Code::kUnavailable) {
    return q.status();
  }
  return path;
}

Result<ArenaDevice> LibvirtVm::Arena() {
  Result<ArenaDevice> a = qemu_->Arena();
  if (a.ok() || a.status().code() != Code::kNotFound) return a;
  const std::string xml = ArenaShmemXml(domain_->uuid());
  if (!options_.attach_arena) {
    return Status(Code::kNotFound, "domain '" + domain_->name() + "' has no arena device (--no-attach-arena)",
                  "add it (needs <features><acpi/></features>) with 'virsh attach-device " + domain_->name() +
                      " FILE --live --config', FILE holding:\n" + xml);
  }
  HV_RETURN_IF_ERROR(AttachArena());
  return qemu_->Arena();
}

Status LibvirtVm::AttachArena() {
  const std::string name = domain_->name();
  const bool persistent = domain_->Persistent();
  Status s = domain_->AttachDevice(ArenaShmemXml(domain_->uuid()), persistent);
  if (!s.ok()) {
    return s.WithContext("hot-plugging the arena")
        .WithHint("the domain needs <features><acpi/></features> for PCI hot-plug; or add the arena "
                  "with 'virsh attach-device " + name + " FILE --config' and restart it");
  }
  Result<ArenaDevice> a = qemu_->WaitForArena(options_.arena_bar_timeout_ms);
  if (!a.ok()) {
    return a.status().WithContext("domain '" + name + "'").WithHint(
        "the guest kernel must handle ACPI PCI hot-plug; or restart the domain, its persistent "
        "config has the arena");
  }
  if (options_.note) {
    options_.note("attached an arena to domain '" + name + "' (ivshmem-plain 2 MiB, <shmem name='" +
                  ArenaShmemName(domain_->uuid()) + "' role='master'>), BAR2 at " + Hex(a->bar_gpa) +
                  (persistent ? "; also added to its persistent config" : "; the domain is transient"));
  }
  return Status::Ok();
}

}  // namespace hv::vmm
