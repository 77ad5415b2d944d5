// bench/vm_access: what the QEMU backend of vmm::Vm costs, each figure divided by a bare QMP
// `stop`+`cont` round trip measured in the same run on the same VM (see bench/README.md).
//   vm_access [--iterations N] [qmp:PATH]
// Without a target it boots the test guest (tests/harness) and stops it afterwards.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_support.h"
#include "tests/harness/test_vm.h"
#include "vmm/qemu_vm.h"

namespace {

using Clock = std::chrono::steady_clock;

double MedianMs(int n, const std::function<hv::Status()>& body, hv::Status& failed) {
  std::vector<double> ms;
  for (int i = 0; i < n && failed.ok(); ++i) {
    const auto t0 = Clock::now();
    failed = body();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms.empty() ? 0 : ms[ms.size() / 2];
}

int Fail(const hv::Status& s) {
  std::fprintf(stderr, "vm_access: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  hv::bench::BenchArgs args;
  if (!hv::bench::ParseBenchArgs(argc, argv, "vm_access", 20, 10, &args)) return 2;
  auto guest = hv::bench::StartGuestUnlessGiven(args);
  if (!guest.ok()) return Fail(guest.status());
  const int iterations = args.iterations;
  const std::string target = args.qmp_path;
  const auto t_open = Clock::now();
  auto vm = hv::vmm::QemuVm::Connect(target);
  if (!vm.ok()) return Fail(vm.status());
  const double open_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_open).count();
  hv::vmm::QemuVm& q = **vm;

  hv::Status err;
  const double bare = MedianMs(iterations, [&] {
    HV_RETURN_IF_ERROR(q.qmp().Execute("stop").status());
    return q.qmp().Execute("cont").status();
  }, err);
  // Pause() asks query-status first (to keep an operator's pause): show that round trip alone.
  const double status = MedianMs(iterations, [&] { return q.qmp().Execute("query-status").status(); }, err);
  const double pause_resume = MedianMs(iterations, [&] {
    HV_RETURN_IF_ERROR(q.Pause());
    return q.Resume();
  }, err);
  std::size_t vcpus = 0;
  if (err.ok()) err = q.Pause();
  const double states = MedianMs(iterations, [&]() -> hv::Status {
    HV_ASSIGN_OR_RETURN(auto s, q.VcpuStates());
    vcpus = s.size();
    return hv::Status::Ok();
  }, err);
  std::vector<std::uint8_t> buf(16u << 20);
  const double read16 = MedianMs(iterations, [&] { return q.ReadPhys(0, buf); }, err);
  if (err.ok()) err = q.Resume();
  if (!err.ok()) return Fail(err);

  std::printf("target        %s (%s)\n", target.c_str(), q.Describe().c_str());
  std::printf("iterations    %d (median)\n", iterations);
  std::printf("connect       %8.3f ms (once: QMP, discovery, gdbstub attach, fast-path check)\n", open_ms);
  std::printf("%-34s %9s %8s\n", "measure", "median ms", "ratio");
  std::printf("%-34s %9.3f %8.2f\n", "bare QMP stop+cont", bare, 1.0);
  std::printf("%-34s %9.3f %8.2f\n", "  (bare QMP query-status)", status, status / bare);
  std::printf("%-34s %9.3f %8.2f\n", "Pause+Resume", pause_resume, pause_resume / bare);
  std::printf("%-34s %9.3f %8.2f\n", ("VcpuStates (" + std::to_string(vcpus) + " vCPUs)").c_str(), states,
              states / bare);
  std::printf("%-34s %9.3f %8.2f\n", "ReadPhys 16 MiB (fast path)", read16, read16 / bare);
  vm->reset();
  if (*guest) (void)(*guest)->Stop();
  return 0;
}
