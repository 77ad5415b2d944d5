#include "vmm/qemu_vm.h"

#include "vmm/qemu_agent_port.h"

#include "qmp/qmp_client.h"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "base/hex.h"
#include "vmm/page_walk.h"

namespace hv::vmm {

using nlohmann::json;

namespace {

constexpr std::uint16_t kIvshmemVendor = 0x1af4;
constexpr std::uint16_t kIvshmemDevice = 0x1110;
constexpr std::size_t kMaxCodeWrite = 1u << 20;
constexpr std::size_t kSampleBytes = 256;
constexpr std::size_t kMaxProcFile = 64u << 20;
constexpr const char* kAgentPort = "org.hvpatch.agent.0";

Result<std::string> ReadTextFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return ErrnoError("opening '" + path + "'", errno);
  std::string out;
  char buf[65536];
  while (f.read(buf, sizeof(buf)) || f.gcount() > 0) {
    out.append(buf, static_cast<std::size_t>(f.gcount()));
    if (out.size() > kMaxProcFile) return InvalidArgument("'" + path + "' is larger than 64 MiB");
  }
  return out;
}

std::uint64_t JsonU64(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

std::string JsonString(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Finds ivshmem-plain devices in a query-pci reply, descending into bridges (bounded).
void CollectIvshmem(const json& devices, int depth, std::vector<json>& out) {
  if (!devices.is_array() || depth > 8) return;
  for (const json& d : devices) {
    if (!d.is_object()) continue;
    auto id = d.find("id");
    if (id != d.end() && id->is_object() && JsonU64(*id, "vendor") == kIvshmemVendor &&
        JsonU64(*id, "device") == kIvshmemDevice) {
      out.push_back(d);
    }
    auto bridge = d.find("pci_bridge");
    if (bridge != d.end() && bridge->is_object()) {
      auto sub = bridge->find("devices");
      if (sub != bridge->end()) CollectIvshmem(*sub, depth + 1, out);
    }
  }
}

}  // namespace

Result<std::unique_ptr<QemuVm>> QemuVm::Connect(const std::string& qmp_path, const QemuVmOptions& options) {
  std::unique_ptr<QemuVm> vm(new QemuVm());
  vm->qmp_path_ = qmp_path;
  vm->name_ = "(qmp:" + qmp_path + ")";
  qmp::QmpOptions qo;
  qo.timeout_ms = options.qmp_timeout_ms;
  Result<std::unique_ptr<qmp::QmpClient>> client = qmp::QmpClient::Connect(qmp_path, qo);
  if (!client.ok()) return client.status().WithContext("opening QEMU at 'qmp:" + qmp_path + "'");
  vm->qmp_ = std::move(*client);
  Status s = vm->Setup(options);
  if (!s.ok()) return s.WithContext("opening QEMU at 'qmp:" + qmp_path + "'");
  return vm;
}

Result<std::unique_ptr<QemuVm>> QemuVm::Attach(std::unique_ptr<qmp::QmpChannel> channel, const std::string& name,
                                               const QemuVmOptions& options) {
  std::unique_ptr<QemuVm> vm(new QemuVm());
  vm->name_ = name;
  vm->qmp_ = std::move(channel);
  Status s = vm->Setup(options);
  if (!s.ok()) return s.WithContext("opening QEMU of " + name);
  return vm;
}

QemuVm::~QemuVm() {
  // A Vm dropped mid-pause must not leave the guest stopped behind the operator's back.
  if (pause_depth_ > 0 && resume_on_outer_ && qmp_) (void)qmp_->Execute("cont");
  if (gdb_) {
    gdb_.reset();
    if (qmp_) (void)qmp_->Hmp("gdbserver none");
  }
  // QEMU leaves the listening socket's file behind: no trace of the gdbstub may stay.
  if (!gdb_sock_.empty()) unlink(gdb_sock_.c_str());
  if (!gdb_dir_.empty()) rmdir(gdb_dir_.c_str());
}

Result<json> QemuVm::SetupQuery(const std::string& command, const json& arguments) {
  const auto it = setup_replies_.find(command + " " + arguments.dump());
  if (it == setup_replies_.end()) return qmp_->Execute(command, arguments);
  Result<json> r = std::move(it->second);
  setup_replies_.erase(it);
  return r;
}

Status QemuVm::Setup(const QemuVmOptions& options) {
  options_ = options;
  // The queries Setup needs that depend on nothing: one pipelined batch, one wait for QEMU's
  // main loop instead of seven (each costs a scheduling round on a loaded host). Side effects
  // (gdbserver, cont) stay in order below. Each reply is used once; the rest is dropped when
  // Setup ends, so nothing later sees a reply older than its own question.
  {
    const std::vector<qmp::QmpCall> batch = {
        {"query-status"}, {"query-cpus-fast"}, {"query-kvm"}, {"query-uuid"}, {"query-pci"},
        {"human-monitor-command", json{{"command-line", "info mtree -f"}}}, {"query-memdev"}};
    std::vector<Result<json>> replies = qmp_->ExecuteAll(batch);
    for (std::size_t i = 0; i < batch.size() && i < replies.size(); ++i) {
      setup_replies_.insert_or_assign(batch[i].command + " " + batch[i].arguments.dump(), std::move(replies[i]));
    }
  }
  Status s = SetupSteps(options);
  setup_replies_.clear();
  return s;
}

Status QemuVm::SetupSteps(const QemuVmOptions& options) {
  HV_ASSIGN_OR_RETURN(const bool was_running, Running());
  HV_RETURN_IF_ERROR(FindPid());
  HV_ASSIGN_OR_RETURN(json kvm, SetupQuery("query-kvm"));
  auto enabled = kvm.find("enabled");
  kvm_ = enabled != kvm.end() && enabled->is_boolean() && enabled->get<bool>();
  const char* path = std::getenv("HVPATCH_CODE_WRITE");
  direct_code_writes_ = kvm_ && !(path != nullptr && std::strcmp(path, "gdbstub") == 0);
  HV_ASSIGN_OR_RETURN(json uuid, SetupQuery("query-uuid"));
  uuid_ = JsonString(uuid, "UUID");
  HV_RETURN_IF_ERROR(DiscoverArena());
  HV_RETURN_IF_ERROR(DiscoverMemory());
  // The gdbstub attach stops the VM; from here on it must be restarted on every path.
  Status s = StartGdbStub(options, was_running);
  if (s.ok()) s = VerifyFastPath();
  if (was_running) {
    Status c = qmp_->Execute("cont").status();
    if (s.ok() && !c.ok()) s = c.WithContext("resuming after the gdbstub attach");
  }
  return s;
}

Result<bool> QemuVm::Running() {
  HV_ASSIGN_OR_RETURN(json st, SetupQuery("query-status"));
  auto it = st.find("running");
  if (it == st.end() || !it->is_boolean()) return InvalidArgument("query-status has no 'running'");
  return it->get<bool>();
}

Status QemuVm::FindPid() {
  HV_ASSIGN_OR_RETURN(json cpus, SetupQuery("query-cpus-fast"));
  if (!cpus.is_array() || cpus.empty()) return InvalidArgument("query-cpus-fast lists no vCPUs");
  for (const json& cpu : cpus) {
    const std::uint64_t tid = JsonU64(cpu, "thread-id");
    if (tid == 0 || tid > INT_MAX) return InvalidArgument("query-cpus-fast gives no thread id");
    // A vCPU thread's Tgid is QEMU's pid. This holds however QEMU was started (libvirt,
    // daemonized, in a wrapper) as long as we share its pid namespace.
    const std::string status_path = "/proc/" + std::to_string(tid) + "/status";
    HV_ASSIGN_OR_RETURN(std::string status, ReadTextFile(status_path));
    const std::size_t at = status.find("\nTgid:");
    if (at == std::string::npos) return InvalidArgument("'" + status_path + "' has no Tgid");
    const long tgid = std::strtol(status.c_str() + at + 6, nullptr, 10);
    if (tgid <= 0) return InvalidArgument("'" + status_path + "' has a bad Tgid");
    if (pid_ != -1 && pid_ != tgid) {
      return FailedPrecondition("vCPU threads belong to processes " + std::to_string(pid_) + " and " +
                                std::to_string(tgid));
    }
    pid_ = static_cast<pid_t>(tgid);
  }
  return Status::Ok();
}

Status QemuVm::RefreshArena() {
  arena_.reset();
  extra_.clear();
  arena_memdev_.clear();
  page_cache_.Clear();
  return DiscoverArena();
}

Status QemuVm::DiscoverArena() {
  arena_status_ = NotFound("no ivshmem-plain device (vendor 0x1af4, device 0x1110)")
                      .WithHint("start QEMU with -object memory-backend-file,id=arena,size=2M,"
                                "mem-path=/dev/shm/NAME,share=on -device ivshmem-plain,memdev=arena,"
                                "master=on");
  HV_ASSIGN_OR_RETURN(json pci, SetupQuery("query-pci"));
  std::vector<json> found;
  if (pci.is_array()) {
    for (const json& bus : pci) {
      if (bus.is_object() && bus.contains("devices")) CollectIvshmem(bus["devices"], 0, found);
    }
  }
  if (found.empty()) return Status::Ok();
  const json& dev = found.front();
  ArenaDevice a;
  char addr[32];
  std::snprintf(addr, sizeof(addr), "%02x:%02x.%x", static_cast<unsigned>(JsonU64(dev, "bus")),
                static_cast<unsigned>(JsonU64(dev, "slot")), static_cast<unsigned>(JsonU64(dev, "function")));
  a.pci_address = addr;
  if (dev.contains("regions") && dev["regions"].is_array()) {
    for (const json& r : dev["regions"]) {
      if (r.is_object() && JsonU64(r, "bar") == 2 && JsonString(r, "type") == "memory") {
        a.bar_gpa = JsonU64(r, "address");
        a.size = JsonU64(r, "size");
      }
    }
  }
  if (a.size == 0 || a.bar_gpa == 0 || a.bar_gpa == ~0ull || (a.bar_gpa & ((2u << 20) - 1)) != 0) {
    arena_status_ = FailedPrecondition("ivshmem-plain device " + a.pci_address + " has BAR2 at " +
                                       Hex(a.bar_gpa) + " size " + Hex(a.size) +
                                       ": not assigned or not 2 MiB aligned")
                        .WithHint("the guest firmware or kernel must assign the BAR (hot-plugged devices)");
    return Status::Ok();
  }
  // The backend behind the device: its QOM path, then its memdev link, then the file.
  std::string qom = JsonString(dev, "qdev_id");
  if (!qom.empty()) {
    qom = "/machine/peripheral/" + qom;
  } else {
    const unsigned devfn = static_cast<unsigned>((JsonU64(dev, "slot") << 3) | JsonU64(dev, "function"));
    Result<json> anon = qmp_->Execute("qom-list", json{{"path", "/machine/peripheral-anon"}});
    if (anon.ok() && anon->is_array()) {
      for (const json& child : *anon) {
        if (JsonString(child, "type") != "child<ivshmem-plain>") continue;
        const std::string path = "/machine/peripheral-anon/" + JsonString(child, "name");
        Result<json> fn = qmp_->Execute("qom-get", json{{"path", path}, {"property", "addr"}});
        if (fn.ok() && fn->is_number_integer() && fn->get<int>() == static_cast<int>(devfn)) qom = path;
      }
    }
  }
  std::string memdev_id;
  if (!qom.empty()) {
    Result<json> link = qmp_->Execute("qom-get", json{{"path", qom}, {"property", "memdev"}});
    if (link.ok() && link->is_string()) {
      const std::string obj = link->get<std::string>();
      memdev_id = obj.substr(obj.rfind('/') + 1);
      Result<json> mp = qmp_->Execute("qom-get", json{{"path", obj}, {"property", "mem-path"}});
      if (mp.ok() && mp->is_string()) a.backing_path = mp->get<std::string>();
    }
  }
  arena_ = a;
  arena_status_ = Status::Ok();
  // Its host mapping, for WritePhys into the arena.
  HV_ASSIGN_OR_RETURN(std::string maps_text, ReadTextFile("/proc/" + std::to_string(pid_) + "/maps"));
  HV_ASSIGN_OR_RETURN(std::vector<HostMapping> maps, ParseProcMaps(maps_text));
  std::vector<HostMapping> c = CandidateMappings(maps, a.size, a.backing_path, memdev_id);
  if (c.size() == 1) extra_.push_back(HostRange{a.bar_gpa, a.size, c[0].start, "arena"});
  arena_memdev_ = memdev_id;
  return Status::Ok();
}

Status QemuVm::DiscoverMemory() {
  HV_ASSIGN_OR_RETURN(json mtree_reply, SetupQuery("human-monitor-command", json{{"command-line", "info mtree -f"}}));
  if (!mtree_reply.is_string()) return InvalidArgument("HMP 'info mtree -f' returned a non-string");
  const std::string mtree = mtree_reply.get<std::string>();
  Result<std::vector<FlatRange>> flat = ParseSystemFlatView(mtree);
  if (!flat.ok()) return flat.status().WithContext("reading HMP 'info mtree -f'");
  HV_ASSIGN_OR_RETURN(json memdevs, SetupQuery("query-memdev"));
  HV_ASSIGN_OR_RETURN(std::string maps_text, ReadTextFile("/proc/" + std::to_string(pid_) + "/maps"));
  HV_ASSIGN_OR_RETURN(std::vector<HostMapping> maps, ParseProcMaps(maps_text));
  if (!memdevs.is_array()) return InvalidArgument("query-memdev did not return a list");
  for (const json& m : memdevs) {
    const std::string id = JsonString(m, "id");
    const std::uint64_t size = JsonU64(m, "size");
    if (id.empty() || size == 0 || id == arena_memdev_) continue;
    // Memory backends not mapped into guest-physical space (unused, or device-owned) are skipped.
    if (std::none_of(flat->begin(), flat->end(), [&](const FlatRange& f) { return f.region == id; })) continue;
    std::string path;
    Result<json> mp = qmp_->Execute("qom-get", json{{"path", "/objects/" + id}, {"property", "mem-path"}});
    if (mp.ok() && mp->is_string()) path = mp->get<std::string>();
    std::vector<HostMapping> cands = CandidateMappings(maps, size, path, id);
    if (cands.empty()) {
      return FailedPrecondition("no host mapping of " + Hex(size) + " bytes for memory backend '" + id +
                                "' in QEMU pid " + std::to_string(pid_));
    }
    Block b{id, size, {}, {}};
    for (const HostMapping& c : cands) {
      b.hvas.push_back(c.start);
      b.mappings.push_back(c);
    }
    blocks_.push_back(std::move(b));
  }
  if (blocks_.empty()) return FailedPrecondition("no memory backend of guest RAM in the system flat view");
  flat_ = std::move(*flat);
  return Status::Ok();
}

Status QemuVm::StartGdbStub(const QemuVmOptions& options, bool vm_running) {
  std::string sock;
  if (options.gdb_socket_dir.empty()) {
    char tmpl[] = "/tmp/hvpatch-gdb-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return ErrnoError("creating a directory for the gdbstub socket", errno);
    gdb_dir_ = tmpl;
    sock = gdb_dir_ + "/gdb.sock";
  } else {
    // Our pid keeps two hvpatch processes apart; the VM lock keeps them off one VM anyway.
    sock = options.gdb_socket_dir + "/hvpatch-gdb-" + std::to_string(getpid()) + ".sock";
    unlink(sock.c_str());
  }
  gdb_sock_ = sock;
  // Only one gdbserver per QEMU: replace whatever runs (QEMU keeps its own if we don't). Both
  // in one pipelined batch (QEMU runs them in order): one round trip.
  std::vector<Result<json>> started = qmp_->ExecuteAll(
      {{"human-monitor-command", json{{"command-line", "gdbserver none"}}},
       {"human-monitor-command", json{{"command-line", "gdbserver unix:" + sock + ",server=on,wait=off"}}}});
  HV_RETURN_IF_ERROR(started[0].status());
  HV_RETURN_IF_ERROR(started[1].status());
  const std::string out = started[1]->is_string() ? started[1]->get<std::string>() : "";
  if (out.find("Waiting for gdb connection") == std::string::npos) {
    return FailedPrecondition("HMP gdbserver answered '" + out.substr(0, out.find('\r')) + "'");
  }
  // Only a running VM is stopped by the attach, and only then does QEMU send a stop reply.
  Result<std::unique_ptr<GdbStubClient>> gdb =
      GdbStubClient::Connect(sock, options.gdb_timeout_ms, vm_running ? options.gdb_timeout_ms : 0);
  if (!gdb.ok()) return gdb.status().WithContext("attaching to the gdbstub");
  gdb_ = std::move(*gdb);
  HV_RETURN_IF_ERROR(gdb_->Command("qSupported:xmlRegisters=i386").status());
  HV_ASSIGN_OR_RETURN(std::string target, gdb_->ReadXfer("features", "target.xml"));
  Result<GdbRegisterLayout> layout = GdbRegisterLayout::Parse(
      target, [this](std::string_view annex) { return gdb_->ReadXfer("features", annex); });
  if (!layout.ok()) return layout.status();
  for (const char* name : {"rip", "rsp", "eflags", "cs", "cr0", "cr3", "cr4", "efer", "gs_base", "k_gs_base"}) {
    if (layout->Find(name) == nullptr) {
      return Unimplemented("the gdbstub's register layout has no '" + std::string(name) + "'");
    }
  }
  layout_ = std::move(*layout);
  HV_ASSIGN_OR_RETURN(threads_, gdb_->Threads());
  return gdb_->SetPhysicalMode(true);
}

Result<VcpuState> QemuVm::ReadVcpu(int index) {
  HV_RETURN_IF_ERROR(gdb_->SelectThread(threads_[static_cast<std::size_t>(index)]));
  HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> g, gdb_->ReadRegisters());
  return DecodeVcpu(index, g);
}

Result<VcpuState> QemuVm::DecodeVcpu(int index, const std::vector<std::uint8_t>& g) const {
  VcpuState v;
  v.index = index;
  struct Field {
    const char* name;
    std::uint64_t* dst;
  } fields[] = {{"rip", &v.rip},     {"rsp", &v.rsp},          {"eflags", &v.rflags},
                {"cs", &v.cs},       {"cr0", &v.cr0},          {"cr3", &v.cr3},
                {"cr4", &v.cr4},     {"efer", &v.efer},        {"gs_base", &v.gs_base},
                {"k_gs_base", &v.kernel_gs_base}};
  for (const Field& f : fields) {
    Result<std::uint64_t> r = layout_->Read(g, f.name);
    if (!r.ok()) return r.status().WithContext("vCPU " + std::to_string(index));
    *f.dst = *r;
  }
  return v;
}

Status QemuVm::VerifyFastPath() {
  // vCPU 0's top-level page table is never all zeros in a running kernel: a sample that
  // tells a wrong mapping from the right one even when most of RAM is still empty.
  HV_ASSIGN_OR_RETURN(VcpuState v0, ReadVcpu(0));
  const pid_t pid = pid_;
  const HostReader read_host = [pid](std::uint64_t hva, std::span<std::uint8_t> out) -> Status {
    iovec local{out.data(), out.size()};
    iovec remote{reinterpret_cast<void*>(hva), out.size()};
    const ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n != static_cast<ssize_t>(out.size())) {
      return ErrnoError("process_vm_readv at " + Hex(hva) + " in QEMU pid " + std::to_string(pid),
                        n < 0 ? errno : EIO);
    }
    return Status::Ok();
  };
  for (const Block& b : blocks_) {
    HV_ASSIGN_OR_RETURN(std::vector<HostRange> probe, RangesOfRegion(flat_, b.id, 0, b.size));
    std::vector<std::uint64_t> samples;
    for (const HostRange& r : probe) {
      for (std::uint64_t k = 0; k < 4 && r.size >= kSampleBytes; ++k) {
        samples.push_back(r.gpa + ((r.size - kSampleBytes) * k / 3 & ~std::uint64_t{0xff}));
      }
      const std::uint64_t pgd = v0.cr3 & pte::kAddrMask;
      if (pgd >= r.gpa && pgd + kSampleBytes <= r.end()) samples.push_back(pgd + 0x800);
    }
    // One pipelined batch: the samples cost one round trip to QEMU, not one each.
    Result<std::vector<std::vector<std::uint8_t>>> read = gdb_->ReadMemoryAt(samples, kSampleBytes);
    if (!read.ok()) return read.status().WithContext("sampling guest RAM through the gdbstub");
    std::vector<MemorySample> truth;
    for (std::size_t i = 0; i < samples.size(); ++i) truth.push_back(MemorySample{samples[i], std::move((*read)[i])});
    HV_ASSIGN_OR_RETURN(const std::uint64_t base,
                        ChooseHostMapping(flat_, b.id, b.size, b.hvas, truth, read_host));
    HV_ASSIGN_OR_RETURN(std::vector<HostRange> ranges, RangesOfRegion(flat_, b.id, base, b.size));
    if (Status m = MapShared(b, base, truth, ranges); !m.ok()) ram_access_ = "process_vm_readv (" + m.message() + ")";
    ram_.insert(ram_.end(), ranges.begin(), ranges.end());
  }
  std::sort(ram_.begin(), ram_.end(), [](const HostRange& a, const HostRange& b) { return a.gpa < b.gpa; });
  mapped_ = !ram_.empty() && std::all_of(ram_.begin(), ram_.end(), [](const HostRange& r) { return r.local; });
  if (mapped_) {
    ram_access_ = "mapped";
    for (const auto& m : shared_maps_) ram_access_ += " " + m->source();
  }
  return Status::Ok();
}

