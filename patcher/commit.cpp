#include "patcher/commit.h"

#include <algorithm>
#include <optional>
#include <thread>

#include "base/hex.h"
#include "vmm/page_walk.h"

namespace hv::patcher {
namespace {

using Clock = std::chrono::steady_clock;

std::uint64_t Micros(Clock::time_point a, Clock::time_point b) {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(b - a).count());
}

vmm::PagingMode KernelMode(const vmm::VcpuState& v) {
  return {v.cr3, v.la57(), ((v.efer >> 11) & 1) != 0};
}

}  // namespace

Status VmKernelWords::Read(std::uint64_t va, std::span<std::uint8_t> out) {
  return vmm::ReadVirt(vm_, mode_, va, out);
}

Status VmKernelWords::Write(std::uint64_t va, std::span<const std::uint8_t> bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const std::uint64_t at = va + done;
    HV_ASSIGN_OR_RETURN(vmm::Translation t, vmm::TranslateVirt(vm_, mode_, at));
    if (!t.writable) return FailedPrecondition("kernel address " + Hex(at) + " is mapped read-only");
    const std::size_t n = std::min<std::size_t>(bytes.size() - done, 4096 - (at & 4095));
    HV_RETURN_IF_ERROR(vm_.WritePhys(t.gpa, bytes.subspan(done, n)));
    done += n;
  }
  return Status::Ok();
}

Status Committer::WriteAll(const CommitPlan& plan, const StagedKernelWords* edits,
                           const StagedKernelWords* final_edits, KernelWords* kernel,
                           const std::function<void(const char*)>& phase) {
  wrote_ = true;
  for (const auto& w : plan.phys_writes) {
    HV_RETURN_IF_ERROR(vm_.WritePhys(w.gpa, w.bytes).WithContext("writing " + w.what));
  }
  phase("phys_writes");
  Step("phys_written");
  if (edits != nullptr && !edits->writes().empty()) {
    // After the arena's pages and PTEs: the edits link structures that live there.
    HV_RETURN_IF_ERROR(edits->Flush(*kernel).WithContext("writing the kernel data edits"));
    phase("kernel_edits");
  }
  for (std::size_t i = 0; i < plan.code_writes.size(); ++i) {
    const CodeWrite& w = plan.code_writes[i];
    Status s = vm_.WriteCode(w.va, w.bytes).WithContext("writing " + w.what);
    if (!s.ok()) {
      // All or nothing: put back what this pause already switched, newest first. The arena
      // bytes may stay: no trampoline reaches them any more.
      for (std::size_t k = i; k-- > 0;) {
        const CodeWrite& done = plan.code_writes[k];
        if (done.expected.empty()) continue;
        Status undo = vm_.WriteCode(done.va, done.expected);
        if (!undo.ok()) return s.WithContext("(rolling back " + done.what + " failed too: " + undo.message() + ")");
      }
      return s;
    }
    Step("code_written:" + std::to_string(i + 1));
  }
  phase("code_writes");
  if (final_edits != nullptr && !final_edits->writes().empty()) {
    HV_RETURN_IF_ERROR(final_edits->Flush(*kernel).WithContext("writing the final kernel data edits"));
    phase("final_kernel_edits");
  }
  return Status::Ok();
}

