// bench/patch_transaction: the patch transaction (issue 5) on one test guest in one run.
//
//   patch_transaction [--rounds N] [--pause-only] [--hvpatch PATH]
//
// (--pause-only skips part 2 below, for quick iterations on the pause window.)
// It boots the test guest (tests/harness) and measures, N rounds each (N >= 10), medians:
//   1. the pause window of applying and of reverting the sample patch (hvp_sample), from the
//      engine's CommitReport, split into its phases, against a bare QMP `stop`+`cont` on the same
//      QMP connection. This part drives the core in-process (vmm::QemuVm, GuestKernel,
//      PatchEngine) so it can read the per-phase profile, which the CLI does not print;
//   2. `hvpatch apply` and `hvpatch revert` end to end (process start to exit) run as the user
//      runs them, as a subprocess, against an in-guest `insmod` of the same .ko plus livepatch's
//      transition to completion (and `echo 0 > enabled`, transition, `rmmod` for the revert),
//      timed inside the guest from /proc/timer_list ("now at N nsecs": busybox `date` has no %N).
// Rounds of part 2 alternate hvpatch and in-guest livepatch, so both see the same load. Every
// round checks that the guest shows the patched /proc/cmdline and then the original one.
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
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_support.h"
#include "cli/ledger_file.h"
#include "patcher/guest_kernel.h"
#include "patcher/guest_kernel_view.h"
#include "patcher/patch_engine.h"
#include "tests/harness/run_program.h"
#include "tests/harness/test_vm.h"
#include "vmm/page_walk.h"
#include "vmm/qemu_vm.h"

namespace {

using Clock = std::chrono::steady_clock;
using hv::Result;
using hv::Status;

constexpr const char* kPatchName = "hvp_sample";
constexpr const char* kPatchedText = "hvpatch: this kernel was live-patched";
constexpr const char* kGuestKo = "/tmp/hvp_sample.ko";

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

using hv::bench::Median;

// Figures in the order they were first recorded, each a list of samples in milliseconds.
class Samples {
 public:
  void Add(const std::string& name, double ms) {
    if (!by_name_.count(name)) order_.push_back(name);
    by_name_[name].push_back(ms);
  }
  double MedianOf(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? 0 : Median(it->second);
  }
  std::size_t Count(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? 0 : it->second.size();
  }
  const std::vector<std::string>& names() const { return order_; }
  const std::map<std::string, std::vector<double>>& all() const { return by_name_; }

 private:
  std::vector<std::string> order_;
  std::map<std::string, std::vector<double>> by_name_;
};

int Fail(const std::string& what, const Status& s) {
  std::fprintf(stderr, "patch_transaction: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

std::string FirstLine(const std::string& path, const std::string& prefix) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(prefix, 0) == 0) return line.substr(line.find(':') + 1);
  }
  return "?";
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(s.begin());
  return s;
}

// What /proc/cmdline shows in the guest, compared with what the round expects.
Status ExpectCmdline(hv::testing::TestVm& guest, bool patched) {
  HV_ASSIGN_OR_RETURN(std::string out, guest.Check("cat /proc/cmdline"));
  const bool is_patched = out.find(kPatchedText) != std::string::npos;
  if (is_patched != patched) {
    return hv::FailedPrecondition(std::string("the guest's /proc/cmdline is '") + Trim(out) + "', expected " +
                                  (patched ? "the patched text" : "the original"));
  }
  return Status::Ok();
}

