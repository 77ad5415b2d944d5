// Runs a program (hvpatch itself, in integration tests) and captures what it did.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"

namespace hv::testing {

struct ProgramResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;      // the signal that killed it, or 0
  std::string out, err;
};

// Runs argv[0] (PATH-searched) with `env` entries ("NAME=value") added to the environment,
// stdin from /dev/null, and waits at most `timeout_s` (then SIGKILL and kDeadlineExceeded).
Result<ProgramResult> RunProgram(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env = {}, int timeout_s = 300);

}  // namespace hv::testing
