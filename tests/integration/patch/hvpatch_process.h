// The real `hvpatch` binary as a child process, for the patch transaction's integration tests:
// run to completion, or started and caught where the HVPATCH_TEST_STOP_AT hook stops it (so a
// test can kill -9 it there, or let it go on). stdout and stderr go to files, read at the end.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace hv::testing {

struct HvpatchRun {
  int exit_code = -1;  // -1 when a signal ended it
  int signal = 0;      // the signal that ended it, or 0
  bool timed_out = false;
  double seconds = 0;
  std::string out, err;
};

// The binary under test: $HVPATCH_BIN, or the path meson compiled in.
std::string HvpatchBinary();

class HvpatchProcess {
 public:
  // Starts `HvpatchBinary() args...` with `env` ("NAME=value") added to the environment and
  // stdin from /dev/null; output goes to `log_prefix`.out/.err.
  HvpatchProcess(const std::vector<std::string>& args, const std::vector<std::string>& env,
                 const std::string& log_prefix);
  ~HvpatchProcess();  // kills (SIGKILL) and reaps a process still alive
  HvpatchProcess(const HvpatchProcess&) = delete;
  HvpatchProcess& operator=(const HvpatchProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  // Waits until the process stops itself (true) or ends (false; Result() then has the outcome).
  // After `timeout_s`, false with timed_out set and the process still running.
  bool WaitStopped(int timeout_s);
  // Waits for the end; after `timeout_s` kills it with SIGKILL and sets timed_out.
  HvpatchRun Wait(int timeout_s);
  // True while the process has not ended (stopped counts as alive).
  bool Alive();
  void Kill9();       // SIGKILL, then reap
  void Continue();    // SIGCONT
  const HvpatchRun& Result() const { return result_; }

 private:
  void Collect(int status);

  pid_t pid_ = -1;
  bool reaped_ = false;
  std::string log_prefix_;
  double start_ = 0;
  HvpatchRun result_;
};

}  // namespace hv::testing