Status QemuVm::MapShared(const Block& b, std::uint64_t base, const std::vector<MemorySample>& truth,
                         std::vector<HostRange>& ranges) {
  const auto it = std::find(b.hvas.begin(), b.hvas.end(), base);
  if (it == b.hvas.end()) return NotFound("no mapping at " + Hex(base));
  const HostMapping& m = b.mappings[static_cast<std::size_t>(it - b.hvas.begin())];
  if (m.path.empty() || m.perms.size() != 4 || m.perms[3] != 's') {
    return FailedPrecondition("memory backend '" + b.id + "' is anonymous or private memory")
        .WithHint("a shared memfd backend lets hvpatch map guest RAM: -object memory-backend-memfd,share=on");
  }
  HV_ASSIGN_OR_RETURN(std::unique_ptr<SharedRamMap> map, SharedRamMap::Open(pid_, m));
  // The mapping must hold what the gdbstub read (the VM is stopped during Setup).
  for (const MemorySample& s : truth) {
    const auto r = std::find_if(ranges.begin(), ranges.end(), [&](const HostRange& h) {
      return s.gpa >= h.gpa && s.gpa - h.gpa + s.bytes.size() <= h.size;
    });
    if (r == ranges.end()) continue;
    const std::uint64_t off = r->hva - base + (s.gpa - r->gpa);
    if (off + s.bytes.size() > map->size() || std::memcmp(map->data() + off, s.bytes.data(), s.bytes.size()) != 0) {
      return FailedPrecondition("'" + map->source() + "' differs from the gdbstub at gpa " + Hex(s.gpa));
    }
  }
  for (HostRange& r : ranges) {
    r.local = map->data() + (r.hva - base);
    if (map->writable_data() != nullptr) r.local_writable = map->writable_data() + (r.hva - base);
  }
  shared_maps_.push_back(std::move(map));
  return Status::Ok();
}

