// hvpatch apply DOMAIN PATCH.ko: load, link, plan, and switch every function in one pause.
#include <algorithm>
#include <cstdio>

#include "cli/command.h"
#include "cli/fleet_run.h"
#include "cli/module_release.h"
#include "cli/render.h"
#include "cli/patch_set_record.h"
#include "cli/session.h"
#include "patcher/capstone_api.h"
#include "patcher/patch_module.h"
#include "patcher/run_pre.h"

namespace hv::cli {

// Shared by apply and check (dry_run).
int RunApplyRequest(const GlobalOptions& o, const std::vector<std::string>& args,
                    const Command& command, bool dry_run) {
  if (!dry_run && IsFleetForm(args)) return RunFleet(o, command, args);
  if (args.size() != 2) return UsageError(command, "expected DOMAIN and PATCH.ko");
  // The disassembler loads (~10 ms, patcher/capstone_api.h) while this thread waits on QEMU.
  patcher::PreloadCapstone();
  auto bytes = ReadPatchFile(args[1]);
  if (!bytes.ok()) return ReportError(o, bytes.status());
  // A malformed module is refused before anything connects to the VM.
  auto module = patcher::LoadPatchModule(*bytes, args[1]);
  if (!module.ok()) return ReportError(o, module.status());
  // A module built by `hvpatch build` carries its run-pre records: comparing its before code with
  // the guest's memory is the proof that it fits this kernel (Ksplice's rule), and it names the
  // function and offset that differ. Any other module has only its vermagic to go by.
  const bool has_run_pre = std::any_of(module->sections().begin(), module->sections().end(),
                                       [](const auto& s) { return s.name == patcher::kRunPreSection; });
  auto session = OpenSession(o, args[0], true);
  if (!session.ok()) return ReportError(o, session.status());
  if (!has_run_pre) {
    if (Status s = CheckBuiltFor(*bytes, args[1], (*session)->kernel->release()); !s.ok()) return ReportError(o, s);
  }
  patcher::ApplyRequest req;
  req.patch_path = args[1];
  req.module = std::move(*bytes);
  req.retry = RetryFrom(o);
  req.dry_run = dry_run;
  auto r = (*session)->engine->Apply(req);
  if (!r.ok()) return ReportError(o, r.status());
  if (!dry_run) RecordReplaced(o, **session, r->replaced, r->name);
  if (!dry_run) RecordApplied(o, **session, r->name, req.module);
  if (!r->confirmed && !(*session)->agent) r->confirmation = (*session)->agent_note;
  if (o.json) {
    std::printf("%s\n", ApplyJson(*r, (*session)->recovery).dump().c_str());
  } else {
    std::fputs(ApplyText(*r).c_str(), stdout);
  }
  return kExitOk;
}

extern const Command kApplyCommand;
static int RunApply(const GlobalOptions& o, const std::vector<std::string>& args) {
  return RunApplyRequest(o, args, kApplyCommand, false);
}

const Command kApplyCommand = {"apply", RunApply, "apply DOMAIN|--all|--domains A,B PATCH.ko",
    "live-patch the guest kernel with a livepatch module"};

}  // namespace hv::cli
