// hvpatch libvirt-hook DOMAIN OP SUBOP EXTRA: the qemu-driver hook libvirtd runs (installed as
// /etc/libvirt/hooks/qemu.d/hvpatch), with the domain's XML on stdin.
//
// libvirtd waits for a hook (and for its stdout/stderr to close) before it goes on, and a hook
// must not call back into libvirt meanwhile (lab notes): on `started begin` the hook only reads
// the domain's patch set, then forks a detached child and exits 0 at once. The child waits
// until the guest kernel can be read (vmcoreinfo), then re-applies the set in stack order,
// logging to the domain's log in the state directory and to syslog. On `release end` it removes
// the arena's backing file (RemoveArenaFile). Nothing here can fail or delay a start or a stop:
// every path exits 0.
#include <fcntl.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "cli/command.h"
#include "cli/domain_patch_set.h"
#include "cli/ledger_file.h"
#include "cli/module_release.h"
#include "cli/render.h"
#include "cli/session.h"
#include "vmm/libvirt_vm.h"
#include "vmm/page_walk.h"

namespace hv::cli {

namespace {

constexpr std::size_t kMaxXml = 16u << 20;

// The <uuid> of the domain XML libvirt gives on stdin.
std::string UuidFromXml(const std::string& xml) {
  const std::size_t b = xml.find("<uuid>");
  const std::size_t e = xml.find("</uuid>");
  if (b == std::string::npos || e == std::string::npos || e < b) return {};
  return xml.substr(b + 6, e - b - 6);
}

// How long the child waits for the guest kernel (HVPATCH_HOOK_WAIT_S, default 120 s).
int WaitSeconds() {
  const char* v = std::getenv("HVPATCH_HOOK_WAIT_S");
  const int s = v ? std::atoi(v) : 0;
  return s > 0 ? s : 120;
}

void Reapply(const GlobalOptions& o, const std::string& domain, const DomainPatchSet& set,
             const std::vector<PatchSetEntry>& entries) {
  auto log = [&](const std::string& line) {
    set.Log("hook: " + line);
    syslog(LOG_INFO, "domain '%s': %s", domain.c_str(), line.c_str());
  };
  std::string names;
  for (const auto& e : entries) names += " " + e.name;
  log("domain started; re-applying its patch set:" + names);
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + std::chrono::seconds(WaitSeconds());
  // The guest kernel is readable once its vmcoreinfo is: OpenSession reads it, and fails
  // while the guest still boots.
  Result<std::unique_ptr<Session>> session = Unavailable("not tried");
  while (true) {
    session = OpenSession(o, domain, true);
    if (session.ok() || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (!session.ok()) {
    log("gave up after " + std::to_string(WaitSeconds()) + " s, nothing applied: " + session.status().ToString());
    return;
  }
  // Readable is not booted: until kernel_init has run mark_readonly(), the boot may still walk
  // every kernel page table (CONFIG_DEBUG_WX's ptdump), and ptdump dereferences the arena's page
  // table through the direct map, which does not cover the arena BAR: the guest oopses. So wait
  // for system_state == SYSTEM_RUNNING (3 in Linux 6.1's enum system_states), set right after.
  if (auto sym = (*session)->kernel->FindSymbol("", "system_state"); sym.ok()) {
    std::uint32_t state = 0;
    while (true) {
      std::uint8_t raw[4] = {};
      Status st = vmm::ReadVirt(*(*session)->vm, (*session)->kernel->paging(), sym->address, raw);
      state = static_cast<std::uint32_t>(raw[0] | raw[1] << 8 | raw[2] << 16 | raw[3] << 24);
      if ((st.ok() && state >= 3) || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    if (state < 3) {
      log("gave up after " + std::to_string(WaitSeconds()) + " s: the guest kernel has not finished booting "
          "(system_state " + std::to_string(state) + "), nothing applied");
      return;
    }
  } else {
    log("no symbol 'system_state' in the guest kernel: not waiting for the end of its boot");
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", waited);
  log(std::string("guest kernel booted (read from its memory) after ") + buf + " s");
  // A restored or migrated domain keeps its patches: they are in this boot's ledger.
  std::vector<std::string> live;
  if (auto listed = (*session)->engine->List(); listed.ok()) {
    for (const auto& p : *listed) live.push_back(p.patch.name);
  }
  for (const auto& e : entries) {
    if (std::find(live.begin(), live.end(), e.name) != live.end()) {
      log("'" + e.name + "' is live already (a restored or migrated domain keeps its patches)");
      continue;
    }
    auto bytes = ReadPatchFile(e.file);
    if (!bytes.ok()) {
      log("'" + e.name + "' left out: " + bytes.status().ToString());
      continue;
    }
    if (Status s = CheckBuiltFor(*bytes, e.file, (*session)->kernel->release()); !s.ok()) {
      log("'" + e.name + "' left out: " + s.ToString());
      continue;
    }
    patcher::ApplyRequest req;
    req.patch_path = e.file;
    req.module = std::move(*bytes);
    req.retry = RetryFrom(o);
    auto r = (*session)->engine->Apply(req);
    if (!r.ok()) {
      // e.g. the guest now runs another kernel build: reported, never forced.
      log("'" + e.name + "' left out: " + r.status().ToString());
      continue;
    }
    log("re-applied '" + e.name + "': pause " + std::to_string(r->commit.pause_us) + " us, " +
        std::to_string(r->commit.tries) + " tr" + (r->commit.tries == 1 ? "y" : "ies") +
        (r->confirmed ? ", confirmed by the agent" : ""));
  }
}

// `release end`: QEMU is gone. libvirt leaves a <shmem> device's backing file in /dev/shm, even
// after undefine: 2 MiB of the host's RAM per domain that ever had an arena. Nothing needs its
// contents now. Save/restore and migration carry the arena in their stream (role='master'), and
// a new QEMU is another boot whether the file is kept or not (docs/transaction.md, "Boot
// identity"). Only a file the domain's own XML names is removed.
void RemoveArenaFile(const GlobalOptions& options, const std::string& domain, const std::string& uuid,
                     const std::string& xml) {
  const std::string path = vmm::ArenaShmemPath(uuid);
  if (path.empty() || xml.find("'" + vmm::ArenaShmemName(uuid) + "'") == std::string::npos) return;
  if (unlink(path.c_str()) != 0) return;  // ENOENT: QEMU never created it (a failed start)
  const std::string line = "hook: domain released; removed its arena file " + path;
  DomainPatchSet(StateDir(options.state_dir), uuid).Log(line);
  openlog("hvpatch", LOG_PID, LOG_DAEMON);
  syslog(LOG_INFO, "domain '%s': %s", domain.c_str(), line.c_str());
  closelog();
}

}  // namespace

extern const Command kLibvirtHookCommand;

static int RunLibvirtHook(const GlobalOptions& options, const std::vector<std::string>& args) {
  std::string xml;
  char buf[65536];
  for (ssize_t n; (n = read(0, buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || xml.size() > kMaxXml) break;
    xml.append(buf, static_cast<std::size_t>(n));
  }
  if (args.size() < 3) return kExitOk;
  if (args[1] == "release" && args[2] == "end") {
    RemoveArenaFile(options, args[0], UuidFromXml(xml), xml);
    return kExitOk;
  }
  if (args[1] != "started" || args[2] != "begin") return kExitOk;
  const std::string domain = args[0];
  const std::string uuid = UuidFromXml(xml);
  if (uuid.empty()) return kExitOk;
  GlobalOptions o = options;
  o.json = false;  // progress lines go to the domain's log
  DomainPatchSet set(StateDir(o.state_dir), uuid);
  auto entries = set.Load();
  if (!entries.ok()) {
    set.Log("hook: cannot read the patch set: " + entries.status().ToString());
    return kExitOk;
  }
  if (entries->empty()) return kExitOk;
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child < 0) {
    set.Log("hook: fork failed, nothing re-applied");
    return kExitOk;
  }
  if (child > 0) {
    int st;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR) {
    }
    return kExitOk;
  }
  // The child: a new session, and a grandchild that libvirtd never waits for (init reaps it).
  setsid();
  if (fork() != 0) _exit(0);
  const int devnull = open("/dev/null", O_RDONLY);
  const int logfd = open(set.log_path().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (devnull >= 0) dup2(devnull, 0);
  if (logfd >= 0) {
    dup2(logfd, 1);
    dup2(logfd, 2);
  }
  // libvirtd reads the hook's output until every copy of its pipes is closed.
  for (int fd = 3; fd < 1024; ++fd) close(fd);
  openlog("hvpatch", LOG_PID, LOG_DAEMON);
  Reapply(o, domain, set, *entries);
  std::fflush(nullptr);
  _exit(0);
}

const Command kLibvirtHookCommand = {"libvirt-hook", RunLibvirtHook, "libvirt-hook DOMAIN OP SUBOP EXTRA",
                                     "run by libvirtd as its qemu hook: re-applies a domain's patch set at start, removes "
                                     "its arena file at release"};

}  // namespace hv::cli