bool QemuVm::ReadsFromMapping() const { return mapped_; }

std::vector<DirectRange> QemuVm::DirectRam() const {
  std::vector<DirectRange> out;
  if (!mapped_) return out;
  for (const HostRange& r : ram_) out.push_back({r.gpa, r.size, r.local});  // ram_ is sorted
  return out;
}

void QemuVm::Prefetch(std::uint64_t gpa, std::size_t size) const {
  if (!mapped_ || size == 0) return;
  const HostRange* r = FindRange(gpa);
  if (r == nullptr || r->local == nullptr) return;
  // At most 8 lines: a hint for the next few reads, not a bulk copy.
  const std::uint64_t end = std::min<std::uint64_t>({gpa + size, r->end(), (gpa & ~std::uint64_t{63}) + 8 * 64});
  for (std::uint64_t at = gpa & ~std::uint64_t{63}; at < end; at += 64) {
    __builtin_prefetch(r->local + (std::max(at, r->gpa) - r->gpa));
  }
}

Status QemuVm::Pause() {
  if (pause_depth_ == 0) {
    no_migration_before_pause_ = std::exchange(prepared_no_migration_, false);
    if (!no_migration_before_pause_) TakeUncheckedWrites();  // checked in this pause's Resume()
    bool running = false;
    std::vector<std::vector<std::uint8_t>> regs;
    if (gdb_) {
      // One gdbstub round trip both stops a running VM and tells whether it ran (see
      // GdbStubClient::StopIfRunning): the same vm_stop as QMP `stop`, without the
      // query-status + stop round trips, and the stop reply is consumed on the way. Every
      // vCPU's registers come back in the same round trip (every commit reads them next).
      // Under TCG only: one CI run of the KVM lab lost its L2 guest right after a pause that read
      // the registers this way and a direct code write (cause not found, not reproduced), so
      // KVM keeps the register read in its own round trip (VcpuStates) until it is understood.
      if (!kvm_ && 2 * threads_.size() + 1 <= GdbStubClient::kMaxBatch) {
        HV_ASSIGN_OR_RETURN(running, gdb_->StopIfRunning(threads_, regs));
      } else {
        HV_ASSIGN_OR_RETURN(running, gdb_->StopIfRunning());
      }
    } else {
      HV_ASSIGN_OR_RETURN(running, Running());
      if (running) HV_RETURN_IF_ERROR(qmp_->Execute("stop").status());
    }
    resume_on_outer_ = running;
    (void)qmp_->TakeEvents();  // our STOP, and anything older: nobody reads them
    ForgetPauseState();        // nothing read before this pause may be trusted in it
    if (!regs.empty()) {
      // A bad one is left to VcpuStates(), which reads them again and reports the error.
      if (Result<std::vector<VcpuState>> states = DecodeVcpus(regs); states.ok()) vcpus_ = std::move(*states);
    }
  }
  ++pause_depth_;
  return Status::Ok();
}