// Copies the .ko into the guest through the command channel, in pieces a shell line can hold.
Status CopyIntoGuest(hv::testing::TestVm& guest, const std::string& host_path) {
  std::ifstream f(host_path, std::ios::binary);
  if (!f) return hv::NotFound("cannot open '" + host_path + "'");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  HV_RETURN_IF_ERROR(guest.Check(std::string("rm -f ") + kGuestKo + " " + kGuestKo + ".hex").status());
  constexpr std::size_t kPiece = 24 * 1024;  // 4 hex-escaped chars per byte: ~96 KiB lines
  for (std::size_t off = 0; off < bytes.size(); off += kPiece) {
    std::string script = "printf '";
    const std::size_t end = std::min(bytes.size(), off + kPiece);
    char esc[8];
    for (std::size_t i = off; i < end; ++i) {
      std::snprintf(esc, sizeof(esc), "\\%03o", static_cast<unsigned char>(bytes[i]));
      script += esc;
    }
    script += std::string("' >> ") + kGuestKo;
    HV_RETURN_IF_ERROR(guest.Check(script, 120).status());
  }
  HV_ASSIGN_OR_RETURN(std::string size, guest.Check(std::string("wc -c < ") + kGuestKo));
  if (std::strtoull(size.c_str(), nullptr, 10) != bytes.size()) {
    return hv::Internal("copied " + Trim(size) + " bytes of " + std::to_string(bytes.size()) + " into the guest");
  }
  // Byte for byte: the guest's md5sum against the host's.
  HV_ASSIGN_OR_RETURN(std::string guest_md5, guest.Check(std::string("md5sum ") + kGuestKo));
  HV_ASSIGN_OR_RETURN(hv::testing::ProgramResult host_md5, hv::testing::RunProgram({"md5sum", host_path}));
  if (guest_md5.substr(0, 32) != host_md5.out.substr(0, 32)) {
    return hv::Internal("the copy of '" + host_path + "' in the guest differs (md5 " + guest_md5.substr(0, 32) +
                        " vs " + host_md5.out.substr(0, 32) + ")");
  }
  return Status::Ok();
}

// One in-guest livepatch round, timed inside the guest: insmod + transition, then disable +
// transition + rmmod. `read` and `[` are ash builtins, so polling forks nothing.
constexpr const char* kInGuestRound = R"SH(
now_ns() { while read -r a b c d; do if [ "$a" = now ]; then echo "$c"; return; fi; done < /proc/timer_list; }
d=/sys/kernel/livepatch/hvp_sample
settle() { n=0; while [ -e $d/transition ]; do read -r t < $d/transition 2>/dev/null || break; [ "$t" = 0 ] && break; n=$((n+1)); [ $n -gt 1000000 ] && exit 11; done; }
t0=$(now_ns)
insmod /tmp/hvp_sample.ko || exit 10
settle
t1=$(now_ns)
read -r line < /proc/cmdline; echo "patched=$line"
echo 0 > $d/enabled || exit 12
settle
# livepatch frees the patch (sysfs directory, then the module reference) after the transition
n=0; while [ -e $d ]; do n=$((n+1)); [ $n -gt 1000000 ] && exit 14; done
n=0; while read -r rc < /sys/module/hvp_sample/refcnt && [ "$rc" != 0 ]; do n=$((n+1)); [ $n -gt 1000000 ] && exit 15; done
rmmod hvp_sample || exit 13
t2=$(now_ns)
read -r line < /proc/cmdline; echo "restored=$line"
echo "apply_ns=$((t1-t0)) revert_ns=$((t2-t1))"
)SH";

struct InGuestRound {
  double apply_ms = 0, revert_ms = 0;
};

Result<InGuestRound> RunInGuestLivepatch(hv::testing::TestVm& guest) {
  HV_ASSIGN_OR_RETURN(std::string out, guest.Check(kInGuestRound, 120));
  if (out.find(std::string("patched=") + kPatchedText) == std::string::npos ||
      out.find("restored=console=") == std::string::npos) {
    return hv::FailedPrecondition("in-guest livepatch round did not patch and restore: '" + out + "'");
  }
  auto number = [&](const char* key) -> double {
    const std::size_t at = out.find(key);
    return at == std::string::npos ? -1 : std::strtod(out.c_str() + at + std::strlen(key), nullptr) / 1e6;
  };
  InGuestRound r{number("apply_ns="), number("revert_ns=")};
  if (r.apply_ms <= 0 || r.revert_ms <= 0) return hv::Internal("no timings in '" + out + "'");
  return r;
}

// A `hvpatch --json ...` run: wall time, and its JSON object.
struct CliRun {
  double wall_ms = 0;
  nlohmann::json out;
};

