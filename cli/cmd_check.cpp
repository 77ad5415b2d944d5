// hvpatch check DOMAIN PATCH.ko: every check apply makes (load, link, entry sites, one stack
// check inside a pause), and no write.
#include "cli/command.h"

namespace hv::cli {

int RunApplyRequest(const GlobalOptions& o, const std::vector<std::string>& args,
                    const Command& command, bool dry_run);

extern const Command kCheckCommand;
static int RunCheck(const GlobalOptions& o, const std::vector<std::string>& args) {
  return RunApplyRequest(o, args, kCheckCommand, true);
}

const Command kCheckCommand = {"check", RunCheck, "check DOMAIN PATCH.ko",
                               "dry run: every check of apply, no write"};

}  // namespace hv::cli