void QemuVm::ForgetPauseState() {
  page_cache_.Clear();
  vcpus_.reset();
}

Status QemuVm::Resume() {
  if (pause_depth_ == 0) return FailedPrecondition("Resume() without a matching Pause()");
  if (--pause_depth_ > 0) return Status::Ok();
  ForgetPauseState();
  // A failure to mark is reported, but never keeps the guest stopped.
  Status marked;
  if (no_migration_before_pause_) {
    // Checked before this pause: whatever started since is caught by AfterResume().
    unchecked_writes_.insert(unchecked_writes_.end(), direct_writes_.begin(), direct_writes_.end());
    direct_writes_.clear();
    no_migration_before_pause_ = false;
  } else {
    marked = MarkDirectWritesForMigration();
  }
  if (!resume_on_outer_) return marked;
  resume_on_outer_ = false;
  Status cont = qmp_->Execute("cont").status();
  return marked.ok() ? cont : marked;
}

Result<std::pair<bool, std::string>> QemuVm::MigrationUnderWay() {
  HV_ASSIGN_OR_RETURN(json m, qmp_->Execute("query-migrate"));
  std::string status = JsonString(m, "status");
  const bool under_way = !(status.empty() || status == "none" || status == "completed" || status == "failed" ||
                           status == "cancelled");
  return std::make_pair(under_way, std::move(status));
}