Result<CommitReport> Committer::Commit(const CommitPlan& plan) {
  CommitReport report;
  std::vector<StackHit> last_hits;
  std::string last_busy_edit;
  for (int attempt = 1; attempt <= std::max(1, policy_.tries); ++attempt) {
    report.tries = attempt;
    std::vector<PausePhase> phases;
    stacks_.Prepare();  // outside the pause
    HV_RETURN_IF_ERROR(vm_.PrepareToPause());
    const auto t0 = Clock::now();
    auto mark = t0;
    // Closes the phase that started at `mark`.
    auto phase = [&](const char* name) {
      const auto now = Clock::now();
      phases.push_back({name, Micros(mark, now)});
      mark = now;
    };
    HV_RETURN_IF_ERROR(vm_.Pause());
    phase("pause");
    Step("paused");
    // From here on, every path resumes before returning.
    auto checked = [&]() -> Result<StackCheckReport> {
      HV_ASSIGN_OR_RETURN(std::vector<vmm::VcpuState> vcpus, vm_.VcpuStates());
      if (vcpus.empty()) return Internal("the VM reported no vCPUs");
      phase("vcpus");
      const vmm::PagingMode mode = KernelMode(vcpus[0]);
      std::uint64_t collect_us = 0;
      HV_ASSIGN_OR_RETURN(StackCheckReport r, stacks_.Check(vm_, mode, vcpus, plan.busy, collect_us));
      {
        // Two phases: the walk ("stacks") and the rest of the check, which it may overlap.
        const auto now = Clock::now();
        const std::uint64_t both = Micros(mark, now);
        collect_us = std::min(collect_us, both);
        phases.push_back({"stacks", collect_us});
        phases.push_back({"stack_check", both - collect_us});
        mark = now;
      }
      if (!r.safe()) return r;
      // Run-pre check: the guest still holds exactly what the plan was made from.
      for (const auto& w : plan.code_writes) {
        if (w.expected.empty()) continue;
        std::vector<std::uint8_t> now(w.expected.size());
        HV_RETURN_IF_ERROR(vmm::ReadVirt(vm_, mode, w.va, now).WithContext("run-pre check of " + w.what));
        if (now != w.expected) {
          return FailedPrecondition("run-pre check failed for " + w.what + " at " + Hex(w.va) +
                                    ": expected " + HexBytes(w.expected) + ", found " + HexBytes(now));
        }
      }
      phase("run_pre");
      return r;
    }();
    if (!checked.ok()) {
      Status resumed = vm_.Resume();
      if (!resumed.ok()) return checked.status().WithContext("(and resume failed: " + resumed.message() + ")");
      return checked.status();
    }
    report.threads_scanned = checked->threads_scanned;
    report.bytes_scanned = checked->bytes_scanned;
    std::optional<VmKernelWords> kernel;
    std::optional<StagedKernelWords> staged;
    std::optional<StagedKernelWords> staged_final;
    if (checked->safe() && (!plan.kernel_edits.empty() || !plan.final_kernel_edits.empty())) {
      // Decided now, from what the guest holds inside this pause.
      auto vcpus = vm_.VcpuStates();
      Status edited = vcpus.ok() && !vcpus->empty() ? Status::Ok() : Internal("no vCPU state for the kernel edits");
      if (edited.ok()) {
        kernel.emplace(vm_, KernelMode((*vcpus)[0]));
        staged.emplace(*kernel);
        for (const KernelEdit& e : plan.kernel_edits) {
          edited = e(*staged);
          if (!edited.ok()) break;
        }
        // Staged over the first edits: they read the structures as those will have left them.
        staged_final.emplace(*staged);
        for (const KernelEdit& e : plan.final_kernel_edits) {
          if (!edited.ok()) break;
          edited = e(*staged_final);
        }
      }
      if (edited.code() == Code::kBusy && attempt < std::max(1, policy_.tries)) {
        last_busy_edit = edited.message();
        last_hits.clear();
        HV_RETURN_IF_ERROR(vm_.Resume().WithContext("resuming the VM after a busy kernel edit"));
        report.pause_us_per_try.push_back(Micros(t0, Clock::now()));
        std::this_thread::sleep_for(policy_.backoff);
        continue;
      }
      if (!edited.ok()) {
        Status resumed = vm_.Resume();
        if (!resumed.ok()) return edited.WithContext("(and resume failed: " + resumed.message() + ")");
        return edited;
      }
      phase("kernel_reads");
    }
    if (checked->safe()) {
      Step("checked");
      Status written = WriteAll(plan, staged ? &*staged : nullptr, staged_final ? &*staged_final : nullptr,
                                kernel ? &*kernel : nullptr, phase);
      Status resumed = vm_.Resume();
      phase("resume");
      const auto t1 = mark;
      report.pause_us = Micros(t0, t1);
      report.phases = std::move(phases);
      report.pause_us_per_try.push_back(report.pause_us);
      // Outside the window, and even when a write failed: whatever this pause wrote must reach a
      // migration that started meanwhile (Vm::AfterResume).
      const Status after = resumed.ok() ? vm_.AfterResume() : Status::Ok();
      if (!written.ok()) return written;
      HV_RETURN_IF_ERROR(resumed.WithContext("resuming the VM"));
      Step("resumed");
      HV_RETURN_IF_ERROR(after.WithContext("after resuming the VM"));
      return report;
    }
    last_hits = checked->hits;
    HV_RETURN_IF_ERROR(vm_.Resume().WithContext("resuming the VM after a busy check"));
    report.pause_us_per_try.push_back(Micros(t0, Clock::now()));
    if (attempt < policy_.tries) std::this_thread::sleep_for(policy_.backoff);
  }
  if (last_hits.empty() && !last_busy_edit.empty()) {
    return Busy("guest busy after " + std::to_string(report.tries) + " tries: " + last_busy_edit);
  }
  return Busy("code busy after " + std::to_string(report.tries) + " tries: " + DescribeHits(last_hits));
}

}  // namespace hv::patcher