Result<CliRun> RunCli(const std::string& hvpatch, const std::string& state_dir, std::vector<std::string> args) {
  std::vector<std::string> argv = {hvpatch, "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto t0 = Clock::now();
  HV_ASSIGN_OR_RETURN(hv::testing::ProgramResult r,
                      hv::testing::RunProgram(argv, {"HVPATCH_STATE_DIR=" + state_dir}, 120));
  CliRun run{Ms(Clock::now() - t0), {}};
  if (r.exit_code != 0) {
    return hv::Internal("'hvpatch " + args[0] + "' exited " + std::to_string(r.exit_code) + ": " + r.out + r.err);
  }
  run.out = nlohmann::json::parse(r.out, nullptr, false);
  if (!run.out.is_object()) return hv::Internal("'hvpatch " + args[0] + "' printed no JSON object: " + r.out);
  return run;
}

void AddPhases(Samples& s, const std::string& prefix, const hv::patcher::CommitReport& c) {
  s.Add(prefix + " pause window", static_cast<double>(c.pause_us) / 1000);
  for (const auto& p : c.phases) s.Add(prefix + "   " + p.name, static_cast<double>(p.us) / 1000);
}

// What the pieces of a commit cost on their own, each in a fresh pause (not timed itself): the
// first read of the vCPUs and of a page walk (gdbstub, guest RAM), then the same again (served
// by the pause's caches), and gdbstub writes of the unpatched entry's own bytes over themselves
// (no change to the guest).
Status MeasurePrimitives(hv::vmm::QemuVm& vm, std::uint64_t site, int rounds, Samples& s) {
  for (int i = 0; i < rounds; ++i) {
    HV_RETURN_IF_ERROR(vm.Pause());
    Status run = [&]() -> Status {
      auto t0 = Clock::now();
      HV_ASSIGN_OR_RETURN(std::vector<hv::vmm::VcpuState> vcpus, vm.VcpuStates());
      s.Add("primitive: VcpuStates, first in a pause", Ms(Clock::now() - t0));
      t0 = Clock::now();
      HV_RETURN_IF_ERROR(vm.VcpuStates().status());
      s.Add("primitive: VcpuStates, again", Ms(Clock::now() - t0));
      const hv::vmm::VcpuState& v = vcpus[0];
      const hv::vmm::PagingMode mode{v.cr3, v.la57(), ((v.efer >> 11) & 1) != 0};
      t0 = Clock::now();
      HV_ASSIGN_OR_RETURN(hv::vmm::Translation t, hv::vmm::TranslateVirt(vm, mode, site));
      s.Add("primitive: page walk, first in a pause", Ms(Clock::now() - t0));
      t0 = Clock::now();
      HV_RETURN_IF_ERROR(hv::vmm::TranslateVirt(vm, mode, site).status());
      s.Add("primitive: page walk, again", Ms(Clock::now() - t0));
      std::vector<std::uint8_t> entry(5), page(4096);
      HV_RETURN_IF_ERROR(hv::vmm::ReadVirt(vm, mode, site, entry));
      HV_RETURN_IF_ERROR(vm.ReadPhys(t.gpa & ~0xfffull, page));
      t0 = Clock::now();
      HV_RETURN_IF_ERROR(vm.gdb().WriteMemory(t.gpa, entry));
      s.Add("primitive: gdbstub M 5 bytes", Ms(Clock::now() - t0));
      t0 = Clock::now();
      HV_RETURN_IF_ERROR(vm.gdb().WriteMemory(t.gpa & ~0xfffull, page));
      s.Add("primitive: gdbstub M 4 KiB", Ms(Clock::now() - t0));
      t0 = Clock::now();
      HV_RETURN_IF_ERROR(vm.WriteCode(site, entry));
      s.Add("primitive: WriteCode 5 bytes", Ms(Clock::now() - t0));
      return Status::Ok();
    }();
    Status resumed = vm.Resume();
    HV_RETURN_IF_ERROR(run);
    HV_RETURN_IF_ERROR(resumed);
  }
  return Status::Ok();
}

// Part 1: pause windows in-process, on one QMP connection, against bare stop+cont on it.
Status MeasurePauseWindows(hv::testing::TestVm& guest, const std::string& state_dir, const std::string& ko,
                           int rounds, Samples& s, std::string& qemu_version) {
  HV_ASSIGN_OR_RETURN(std::unique_ptr<hv::vmm::QemuVm> vm, hv::vmm::QemuVm::Connect(guest.qmp_path()));
  // The greeting's {"QMP": {"version": {"qemu": {...}}}}, or its inner object.
  const nlohmann::json& g = vm->qmp().greeting();
  const nlohmann::json& qmp = g.contains("QMP") ? g["QMP"] : g;
  const nlohmann::json v = qmp.contains("version") && qmp["version"].is_object()
                               ? qmp["version"].value("qemu", nlohmann::json())
                               : nlohmann::json();
  if (v.is_object()) {
    qemu_version = std::to_string(v.value("major", 0)) + "." + std::to_string(v.value("minor", 0)) + "." +
                   std::to_string(v.value("micro", 0));
  }
  HV_RETURN_IF_ERROR(vm->Pause());
  auto vcpus = vm->VcpuStates();
  HV_RETURN_IF_ERROR(vm->Resume());
  if (!vcpus.ok()) return vcpus.status();
  hv::patcher::GuestKernelOptions ko_options;
  ko_options.walk_tasks = false;  // as the CLI: the commit walks the tasks in its own pause
  HV_ASSIGN_OR_RETURN(std::unique_ptr<hv::patcher::GuestKernel> kernel,
                      hv::patcher::GuestKernel::Build(*vm, *vcpus, ko_options));
  HV_ASSIGN_OR_RETURN(std::unique_ptr<hv::patcher::GuestKernelView> view,
                      hv::patcher::GuestKernelView::Create(*kernel));
  hv::patcher::GuestKernelStacks stacks(*kernel, *vm);
  // The CLI's ledger file for this VM, so part 2 continues from the same state.
  hv::cli::LedgerFile ledger(state_dir + "/" + hv::cli::StateFileStem(vm->Identity()) + ".json");
  hv::patcher::PatchEngine engine(*vm, *view, stacks, ledger);
  HV_RETURN_IF_ERROR(engine.Recover().status());

  std::ifstream f(ko, std::ios::binary);
  hv::patcher::ApplyRequest apply;
  apply.patch_path = ko;
  apply.module.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  apply.retry = {5, std::chrono::milliseconds(1000)};
  const hv::patcher::RevertRequest revert{kPatchName, apply.retry};

  auto bare = [&]() -> Status {
    const auto t0 = Clock::now();
    HV_RETURN_IF_ERROR(vm->qmp().Execute("stop").status());
    HV_RETURN_IF_ERROR(vm->qmp().Execute("cont").status());
    s.Add("bare QMP stop+cont", Ms(Clock::now() - t0));
    return Status::Ok();
  };
  auto pause_resume = [&]() -> Status {
    const auto t0 = Clock::now();
    HV_RETURN_IF_ERROR(vm->Pause());
    HV_RETURN_IF_ERROR(vm->Resume());
    s.Add("Vm::Pause+Resume", Ms(Clock::now() - t0));
    return Status::Ok();
  };
  std::uint64_t site = 0;
  // Round 0 warms up (first arena mapping, caches) and is not counted.
  for (int round = 0; round <= rounds; ++round) {
    Samples discard;
    Samples& target = round == 0 ? discard : s;
    HV_ASSIGN_OR_RETURN(hv::patcher::ApplyResult a, engine.Apply(apply));
    if (a.commit.tries != 1) return hv::Internal("apply needed " + std::to_string(a.commit.tries) + " tries");
    AddPhases(target, "apply", a.commit);
    if (!a.functions.empty()) site = a.functions[0].site;
    HV_RETURN_IF_ERROR(ExpectCmdline(guest, true).WithContext("after apply"));
    if (round > 0) HV_RETURN_IF_ERROR(bare());
    HV_ASSIGN_OR_RETURN(hv::patcher::RevertResult r, engine.Revert(revert));
    if (r.commit.tries != 1) return hv::Internal("revert needed " + std::to_string(r.commit.tries) + " tries");
    AddPhases(target, "revert", r.commit);
    HV_RETURN_IF_ERROR(ExpectCmdline(guest, false).WithContext("after revert"));
    if (round > 0) {
      HV_RETURN_IF_ERROR(bare());
      HV_RETURN_IF_ERROR(pause_resume());
    }
  }
  return MeasurePrimitives(*vm, site, rounds, s);
}

// Part 2: end to end, hvpatch (subprocess) against in-guest livepatch, alternating. Each round
// runs `hvpatch apply` with a warm kallsyms cache (the state directory's, from the run before)
// and with a cold one (removed first), each followed by a revert, then one in-guest round. With
// `agent` false the guest's agent was stopped before: its port stays, nobody opens it.
Status MeasureEndToEnd(hv::testing::TestVm& guest, const std::string& hvpatch, const std::string& state_dir,
                       const std::string& ko, int rounds, bool agent, Samples& s) {
  const std::string domain = guest.qmp_target();
  const std::string tag = agent ? "" : " (no agent)";
  for (int round = 0; round <= rounds; ++round) {
    Samples discard;
    Samples& target = round == 0 ? discard : s;
    for (const bool cold : {false, true}) {
      std::error_code ignored;
      if (cold) std::filesystem::remove_all(state_dir + "/cache", ignored);
      HV_ASSIGN_OR_RETURN(CliRun a, RunCli(hvpatch, state_dir, {"apply", domain, ko}));
      if (a.out.value("confirmed", false) != agent) {
        return hv::Internal("apply's confirmation is not what the agent's presence says: " + a.out.dump());
      }
      HV_RETURN_IF_ERROR(ExpectCmdline(guest, true).WithContext("after hvpatch apply"));
      HV_ASSIGN_OR_RETURN(CliRun r, RunCli(hvpatch, state_dir, {"revert", domain, kPatchName}));
      HV_RETURN_IF_ERROR(ExpectCmdline(guest, false).WithContext("after hvpatch revert"));
      const std::string cache = cold ? ", cold cache" : "";
      target.Add("hvpatch apply" + tag + cache + " (process start to exit)", a.wall_ms);
      target.Add("hvpatch revert" + tag + cache + " (process start to exit)", r.wall_ms);
      if (!cold) target.Add("  its pause window (apply" + tag + ", from --json)", a.out.value("pause_us", 0.0) / 1000);
    }
    HV_ASSIGN_OR_RETURN(InGuestRound g, RunInGuestLivepatch(guest));
    target.Add("in-guest insmod + transition", g.apply_ms);
    target.Add("in-guest disable + transition + rmmod", g.revert_ms);
  }
  return Status::Ok();
}

// Stops the guest agent; QEMU then reports the port closed (query-chardev frontend-open).
Status StopAgent(hv::testing::TestVm& guest) {
  return guest.Check("kill $(pidof hvpatch-agent); i=0; while pidof hvpatch-agent >/dev/null; do i=$((i+1)); "
                     "[ $i -gt 100000 ] && exit 1; done; echo stopped")
      .status()
      .WithContext("stopping the guest agent");
}

std::string LoadAverage() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return "?";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %.2f %.2f", l[0], l[1], l[2]);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 10;
  bool end_to_end = true;
  bool shared_ram = false;
  std::string json_path;
  std::string hvpatch = HVPATCH_CLI;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = std::max(10, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--pause-only") == 0) {
      end_to_end = false;
    } else if (std::strcmp(argv[i], "--hvpatch") == 0 && i + 1 < argc) {
      hvpatch = argv[++i];
    } else if (std::strcmp(argv[i], "--shared-ram") == 0) {
      shared_ram = true;
    } else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: patch_transaction [--rounds N (>= 10)] [--pause-only] [--hvpatch PATH] [--shared-ram] "
                   "[--json FILE]\n");
      return 2;
    }
  }
  const std::string ko = hv::testing::PatchModule(kPatchName);
  char tmpl[] = "/tmp/hvpatch-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return Fail("creating a state directory", hv::ErrnoError("mkdtemp", errno));
  const std::string state_dir = tmpl;

  const std::string load_before = LoadAverage();
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M %Z", std::localtime(&now));

  hv::testing::TestVmOptions vm_options;
  vm_options.shared_ram = shared_ram;  // guest RAM in a shared memfd, which hvpatch maps
  auto started = hv::testing::TestVm::Start(vm_options);
  if (!started.ok()) return Fail("booting the test guest", started.status());
  hv::testing::TestVm& guest = **started;
  if (Status s = CopyIntoGuest(guest, ko); !s.ok()) return Fail("copying the patch into the guest", s);

  Samples s;
  std::string qemu_version = "?";
  if (Status st = MeasurePauseWindows(guest, state_dir, ko, rounds, s, qemu_version); !st.ok()) {
    const std::string console = guest.Console();
    std::fprintf(stderr, "guest console (last 3000 bytes):\n%s\n",
                 console.substr(console.size() > 3000 ? console.size() - 3000 : 0).c_str());
    return Fail("measuring pause windows", st);
  }
  if (end_to_end) {
    Status st = MeasureEndToEnd(guest, hvpatch, state_dir, ko, rounds, true, s);
    if (st.ok()) st = StopAgent(guest);
    if (st.ok()) st = MeasureEndToEnd(guest, hvpatch, state_dir, ko, rounds, false, s);
    if (!st.ok()) return Fail("measuring end to end", st);
  }
  const std::string load_after = LoadAverage();
  auto taint = guest.Check("cat /proc/sys/kernel/tainted");
  (void)guest.Stop();
  std::error_code ignored;
  std::filesystem::remove_all(state_dir, ignored);  // the ledger of a guest that is gone

  utsname u{};
  uname(&u);
  std::printf("patch_transaction: %s, %d rounds (medians), %s\n", kPatchName, rounds, date);
  std::printf("host   %s %s, %s, %ld CPUs online, QEMU %s (TCG), load average %s -> %s\n", u.sysname,
              u.release, Trim(FirstLine("/proc/cpuinfo", "model name")).c_str(), sysconf(_SC_NPROCESSORS_ONLN),
              qemu_version.c_str(), load_before.c_str(), load_after.c_str());
  std::printf("guest  test guest (images/), 2 vCPUs, 512 MiB%s; tainted after the in-guest runs: %s\n",
              shared_ram ? " in a shared memfd" : "", taint.ok() ? Trim(*taint).c_str() : "?");
  std::printf("\n%-44s %5s %10s\n", "measure", "n", "median ms");
  for (const std::string& name : s.names()) {
    std::printf("%-44s %5zu %10.3f\n", name.c_str(), s.Count(name), s.MedianOf(name));
  }
  const double bare = s.MedianOf("bare QMP stop+cont");
  const double hv_apply = s.MedianOf("hvpatch apply (process start to exit)");
  const double hv_revert = s.MedianOf("hvpatch revert (process start to exit)");
  std::printf("\nratios (goal: pause window <= 1.5 x stop+cont; hvpatch >= 10x faster than in-guest)\n");
  std::printf("  apply pause window / bare stop+cont          %6.2f\n", s.MedianOf("apply pause window") / bare);
  std::printf("  revert pause window / bare stop+cont         %6.2f\n", s.MedianOf("revert pause window") / bare);
  std::printf("  Vm::Pause+Resume / bare stop+cont            %6.2f\n", s.MedianOf("Vm::Pause+Resume") / bare);
  std::printf("  in-guest insmod+transition / hvpatch apply   %6.2f\n",
              s.MedianOf("in-guest insmod + transition") / hv_apply);
  std::printf("  in-guest disable+rmmod / hvpatch revert      %6.2f\n",
              s.MedianOf("in-guest disable + transition + rmmod") / hv_revert);
  const double in_guest = s.MedianOf("in-guest insmod + transition");
  for (const char* name : {"hvpatch apply, cold cache (process start to exit)",
                           "hvpatch apply (no agent) (process start to exit)",
                           "hvpatch apply (no agent), cold cache (process start to exit)"}) {
    if (s.Count(name)) std::printf("  in-guest insmod+transition / %-52s %6.2f\n", name, in_guest / s.MedianOf(name));
  }
  if (!json_path.empty()) {
    nlohmann::json j = {{"program", "patch_transaction"}, {"date", date}, {"rounds", rounds},
                        {"load_before", load_before}, {"load_after", load_after}, {"shared_ram", shared_ram},
                        {"samples_ms", s.all()}};
    std::ofstream f(json_path);
    f << j.dump(1) << "\n";
    if (!f) return Fail("writing " + json_path, hv::Internal("write failed"));
  }
  return 0;
}
