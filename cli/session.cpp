#include "cli/session.h"

#include "cli/render.h"
#include "vmm/cached_phys_memory.h"

#include <limits.h>
#include <signal.h>
#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <future>

namespace hv::cli {

void Progress(const GlobalOptions& options, const std::string& line) {
  if (!options.json) std::fprintf(stderr, "hvpatch: %s\n", line.c_str());
}

patcher::RetryPolicy RetryFrom(const GlobalOptions& options) {
  return {options.tries, std::chrono::milliseconds(options.retry_delay_ms)};
}

patcher::StepHook TestStopHook() {
  const char* at = std::getenv("HVPATCH_TEST_STOP_AT");
  if (!at || !*at) return {};
  std::string step = at;
  return [step](std::string_view s) {
    if (s == step) {
      std::fprintf(stderr, "hvpatch: test hook: stopping at step '%s'\n", step.c_str());
      std::fflush(stderr);
      raise(SIGSTOP);
    }
  };
}

Session::~Session() {
  if (kernel && kernel_cache) (void)kernel->SaveBtfAnswers(*kernel_cache);
}

namespace {

// The domain as a lock name: a QMP socket by its real path, so two spellings of one path meet.
std::string DomainLockName(const GlobalOptions& options, const std::string& domain) {
  if (domain.rfind("qmp:", 0) == 0) {
    char real[PATH_MAX];
    const std::string path = domain.substr(4);
    return "domain-qmp:" + std::string(realpath(path.c_str(), real) ? real : path.c_str());
  }
  return "domain-" + options.uri + ":" + domain;
}

}  // namespace

Result<std::unique_ptr<Session>> OpenSession(const GlobalOptions& options, const std::string& domain,
                                             bool exclusive) {
  auto s = std::make_unique<Session>();
  s->domain = domain;
  const std::string dir = StateDir(options.state_dir);
  {
    // Before connecting: QEMU serves one QMP client at a time and leaves the next connection
    // waiting without a greeting, so a second hvpatch would time out in the QMP handshake
    // (ignoring --lock-wait-ms, never naming the holder) instead of waiting here. Read-only
    // commands (info) wait too, but run without the lock where the state directory is not
    // writable for them.
    auto lock = VmLock::Acquire(dir + "/" + StateFileStem(DomainLockName(options, domain)) + ".lock", domain,
                                std::chrono::milliseconds(options.lock_wait_ms));
    if (lock.ok()) {
      s->domain_lock.emplace(std::move(*lock));
    } else if (exclusive || lock.status().code() == Code::kBusy) {
      return lock.status();
    }
  }
  // Only a command that takes the lock may change the domain (hot-plug the arena).
  HV_ASSIGN_OR_RETURN(s->vm, vmm::Open(domain, {options.uri, options.attach_arena && exclusive,
                                                [&options](const std::string& n) { Progress(options, n); }}));
  const std::string stem = StateFileStem(s->vm->Identity());
  if (exclusive) {
    HV_ASSIGN_OR_RETURN(VmLock lock, VmLock::Acquire(dir + "/" + stem + ".lock", domain,
                                                     std::chrono::milliseconds(options.lock_wait_ms)));
    s->lock.emplace(std::move(lock));
  }
  // The agent's sync handshake (100-200 ms under TCG) runs on its own thread while the guest
  // kernel model is built below; QEMU says at once whether the guest opened the port at all
  // (QemuVm::AgentSocket), so an absent agent costs no --agent-timeout-ms.
  std::future<Result<std::unique_ptr<agent::AgentClient>>> agent_connect;
  if (!options.agent) {
    s->agent_note = "agent not used (--no-agent)";
  } else if (auto path = s->vm->AgentSocket(); !path.ok()) {
    s->agent_note = "no agent: " + path.status().message();
  } else {
    agent::AgentClientOptions ao;
    ao.sync_timeout_ms = options.agent_timeout_ms;
    agent_connect = std::async(std::launch::async, [p = *path, ao] { return agent::AgentClient::Connect(p, ao); });
  }
  auto join_agent = [&] {
    if (!agent_connect.valid()) return;
    auto client = agent_connect.get();
    if (client.ok()) {
      s->agent = std::make_unique<AgentLink>(std::move(*client));
    } else {
      s->agent_note = "no agent: " + client.status().message();
    }
  };
  // vCPU state (for the paging root) needs a pause; the model itself is read with the guest
  // running: kallsyms, BTF and the module list do not move, and every commit re-walks the tasks
  // inside its own pause.
  HV_RETURN_IF_ERROR(s->vm->Pause());
  auto vcpus = s->vm->VcpuStates();
  HV_RETURN_IF_ERROR(s->vm->Resume());
  if (!vcpus.ok()) return vcpus.status().WithContext("reading vCPU state");
  patcher::GuestKernelOptions ko;
  ko.walk_tasks = false;
  ko.kaslr_offset = options.kaslr_offset;
  s->kernel_cache = std::make_unique<KernelCacheFile>(dir + "/cache");
  ko.cache = s->kernel_cache.get();
  // A BTF question the cached answers lack is parsed later from the VM itself: build_mem below
  // dies with this function, the VM lives as long as the kernel model (Session's order).
  ko.memory_after_build = s->vm.get();
  // Where vmcoreinfo was last time: one page read instead of a scan of guest RAM (~14% of an
  // apply's CPU). The patcher checks it against the vCPUs' page tables before trusting it.
  const VmcoreinfoHintFile hint_file(dir + "/" + stem + ".vmcoreinfo");
  ko.vmcoreinfo_hint = hint_file.Load();
  if (!options.system_map.empty()) {
    HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> map, ReadPatchFile(options.system_map));
    ko.system_map.assign(map.begin(), map.end());
  }
  // Through a page cache: the model's many small reads of the running guest (see
  // vmm/cached_phys_memory.h). Only for the build: the commit reads in its own pause.
  const vmm::CachedPhysMemory build_mem(*s->vm);
  auto kernel = patcher::GuestKernel::Build(build_mem, *vcpus, ko);
  join_agent();  // its kallsyms are the fallback when the tables in memory cannot be read
  if (!kernel.ok() && s->agent) {
    // Slow under TCG (the whole /proc/kallsyms), so only when memory alone did not do.
    auto text = s->agent->KallsymsText();
    if (text.ok()) {
      Progress(options, "symbols from guest memory failed (" + kernel.status().message() + "); using the agent's kallsyms");
      ko.agent_kallsyms = std::move(*text);
      kernel = patcher::GuestKernel::Build(build_mem, *vcpus, ko);
    }
  }
  if (!kernel.ok()) return kernel.status().WithContext("reading the guest kernel of " + s->vm->Describe());
  s->kernel = std::move(*kernel);
  if (const std::uint64_t found = s->kernel->vmcoreinfo().found_at(); found != ko.vmcoreinfo_hint) {
    // Best effort, like the kallsyms cache: a read-only state directory only costs a scan.
    if (Status saved = hint_file.Save(found); !saved.ok()) s->vmcoreinfo_hint_note = saved.message();
  }
  HV_ASSIGN_OR_RETURN(s->view, patcher::GuestKernelView::Create(*s->kernel));
  s->stacks = std::make_unique<patcher::GuestKernelStacks>(*s->kernel, *s->vm);
  s->ledger = std::make_unique<LedgerFile>(dir + "/" + stem + ".json");
  s->engine = std::make_unique<patcher::PatchEngine>(*s->vm, *s->view, *s->stacks, *s->ledger,
                                                     s->agent.get(), TestStopHook());
  if (exclusive) {
    HV_ASSIGN_OR_RETURN(s->recovery, s->engine->Recover());
    for (const auto& n : s->recovery) Progress(options, n);
    if (!s->recovery.empty() && s->agent) {
      if (auto l = s->ledger->Load(); l.ok()) (void)s->agent->Publish(*l);
    }
  }
  return s;
}

}  // namespace hv::cli
