#include "tests/integration/patch/hvpatch_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#ifndef HVPATCH_DEFAULT_BIN
#define HVPATCH_DEFAULT_BIN ""
#endif

namespace hv::testing {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

std::string HvpatchBinary() {
  const char* v = std::getenv("HVPATCH_BIN");
  return v && *v ? v : HVPATCH_DEFAULT_BIN;
}

HvpatchProcess::HvpatchProcess(const std::vector<std::string>& args, const std::vector<std::string>& env,
                               const std::string& log_prefix)
    : log_prefix_(log_prefix) {
  std::vector<std::string> argv = {HvpatchBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  start_ = Now();
  pid_ = fork();
  if (pid_ != 0) return;  // parent, or fork failed (pid_ < 0: started() is false)
  // Child: never outlive the test.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  int in = open("/dev/null", O_RDONLY);
  int out = open((log_prefix + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err = open((log_prefix + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in < 0 || out < 0 || err < 0) _exit(126);
  dup2(in, 0);
  dup2(out, 1);
  dup2(err, 2);
  for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  execv(cargv[0], cargv.data());
  _exit(127);
}

HvpatchProcess::~HvpatchProcess() {
  if (pid_ > 0 && !reaped_) Kill9();
}

void HvpatchProcess::Collect(int status) {
  reaped_ = true;
  result_.seconds = Now() - start_;
  if (WIFEXITED(status)) result_.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result_.signal = WTERMSIG(status);
  result_.out = Slurp(log_prefix_ + ".out");
  result_.err = Slurp(log_prefix_ + ".err");
}

bool HvpatchProcess::WaitStopped(int timeout_s) {
  if (pid_ <= 0 || reaped_) return false;
  const double deadline = Now() + timeout_s;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG | WUNTRACED);
    if (r == pid_ && WIFSTOPPED(status)) return true;
    if (r == pid_) {
      Collect(status);
      return false;
    }
    if (Now() > deadline) {
      result_.timed_out = true;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

HvpatchRun HvpatchProcess::Wait(int timeout_s) {
  if (pid_ <= 0) {
    result_.err = "fork failed";
    return result_;
  }
  const double deadline = Now() + timeout_s;
  while (!reaped_) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      Collect(status);
      break;
    }
    if (Now() > deadline) {
      Kill9();
      result_.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return result_;
}

bool HvpatchProcess::Alive() {
  if (pid_ <= 0 || reaped_) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    Collect(status);
    return false;
  }
  return true;
}

void HvpatchProcess::Kill9() {
  if (pid_ <= 0 || reaped_) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  Collect(status);
}

void HvpatchProcess::Continue() {
  if (pid_ > 0 && !reaped_) kill(pid_, SIGCONT);
}

}  // namespace hv::testing
