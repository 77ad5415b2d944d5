// bench/pause_scaling: the pause window of a patch commit against the number of guest tasks.
//
//   pause_scaling [--tasks 0,450,1950,4950] [--rounds N] [--mem MIB] [--shared-ram] [--json FILE]
//
// One test guest, one run. For each level it starts that many more `sleep` processes in the
// guest (levels are cumulative: each level's sleeps stay for the next), then applies and
// reverts the sample patch (hvp_sample) N times in-process (vmm::QemuVm, GuestKernel,
// PatchEngine, no agent, as bench/patch_transaction part 1), each followed by a bare QMP
// `stop`+`cont` on the same QMP connection. Every round checks /proc/cmdline in the guest. It
// prints, per level, the task count the commit's walk saw, the medians of the pause window and
// of its phases, and the ratio to the bare stop+cont; --json writes every sample, for
// bench/plots.sh. With --shared-ram the guest's RAM is a shared memfd, which hvpatch maps
// (vmm/shared_ram_map.h); without, QEMU's default anonymous RAM, read by process_vm_readv.
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_support.h"
#include "cli/ledger_file.h"
#include "patcher/guest_kernel.h"
#include "patcher/guest_kernel_view.h"
#include "patcher/patch_engine.h"
#include "tests/harness/test_vm.h"
#include "vmm/qemu_vm.h"