void QemuVm::TakeUncheckedWrites() {
  direct_writes_.insert(direct_writes_.end(), unchecked_writes_.begin(), unchecked_writes_.end());
  unchecked_writes_.clear();
}

Status QemuVm::PrepareToPause() {
  if (pause_depth_ > 0) return Status::Ok();  // only the outermost pause is bracketed
  // Writes of an earlier pause still waiting for their check: this query serves them too.
  HV_ASSIGN_OR_RETURN(auto migration, MigrationUnderWay());
  prepared_no_migration_ = !migration.first;  // taken by the next outermost Pause()
  if (migration.first) {
    TakeUncheckedWrites();  // marked in the coming pause, with its own writes
  } else {
    unchecked_writes_.clear();
  }
  return Status::Ok();
}

Status QemuVm::AfterResume() {
  if (pause_depth_ > 0 || unchecked_writes_.empty()) return Status::Ok();
  // No migration was under way before the pause. One that started since began with every page
  // dirty (ram_save_setup) but may have sent a page before our write reached it; it cannot
  // have finished: that takes a full pass over guest RAM, and this query follows the resume
  // within one QMP round trip. So "under way" now is the only case left to handle.
  HV_ASSIGN_OR_RETURN(auto migration, MigrationUnderWay());
  if (!migration.first) {
    unchecked_writes_.clear();
    return Status::Ok();
  }
  HV_RETURN_IF_ERROR(Pause().WithContext("pausing to mark hvpatch's writes for the migration ('" +
                                         migration.second + "')"));
  TakeUncheckedWrites();
  return Resume();  // no_migration_before_pause_ is false: Resume() marks them
}

