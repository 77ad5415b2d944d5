// bench/guest_kernel: the time to build the guest kernel model (GuestKernel::Build: vmcoreinfo
// scan, kallsyms decode, BTF parse, module symbols, task walk) on a paused test guest, the time
// to read vmcoreinfo at its location hint instead of scanning (Vmcoreinfo::ReadAt), and the
// time of a task walk alone (what each commit repeats), each also given as a ratio to a bare QMP
// `stop`+`cont` measured in the same run (see bench/README.md). Then the same Build as a later
// hvpatch command makes it, with the warm-start cache of a state directory (a temp directory,
// filled by one Build first): kallsyms from its entry, BTF from its recorded answers.
//   guest_kernel [--iterations N] [qmp:PATH]
// Without a target it boots the test guest (tests/harness), starts a 5-thread process in it and
// stops the guest afterwards.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <stdlib.h>

#include "bench/bench_support.h"
#include "cli/kernel_cache_file.h"
#include "patcher/guest_kernel.h"
#include "tests/harness/test_vm.h"
#include "vmm/qemu_vm.h"

namespace {

using Clock = std::chrono::steady_clock;

using hv::bench::Median;

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

int Fail(const hv::Status& s) {
  std::fprintf(stderr, "guest_kernel: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  hv::bench::BenchArgs args;
  if (!hv::bench::ParseBenchArgs(argc, argv, "guest_kernel", 10, 3, &args)) return 2;
  auto guest = hv::bench::StartGuestUnlessGiven(args);
  if (!guest.ok()) return Fail(guest.status());
  if (*guest) {
    // A multi-threaded process, so the task walk has threads beyond the leaders.
    if (auto r = (*guest)->Check("threads 5 > /dev/null 2>&1 & sleep 1"); !r.ok()) return Fail(r.status());
  }
  const int iterations = args.iterations;
  const std::string target = args.qmp_path;
  auto vm = hv::vmm::QemuVm::Connect(target);
  if (!vm.ok()) return Fail(vm.status());
  hv::vmm::QemuVm& q = **vm;

  std::vector<double> bare, total, vmcoreinfo, kallsyms, btf, modules, tasks, build_wall, walk, hinted;
  hv::patcher::GuestKernelSummary summary;
  for (int i = 0; i < iterations; ++i) {
    auto t0 = Clock::now();
    if (auto s = q.qmp().Execute("stop"); !s.ok()) return Fail(s.status());
    if (auto s = q.qmp().Execute("cont"); !s.ok()) return Fail(s.status());
    bare.push_back(Ms(t0));

    if (auto s = q.Pause(); !s.ok()) return Fail(s);
    auto vcpus = q.VcpuStates();
    if (!vcpus.ok()) return Fail(vcpus.status());
    t0 = Clock::now();
    auto k = hv::patcher::GuestKernel::Build(q, *vcpus);
    build_wall.push_back(Ms(t0));
    if (!k.ok()) {
      (void)q.Resume();
      return Fail(k.status());
    }
    // What a later process pays with the location hint the CLI keeps (GuestKernelOptions).
    t0 = Clock::now();
    auto again = hv::patcher::Vmcoreinfo::ReadAt(q, (*k)->vmcoreinfo().found_at(), *vcpus);
    hinted.push_back(Ms(t0));
    if (!again.ok()) {
      (void)q.Resume();
      return Fail(again.status().WithContext("re-reading vmcoreinfo at its hint"));
    }
    t0 = Clock::now();
    auto snap = (*k)->WalkTasks(q);
    walk.push_back(Ms(t0));
    if (auto s = q.Resume(); !s.ok()) return Fail(s);
    if (!snap.ok()) return Fail(snap.status());
    const hv::patcher::GuestKernelTimings& t = (*k)->timings();
    vmcoreinfo.push_back(t.vmcoreinfo_ms);
    kallsyms.push_back(t.kallsyms_ms);
    btf.push_back(t.btf_ms);
    modules.push_back(t.modules_ms);
    tasks.push_back(t.tasks_ms);
    total.push_back(t.total_ms);
    summary = (*k)->Summary();
  }
  const double base = Median(bare);
  std::printf("guest: %s, %zu symbols (%zu vmlinux), %zu modules, %zu tasks, %d CPUs\n",
              summary.release.c_str(), summary.symbols, summary.vmlinux_symbols,
              summary.modules.size(), summary.tasks, summary.cpus);
  const std::string header = "measure (median of " + std::to_string(iterations) + ")";
  std::printf("%-34s %10s %18s\n", header.c_str(), "ms", "ratio to stop+cont");
  auto row = [&](const char* name, const std::vector<double>& v) {
    std::printf("%-34s %10.2f %18.2f\n", name, Median(v), base > 0 ? Median(v) / base : 0);
  };
  row("bare QMP stop+cont", bare);
  row("GuestKernel::Build (wall)", build_wall);
  row("  vmcoreinfo scan", vmcoreinfo);
  row("  (vmcoreinfo from the hint)", hinted);
  row("  kallsyms decode + table", kallsyms);
  row("  BTF read + parse", btf);
  row("  module symbols", modules);
  row("  task walk", tasks);
  row("WalkTasks alone (per commit)", walk);
  std::printf("%-34s %10.2f %18.2f\n", "first Build of the run (cold)", build_wall.front(),
              base > 0 ? build_wall.front() / base : 0);
  std::printf("  cold phases: vmcoreinfo %.2f, kallsyms %.2f, BTF %.2f, modules %.2f, tasks %.2f ms\n",
              vmcoreinfo.front(), kallsyms.front(), btf.front(), modules.front(), tasks.front());
  std::printf("goal: Build <= 200 ms: %s\n", Median(build_wall) <= 200 ? "met" : "NOT met");

  // The warm start: what every hvpatch command after the first one on this kernel builds.
  char dir[] = "/tmp/hvpatch-bench-cache-XXXXXX";
  if (!mkdtemp(dir)) return Fail(hv::ErrnoError("creating a temp directory", errno));
  hv::cli::KernelCacheFile store(std::string(dir) + "/cache");
  hv::patcher::GuestKernelOptions warm_options;
  warm_options.cache = &store;
  warm_options.memory_after_build = &q;
  std::vector<double> warm_wall, warm_kallsyms, warm_btf;
  std::string btf_cache;
  for (int i = 0; i <= iterations; ++i) {  // the first one fills the cache
    if (auto s = q.Pause(); !s.ok()) return Fail(s);
    auto vcpus = q.VcpuStates();
    if (!vcpus.ok()) return Fail(vcpus.status());
    const auto t0 = Clock::now();
    auto k = hv::patcher::GuestKernel::Build(q, *vcpus, warm_options);
    const double ms = Ms(t0);
    if (auto s = q.Resume(); !s.ok()) return Fail(s);
    if (!k.ok()) return Fail(k.status());
    if (i == 0) continue;
    warm_wall.push_back(ms);
    warm_kallsyms.push_back((*k)->timings().kallsyms_ms);
    warm_btf.push_back((*k)->timings().btf_ms);
    btf_cache = (*k)->Summary().btf_cache;
  }
  (void)std::system(("rm -rf " + std::string(dir)).c_str());
  std::printf("warm start (kallsyms entry + BTF answers, BTF cache: %s)\n", btf_cache.c_str());
  row("GuestKernel::Build warm (wall)", warm_wall);
  row("  kallsyms from the entry", warm_kallsyms);
  row("  BTF from the answers", warm_btf);
  return 0;
}
