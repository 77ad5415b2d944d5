// hvpatch revert DOMAIN NAME: check the patch's code is idle, restore the original entries in
// one pause, free its arena pages.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "base/hex.h"
#include "cli/command.h"
#include "cli/session.h"

namespace hv::cli {

extern const Command kRevertCommand;

static int RunRevert(const GlobalOptions& o, const std::vector<std::string>& args) {
  if (args.size() != 2) return UsageError(kRevertCommand, "expected DOMAIN and a patch NAME");
  auto session = OpenSession(o, args[0], true);
  if (!session.ok()) return ReportError(o, session.status());
  auto r = (*session)->engine->Revert({args[1], RetryFrom(o)});
  if (!r.ok()) return ReportError(o, r.status());
  if (!r->gone_with_boot.empty()) {
    // The patch went with an earlier boot of the guest: nothing to undo, nothing written.
    if (o.json) {
      nlohmann::json j = {{"name", r->name}, {"functions", nlohmann::json::array()},
                          {"gone_with_boot", r->gone_with_boot}, {"recovered", (*session)->recovery}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("patch '%s' is gone with an earlier boot of the guest (%s): nothing to revert, nothing written\n",
                  r->name.c_str(), r->gone_with_boot.c_str());
    }
    return kExitOk;
  }
  if (o.json) {
    nlohmann::json j = {{"name", r->name},           {"functions", r->functions},
                        {"pause_us", r->commit.pause_us}, {"tries", r->commit.tries},
                        {"threads_scanned", r->commit.threads_scanned},
                        {"bytes_scanned", r->commit.bytes_scanned},
                        {"recovered", (*session)->recovery}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("reverted patch '%s': %zu function(s), pause %llu us, %d tr%s\n", r->name.c_str(),
                r->functions.size(), static_cast<unsigned long long>(r->commit.pause_us),
                r->commit.tries, r->commit.tries == 1 ? "y" : "ies");
  }
  return kExitOk;
}

const Command kRevertCommand = {"revert", RunRevert, "revert DOMAIN NAME",
                                "remove an applied patch (the top one of a stack first)"};

}  // namespace hv::cli