Status QemuVm::ForceResume() {
  pause_depth_ = 0;
  resume_on_outer_ = false;
  no_migration_before_pause_ = false;
  ForgetPauseState();
  Status marked = MarkDirectWritesForMigration();
  Status cont = qmp_->Execute("cont").status();
  return marked.ok() ? cont : marked;
}

Status QemuVm::RequirePaused() {
  if (pause_depth_ > 0) return Status::Ok();
  HV_ASSIGN_OR_RETURN(const bool running, Running());
  if (running) return FailedPrecondition("the VM is running: Pause() it first");
  return Status::Ok();
}

Result<std::vector<VcpuState>> QemuVm::VcpuStates() {
  // No vCPU runs between our Pause() and Resume(): one read per pause serves every caller
  // (the commit, then each WriteCode).
  if (pause_depth_ > 0 && vcpus_) return *vcpus_;
  HV_RETURN_IF_ERROR(RequirePaused());
  // All vCPUs in one gdbstub round trip (Hg + g each, pipelined).
  HV_ASSIGN_OR_RETURN(std::vector<std::vector<std::uint8_t>> regs, gdb_->ReadRegistersOf(threads_));
  HV_ASSIGN_OR_RETURN(std::vector<VcpuState> out, DecodeVcpus(regs));
  if (pause_depth_ > 0) vcpus_ = out;
  return out;
}

Result<std::vector<VcpuState>> QemuVm::DecodeVcpus(const std::vector<std::vector<std::uint8_t>>& regs) const {
  std::vector<VcpuState> out;
  for (std::size_t i = 0; i < regs.size(); ++i) {
    HV_ASSIGN_OR_RETURN(VcpuState v, DecodeVcpu(static_cast<int>(i), regs[i]));
    out.push_back(v);
  }
  return out;
}