namespace {

using Clock = std::chrono::steady_clock;
using hv::Result;
using hv::Status;
using nlohmann::json;

constexpr const char* kPatchName = "hvp_sample";
constexpr const char* kPatchedText = "hvpatch: this kernel was live-patched";

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

int Fail(const std::string& what, const Status& s) {
  std::fprintf(stderr, "pause_scaling: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

std::string LoadAverage() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return "?";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %.2f %.2f", l[0], l[1], l[2]);
  return buf;
}

Status ExpectCmdline(hv::testing::TestVm& guest, bool patched) {
  HV_ASSIGN_OR_RETURN(std::string out, guest.Check("cat /proc/cmdline"));
  if ((out.find(kPatchedText) != std::string::npos) != patched) {
    return hv::FailedPrecondition("the guest's /proc/cmdline is '" + out + "', expected " +
                                  (patched ? "the patched text" : "the original"));
  }
  return Status::Ok();
}

// Starts `n` more `sleep` processes in the guest, in batches a command can wait for.
Status StartSleeps(hv::testing::TestVm& guest, int n) {
  for (int done = 0; done < n;) {
    const int batch = std::min(500, n - done);
    HV_RETURN_IF_ERROR(guest
                           .Check("i=0; while [ $i -lt " + std::to_string(batch) +
                                      " ]; do sleep 1000000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo ok",
                                  600)
                           .status()
                           .WithContext("starting sleeps"));
    done += batch;
  }
  return Status::Ok();
}

struct Level {
  int sleeps = 0;
  std::size_t tasks = 0;
  std::vector<double> bare, apply, revert;
  std::map<std::string, std::vector<double>> apply_phases;
  std::uint64_t bytes_scanned = 0;
  // The walk and the check alone, repeated in one pause: the fastest of kPrimitiveRuns (the
  // minimum filters out preemption by other work on a shared host).
  double walk_min_ms = 0, regions_min_ms = 0, check_min_ms = 0;
  double walk_nohint_min_ms = 0, check_nohint_min_ms = 0;
  // Walk + regions + check after the caches were flushed (a 64 MiB buffer written over), with
  // and without the prefetch hints, alternating: medians of kPrimitiveRuns each. The commit's
  // pause meets caches the running guest has mostly evicted; this is that case, A/B in one pause.
  std::vector<double> cold_hint_ms, cold_nohint_ms;
};

constexpr int kPrimitiveRuns = 10;

// The VM's memory without its prefetch hints (ReadsFromMapping false; the same direct loads
// where RAM is mapped): the same reads, for an A/B of the hints inside one pause.
class NoHints : public hv::vmm::GuestPhysMemory {
 public:
  explicit NoHints(const hv::vmm::GuestPhysMemory& inner) : inner_(inner) {}
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override { return inner_.ReadPhys(gpa, out); }
  std::vector<hv::vmm::PhysRange> RamRanges() const override { return inner_.RamRanges(); }
  std::vector<hv::vmm::DirectRange> DirectRam() const override { return inner_.DirectRam(); }

 private:
  const hv::vmm::GuestPhysMemory& inner_;
};

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::atoi(item.c_str()));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> levels = {0, 450, 1950, 4950};
  int rounds = 10;
  int mem = 2048;
  std::string json_path;
  bool shared_ram = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--tasks") == 0 && i + 1 < argc) {
      levels = ParseList(argv[++i]);
    } else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = std::max(5, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--mem") == 0 && i + 1 < argc) {
      mem = std::max(256, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--shared-ram") == 0) {
      shared_ram = true;
    } else {
      std::fprintf(stderr,
                   "usage: pause_scaling [--tasks N,N,... (more sleeps per level)] [--rounds N] [--mem MIB] "
                   "[--shared-ram] [--json FILE]\n");
      return 2;
    }
  }
  std::sort(levels.begin(), levels.end());
  const std::string ko = hv::testing::PatchModule(kPatchName);
  char tmpl[] = "/tmp/hvpatch-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return Fail("creating a state directory", hv::ErrnoError("mkdtemp", errno));
  const std::string state_dir = tmpl;
  const std::string load_before = LoadAverage();

  hv::testing::TestVmOptions o;
  o.agent = false;
  o.mem_mib = mem;
  o.shared_ram = shared_ram;
  auto started = hv::testing::TestVm::Start(o);
  if (!started.ok()) return Fail("booting the test guest", started.status());
  hv::testing::TestVm& guest = **started;

  std::vector<Level> results;
  std::string ram_access = "?";
  Status run = [&]() -> Status {
    HV_ASSIGN_OR_RETURN(std::unique_ptr<hv::vmm::QemuVm> vm, hv::vmm::QemuVm::Connect(guest.qmp_path()));
    ram_access = vm->ram_access();
    HV_RETURN_IF_ERROR(vm->Pause());
    auto vcpus = vm->VcpuStates();
    HV_RETURN_IF_ERROR(vm->Resume());
    if (!vcpus.ok()) return vcpus.status();
    hv::patcher::GuestKernelOptions ko_options;
    ko_options.walk_tasks = false;
    HV_ASSIGN_OR_RETURN(std::unique_ptr<hv::patcher::GuestKernel> kernel,
                        hv::patcher::GuestKernel::Build(*vm, *vcpus, ko_options));
    HV_ASSIGN_OR_RETURN(std::unique_ptr<hv::patcher::GuestKernelView> view,
                        hv::patcher::GuestKernelView::Create(*kernel));
    hv::patcher::GuestKernelStacks stacks(*kernel, *vm);
    hv::cli::LedgerFile ledger(state_dir + "/" + hv::cli::StateFileStem(vm->Identity()) + ".json");
    hv::patcher::PatchEngine engine(*vm, *view, stacks, ledger);
    HV_RETURN_IF_ERROR(engine.Recover().status());
    std::ifstream f(ko, std::ios::binary);
    hv::patcher::ApplyRequest apply;
    apply.patch_path = ko;
    apply.module.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    apply.retry = {5, std::chrono::milliseconds(200)};
    const hv::patcher::RevertRequest revert{kPatchName, apply.retry};

    int started_sleeps = 0;
    for (int target : levels) {
      HV_RETURN_IF_ERROR(StartSleeps(guest, target - started_sleeps));
      started_sleeps = target;
      Level level;
      level.sleeps = target;
      for (int round = 0; round <= rounds; ++round) {  // round 0 warms up
        HV_ASSIGN_OR_RETURN(hv::patcher::ApplyResult a, engine.Apply(apply));
        HV_RETURN_IF_ERROR(ExpectCmdline(guest, true).WithContext("after apply"));
        auto t0 = Clock::now();
        HV_RETURN_IF_ERROR(vm->qmp().Execute("stop").status());
        HV_RETURN_IF_ERROR(vm->qmp().Execute("cont").status());
        const double bare1 = Ms(Clock::now() - t0);
        HV_ASSIGN_OR_RETURN(hv::patcher::RevertResult r, engine.Revert(revert));
        HV_RETURN_IF_ERROR(ExpectCmdline(guest, false).WithContext("after revert"));
        t0 = Clock::now();
        HV_RETURN_IF_ERROR(vm->qmp().Execute("stop").status());
        HV_RETURN_IF_ERROR(vm->qmp().Execute("cont").status());
        const double bare2 = Ms(Clock::now() - t0);
        if (round == 0) continue;
        level.bare.push_back(bare1);
        level.bare.push_back(bare2);
        level.apply.push_back(static_cast<double>(a.commit.pause_us) / 1000);
        level.revert.push_back(static_cast<double>(r.commit.pause_us) / 1000);
        for (const auto& p : a.commit.phases) level.apply_phases[p.name].push_back(static_cast<double>(p.us) / 1000);
        level.bytes_scanned = a.commit.bytes_scanned;
        level.tasks = a.commit.threads_scanned;
      }
      // Primitives, in one pause of their own (not part of any pause window above).
      HV_RETURN_IF_ERROR(vm->Pause());
      Status prim = [&]() -> Status {
        HV_ASSIGN_OR_RETURN(std::vector<hv::vmm::VcpuState> v, vm->VcpuStates());
        const hv::vmm::PagingMode mode{v[0].cr3, v[0].la57(), ((v[0].efer >> 11) & 1) != 0};
        HV_ASSIGN_OR_RETURN(const hv::patcher::KernelSymbol sym, kernel->FindSymbol("", "cmdline_proc_show"));
        const std::vector<hv::patcher::CodeRange> busy = {{sym.address, sym.address + sym.size, std::string(sym.name)}};
        level.walk_min_ms = level.regions_min_ms = level.check_min_ms = 1e9;
        level.walk_nohint_min_ms = level.check_nohint_min_ms = 1e9;
        const NoHints plain(*vm);
        for (int i = 0; i < kPrimitiveRuns; ++i) {
          auto t1 = Clock::now();
          HV_RETURN_IF_ERROR(kernel->WalkTasks(plain).status());
          level.walk_nohint_min_ms = std::min(level.walk_nohint_min_ms, Ms(Clock::now() - t1));
          auto t0 = Clock::now();
          HV_RETURN_IF_ERROR(kernel->WalkTasks(*vm).status());
          level.walk_min_ms = std::min(level.walk_min_ms, Ms(Clock::now() - t0));
          t0 = Clock::now();
          HV_ASSIGN_OR_RETURN(std::vector<hv::patcher::StackRegion> regions, kernel->StackRegions(*vm, v));
          level.regions_min_ms = std::min(level.regions_min_ms, Ms(Clock::now() - t0));
          t0 = Clock::now();
          HV_RETURN_IF_ERROR(hv::patcher::CheckStacks(*vm, mode, v, regions, busy).status());
          level.check_min_ms = std::min(level.check_min_ms, Ms(Clock::now() - t0));
          t0 = Clock::now();
          HV_RETURN_IF_ERROR(hv::patcher::CheckStacks(plain, mode, v, regions, busy).status());
          level.check_nohint_min_ms = std::min(level.check_nohint_min_ms, Ms(Clock::now() - t0));
        }
        return Status::Ok();
      }();
      // The cold A/B (see Level), in the same pause.
      if (prim.ok()) {
        prim = [&]() -> Status {
          HV_ASSIGN_OR_RETURN(std::vector<hv::vmm::VcpuState> v, vm->VcpuStates());
          const hv::vmm::PagingMode mode{v[0].cr3, v[0].la57(), ((v[0].efer >> 11) & 1) != 0};
          const NoHints plain(*vm);
          std::vector<std::uint8_t> flush(64u << 20);
          for (int i = 0; i < 2 * kPrimitiveRuns; ++i) {
            for (std::size_t at = 0; at < flush.size(); at += 64) flush[at] = static_cast<std::uint8_t>(i + at);
            const hv::vmm::GuestPhysMemory& mem = i % 2 ? static_cast<const hv::vmm::GuestPhysMemory&>(plain) : *vm;
            const auto t0 = Clock::now();
            HV_ASSIGN_OR_RETURN(std::vector<hv::patcher::StackRegion> regions, kernel->StackRegions(mem, v));
            HV_RETURN_IF_ERROR(hv::patcher::CheckStacks(mem, mode, v, regions, {}).status());
            (i % 2 ? level.cold_nohint_ms : level.cold_hint_ms).push_back(Ms(Clock::now() - t0));
          }
          return Status::Ok();
        }();
      }
      HV_RETURN_IF_ERROR(vm->Resume());
      HV_RETURN_IF_ERROR(prim);
      std::fprintf(stderr, "pause_scaling: cold walk+check %.3f ms with hints, %.3f ms without\n",
                   hv::bench::Median(level.cold_hint_ms), hv::bench::Median(level.cold_nohint_ms));
      std::fprintf(stderr, "pause_scaling: walk min %.3f ms (no hints %.3f), check min %.3f ms (no hints %.3f)\n",
                   level.walk_min_ms, level.walk_nohint_min_ms, level.check_min_ms, level.check_nohint_min_ms);
      std::fprintf(stderr, "pause_scaling: %d sleeps, %zu threads: apply %.3f ms, bare %.3f ms (%.2fx)\n",
                   target, level.tasks, hv::bench::Median(level.apply), hv::bench::Median(level.bare),
                   hv::bench::Median(level.apply) / hv::bench::Median(level.bare));
      results.push_back(std::move(level));
    }
    return Status::Ok();
  }();
  const std::string load_after = LoadAverage();
  if (!run.ok()) {
    const std::string console = guest.Console();
    std::fprintf(stderr, "guest console (tail):\n%s\n",
                 console.substr(console.size() > 2000 ? console.size() - 2000 : 0).c_str());
    (void)guest.Stop();
    return Fail("measuring", run);
  }
  (void)guest.Stop();
  std::error_code ignored;
  std::filesystem::remove_all(state_dir, ignored);

  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M %Z", std::localtime(&now));
  utsname u{};
  uname(&u);
  std::printf("pause_scaling: %s, %d rounds per level (medians), %s, load average %s -> %s\n", kPatchName,
              rounds, date, load_before.c_str(), load_after.c_str());
  std::printf("guest: test guest, 2 vCPUs, %d MiB, TCG; guest RAM read by %s\n\n", mem, ram_access.c_str());
  std::printf("%7s %8s %9s %9s %9s %7s %7s %9s %9s %9s %9s %9s\n", "sleeps", "threads", "bare ms", "apply ms",
              "revert ms", "apply/x", "revrt/x", "stacks ms", "check ms", "walk min", "regns min", "check min");
  json out = {{"program", "pause_scaling"}, {"date", date}, {"load_before", load_before},
              {"load_after", load_after}, {"rounds", rounds}, {"guest_mem_mib", mem}, {"shared_ram", shared_ram},
              {"ram_access", ram_access}, {"levels", json::array()}};
  for (const Level& l : results) {
    const double bare = hv::bench::Median(l.bare);
    auto phase = [&](const char* n) {
      auto it = l.apply_phases.find(n);
      return it == l.apply_phases.end() ? 0.0 : hv::bench::Median(it->second);
    };
    std::printf("%7d %8zu %9.3f %9.3f %9.3f %7.2f %7.2f %9.3f %9.3f %9.3f %9.3f %9.3f\n", l.sleeps, l.tasks, bare,
                hv::bench::Median(l.apply), hv::bench::Median(l.revert), hv::bench::Median(l.apply) / bare,
                hv::bench::Median(l.revert) / bare, phase("stacks"), phase("stack_check"), l.walk_min_ms,
                l.regions_min_ms, l.check_min_ms);
    json phases = json::object();
    for (const auto& [name, v] : l.apply_phases) phases[name] = v;
    out["levels"].push_back({{"sleeps", l.sleeps}, {"threads", l.tasks}, {"bytes_scanned", l.bytes_scanned},
                             {"bare_ms", l.bare}, {"apply_ms", l.apply}, {"revert_ms", l.revert},
                             {"apply_phases_ms", phases}, {"walk_min_ms", l.walk_min_ms},
                             {"regions_min_ms", l.regions_min_ms}, {"check_min_ms", l.check_min_ms},
                             {"walk_nohint_min_ms", l.walk_nohint_min_ms}, {"check_nohint_min_ms", l.check_nohint_min_ms},
                             {"cold_hint_ms", l.cold_hint_ms}, {"cold_nohint_ms", l.cold_nohint_ms}});
  }
  if (!json_path.empty()) {
    std::ofstream j(json_path);
    j << out.dump(1) << "\n";
    if (!j) return Fail("writing " + json_path, hv::Internal("write failed"));
  }
  return 0;
}