const HostRange* QemuVm::FindRange(std::uint64_t gpa) const {
  for (const auto* set : {&ram_, &extra_}) {
    for (const HostRange& r : *set) {
      if (gpa >= r.gpa && gpa < r.end()) return &r;
    }
  }
  return nullptr;
}

Status QemuVm::HostTransfer(std::uint64_t gpa, std::uint8_t* buf, std::size_t len, bool write) const {
  std::size_t done = 0;
  while (done < len) {
    const std::uint64_t at = gpa + done;
    const HostRange* r = FindRange(at);
    if (r == nullptr || at < gpa) {
      return InvalidArgument("guest-physical address " + Hex(at) + " is not guest RAM");
    }
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len - done, r->end() - at));
    if (!write && r->local != nullptr) {
      std::memcpy(buf + done, r->local + (at - r->gpa), n);
      done += n;
      continue;
    }
    if (write && r->local_writable != nullptr) {
      // Like process_vm_writev into QEMU: the same shared pages, and QEMU's dirty log sees
      // neither (see WritePhys).
      std::memcpy(r->local_writable + (at - r->gpa), buf + done, n);
      done += n;
      continue;
    }
    iovec local{buf + done, n};
    iovec remote{reinterpret_cast<void*>(r->hva + (at - r->gpa)), n};
    const ssize_t got = write ? process_vm_writev(pid_, &local, 1, &remote, 1, 0)
                              : process_vm_readv(pid_, &local, 1, &remote, 1, 0);
    if (got <= 0) {
      return ErrnoError(std::string(write ? "process_vm_writev" : "process_vm_readv") + " of " +
                            std::to_string(n) + " bytes at " + Hex(at) + " in QEMU pid " + std::to_string(pid_),
                        got == 0 ? EIO : errno);
    }
    done += static_cast<std::size_t>(got);
  }
  return Status::Ok();
}

Status QemuVm::ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const {
  // From a mapping, a read is a memcpy already: a page cache would only add a copy.
  if (pause_depth_ == 0 || ReadsFromMapping()) return HostTransfer(gpa, out.data(), out.size(), false);
  return page_cache_.Read(gpa, out, [this](std::uint64_t at, std::span<std::uint8_t> buf) {
    return HostTransfer(at, buf.data(), buf.size(), false);
  });
}

Status QemuVm::WritePhys(std::uint64_t gpa, std::span<const std::uint8_t> data) {
  page_cache_.Invalidate(gpa, data.size());
  HV_RETURN_IF_ERROR(HostTransfer(gpa, const_cast<std::uint8_t*>(data.data()), data.size(), true));
  // Like a direct code write, QEMU's dirty log does not see it (arena pages, the arena's page
  // tables, the kernel's module structures): marked for a migration in progress at Resume, or
  // now when nothing is paused.
  direct_writes_.emplace_back(gpa, data.size());
  if (pause_depth_ == 0) return MarkDirectWritesForMigration();
  return Status::Ok();
}

std::vector<PhysRange> QemuVm::RamRanges() const {
  std::vector<PhysRange> out;
  for (const HostRange& r : ram_) out.push_back(PhysRange{r.gpa, r.size});
  return out;
}

Status QemuVm::WriteCode(std::uint64_t va, std::span<const std::uint8_t> data) {
  if (data.size() > kMaxCodeWrite) {
    return InvalidArgument("code write of " + std::to_string(data.size()) + " bytes exceeds 1 MiB");
  }
  HV_RETURN_IF_ERROR(RequirePaused());
  // Kernel mappings are shared by every kernel page table, but a vCPU in user mode may run
  // on a PTI user page table that maps almost no kernel text: take a vCPU in the kernel.
  HV_ASSIGN_OR_RETURN(std::vector<VcpuState> vcpus, VcpuStates());
  const auto in_kernel = std::find_if(vcpus.begin(), vcpus.end(), [](const VcpuState& v) {
    return v.in_kernel() && (v.cr0 & (1u << 31));
  });
  if (in_kernel == vcpus.end()) {
    return FailedPrecondition("no vCPU runs in the kernel with paging on").WithHint("retry the pause");
  }
  const VcpuState& v0 = *in_kernel;
  const PagingMode mode{v0.cr3, v0.la57(), ((v0.efer >> 11) & 1) != 0};
  std::size_t done = 0;
  std::vector<std::uint8_t> back;
  while (done < data.size()) {
    Result<Translation> t = TranslateVirt(*this, mode, va + done);
    if (!t.ok()) return t.status().WithContext("writing code at " + Hex(va + done));
    const std::uint64_t in_page = t->page_size - ((va + done) & (t->page_size - 1));
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(in_page, data.size() - done));
    page_cache_.Invalidate(t->gpa, n);
    Status s = direct_code_writes_
                   ? HostTransfer(t->gpa, const_cast<std::uint8_t*>(data.data()) + done, n, true)
                   : gdb_->WriteMemory(t->gpa, data.subspan(done, n));
    if (direct_code_writes_ && s.ok()) direct_writes_.emplace_back(t->gpa, n);
    if (!s.ok()) return s.WithContext("writing code at " + Hex(va + done));
    back.resize(n);
    // Straight from guest RAM, never from the page cache: this checks what QEMU wrote.
    HV_RETURN_IF_ERROR(HostTransfer(t->gpa, back.data(), n, false));
    if (!std::equal(back.begin(), back.end(), data.begin() + static_cast<std::ptrdiff_t>(done))) {
      return Internal("code at " + Hex(va + done) + " (gpa " + Hex(t->gpa) + ") reads back differently");
    }
    done += n;
  }
  return Status::Ok();
}

Status QemuVm::MarkDirectWritesForMigration() {
  if (direct_writes_.empty()) return Status::Ok();
  const auto writes = std::move(direct_writes_);
  direct_writes_.clear();
  // QEMU marks a page dirty for migration when QEMU itself writes it (the gdbstub's write
  // included, invalidate_and_set_dirty in softmmu/physmem.c); KVM's dirty log sees only the
  // guest's own writes. A write from our process is seen by neither. A migration that starts
  // after this check begins with every page dirty (ram_save_setup), so only one already under
  // way needs the pages marked, and the same bytes written through the gdbstub do that.
  HV_ASSIGN_OR_RETURN(auto migration, MigrationUnderWay());
  if (!migration.first) return Status::Ok();
  const std::string& status = migration.second;
  std::vector<std::uint8_t> bytes;
  for (const auto& [gpa, n] : writes) {
    bytes.resize(n);
    HV_RETURN_IF_ERROR(HostTransfer(gpa, bytes.data(), n, false));
    Status s = gdb_->WriteMemory(gpa, bytes);
    if (!s.ok()) return s.WithContext("marking gpa " + Hex(gpa) + " dirty for the migration ('" + status + "')");
  }
  return Status::Ok();
}

Result<ArenaDevice> QemuVm::Arena() {
  if (arena_) return *arena_;
  if (!options_.attach_arena || arena_status_.code() != Code::kNotFound) return arena_status_;
  HV_RETURN_IF_ERROR(AttachArena());
  return Arena();
}

Result<ArenaDevice> QemuVm::WaitForArena(int timeout_ms) {
  // The guest kernel's ACPI PCI hot-plug handler assigns BAR2 shortly after device_add (lab
  // notes: at once on the test guest; slower under load).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    HV_RETURN_IF_ERROR(RefreshArena());
    if (arena_) return *arena_;
    if (std::chrono::steady_clock::now() > deadline) {
      return Status(Code::kDeadlineExceeded,
                    "the hot-plugged arena has no usable BAR after " + std::to_string(timeout_ms) +
                        " ms: " + arena_status_.message(),
                    "the guest kernel must handle ACPI PCI hot-plug; or start the VM with the arena");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

Status QemuVm::AttachArena() {
  const std::string id = "hvpatch-arena";
  // Named after the VM, so two VMs never share one: QEMU without -uuid reports all zeros.
  const bool no_uuid = uuid_.empty() || uuid_ == "00000000-0000-0000-0000-000000000000";
  const std::string path = "/dev/shm/hvpatch-arena-" + (no_uuid ? "pid" + std::to_string(pid_) : uuid_);
  Status s = qmp_->Execute("object-add", json{{"qom-type", "memory-backend-file"},
                                              {"id", id},
                                              {"size", 2u << 20},
                                              {"mem-path", path},
                                              {"share", true}})
                 .status();
  if (!s.ok()) return s.WithContext("hot-plugging the arena");
  s = qmp_->Execute("device_add", json{{"driver", "ivshmem-plain"}, {"id", id}, {"memdev", id}, {"master", "on"}})
          .status();
  if (!s.ok()) {
    (void)qmp_->Execute("object-del", json{{"id", id}});
    return s.WithContext("hot-plugging the arena")
        .WithHint("QEMU needs ACPI PCI hot-plug (no -no-acpi); or start it with the arena device");
  }
  HV_ASSIGN_OR_RETURN(ArenaDevice a, WaitForArena(options_.arena_bar_timeout_ms));
  if (options_.note) {
    options_.note("attached an arena to " + Describe() + " (ivshmem-plain 2 MiB, master=on, " + path +
                  "), BAR2 at " + Hex(a.bar_gpa));
  }
  return Status::Ok();
}

std::string QemuVm::Identity() const {
  if (!uuid_.empty() && uuid_ != "00000000-0000-0000-0000-000000000000") return "qemu-uuid:" + uuid_;
  if (qmp_path_.empty()) return "qemu-pid:" + std::to_string(pid_);
  char real[PATH_MAX];
  const std::string path = realpath(qmp_path_.c_str(), real) != nullptr ? std::string(real) : qmp_path_;
  return "qemu-qmp:" + path;
}

std::string QemuVm::Describe() const {
  return "QEMU pid " + std::to_string(pid_) + " " + name_;
}

Result<std::string> QemuVm::AgentSocket() {
  HV_ASSIGN_OR_RETURN(PortSocket port, FindPortSocket(*qmp_, kAgentPort));
  if (!port.guest_open) {
    // Known at once from QEMU, instead of a sync handshake nobody answers (--agent-timeout-ms).
    return Unavailable(std::string("the guest has not opened virtio-serial port '") + kAgentPort +
                       "' (query-chardev frontend-open is false): no agent runs in the guest")
        .WithHint("start hvpatch-agent in the guest, or pass --no-agent");
  }
  return port.path;
}

}  // namespace hv::vmm
