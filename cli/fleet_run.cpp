#include "cli/fleet_run.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "vmm/libvirt_domain.h"

namespace hv::cli {

namespace {

struct Child {
  std::string domain;
  pid_t pid = -1;
  int out_fd = -1;
  std::string out;
};

// The child's argv: the same hvpatch binary and global options, one domain, JSON out.
std::vector<std::string> ChildArgv(const GlobalOptions& o, const std::string& command, const std::string& domain,
                                   const std::string& arg) {
  std::vector<std::string> a = {"/proc/self/exe", "--json", "-c", o.uri, "--tries", std::to_string(o.tries),
                                "--retry-delay-ms", std::to_string(o.retry_delay_ms), "--lock-wait-ms",
                                std::to_string(o.lock_wait_ms), "--agent-timeout-ms",
                                std::to_string(o.agent_timeout_ms)};
  if (!o.state_dir.empty()) a.insert(a.end(), {"--state-dir", o.state_dir});
  if (!o.agent) a.push_back("--no-agent");
  if (!o.attach_arena) a.push_back("--no-attach-arena");
  a.insert(a.end(), {command, domain, arg});
  return a;
}

Result<Child> Spawn(const std::vector<std::string>& argv, const std::string& domain) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return ErrnoError("pipe", errno);
  // /proc/self/exe resolves in the parent: the child execs the very binary that runs now.
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return ErrnoError("readlink /proc/self/exe", errno);
  self[n] = '\0';
  const pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork", errno);
  if (pid == 0) {
    const int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(p[1], 1);
    dup2(devnull, 2);  // with --json every error is in the JSON on stdout
    std::vector<char*> args;
    args.push_back(self);
    for (std::size_t i = 1; i < argv.size(); ++i) args.push_back(const_cast<char*>(argv[i].c_str()));
    args.push_back(nullptr);
    execv(self, args.data());
    _exit(127);
  }
  close(p[1]);
  return Child{domain, pid, p[0], {}};
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string Line(const FleetOutcome& r) {
  std::string s = r.domain + ": " + r.result;
  if (r.result == "ok") {
    s += " (pause " + std::to_string(r.pause_us) + " us, " + std::to_string(r.tries) + " tr" +
         (r.tries == 1 ? "y" : "ies") + (r.confirmed ? ", confirmed)" : ", not confirmed)");
  } else if (!r.detail.empty()) {
    s += ": " + r.detail;
  }
  return s;
}

nlohmann::json Json(const FleetOutcome& r) {
  nlohmann::json j = {{"domain", r.domain}, {"result", r.result}, {"exit_code", r.exit_code}};
  if (r.result == "ok") {
    j["pause_us"] = r.pause_us;
    j["tries"] = r.tries;
    j["confirmed"] = r.confirmed;
  } else {
    j["reason"] = r.detail;
  }
  return j;
}

}  // namespace

bool IsFleetForm(const std::vector<std::string>& args) {
  return !args.empty() && (args[0] == "--all" || args[0] == "--domains");
}

FleetOutcome ClassifyFleetChild(const std::string& domain, int exit_code, const std::string& out) {
  FleetOutcome r;
  r.domain = domain;
  r.exit_code = exit_code;
  nlohmann::json j = nlohmann::json::parse(out.substr(0, out.find('\n')), nullptr, false);
  if (!j.is_object()) {
    r.result = "failed";
    r.detail = "hvpatch exited " + std::to_string(exit_code) + " with no result";
    return r;
  }
  if (exit_code == 0 && !j.contains("error")) {
    r.result = "ok";
    r.pause_us = j.value("pause_us", std::uint64_t{0});
    r.tries = j.value("tries", 0);
    r.confirmed = j.value("confirmed", false);
    return r;
  }
  const nlohmann::json e = j.value("error", nlohmann::json::object());
  r.detail = e.is_object() ? e.value("message", std::string()) : std::string();
  if (exit_code == kExitBusy) {
    r.result = "busy";
  } else if (r.detail.find("was built for kernel") != std::string::npos ||
             r.detail.find("run-pre: ") != std::string::npos) {
    // Another kernel build in this guest: by vermagic, or, for a module built by `hvpatch build`,
    // by run-pre matching (its before code is not this kernel's). Nothing to do there.
    r.result = "skipped";
  } else {
    r.result = "failed";
  }
  return r;
}

int RunFleet(const GlobalOptions& o, const Command& command, const std::vector<std::string>& args) {
  std::vector<std::string> domains;
  bool all = false;
  int parallel = 0;
  std::string arg;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--all") {
      all = true;
    } else if (args[i] == "--domains" && i + 1 < args.size()) {
      domains = SplitList(args[++i]);
    } else if (args[i] == "--parallel" && i + 1 < args.size()) {
      parallel = std::atoi(args[++i].c_str());
      if (parallel < 1 || parallel > 256) return UsageError(command, "--parallel expects 1..256");
    } else if (arg.empty() && args[i][0] != '-') {
      arg = args[i];
    } else {
      return UsageError(command, "unexpected '" + args[i] + "' in a fleet run");
    }
  }
  if (arg.empty()) return UsageError(command, "a fleet run needs the patch (apply: PATCH.ko, revert: NAME)");
  if (all) {
    auto running = vmm::ListRunningDomains(o.uri);
    if (!running.ok()) return ReportError(o, running.status());
    domains = std::move(*running);
    std::sort(domains.begin(), domains.end());
  }
  if (domains.empty()) return ReportError(o, NotFound("no domain to " + std::string(command.name) + " on '" + o.uri + "'"));
  if (command.name == std::string("apply") && arg[0] != '/') {
    // The children resolve relative paths from the same directory; make the path absolute for
    // the messages, which name it.
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd)) arg = std::string(cwd) + "/" + arg;
  }
  if (parallel == 0) parallel = static_cast<int>(std::min<std::size_t>(8, domains.size()));
  const bool tty = isatty(2) != 0;

  std::vector<FleetOutcome> results;
  std::map<std::string, int> counts;
  std::vector<Child> running;
  std::size_t next = 0;
  auto progress = [&](const FleetOutcome& r) {
    if (tty) std::fprintf(stderr, "\r\033[K");
    std::fprintf(stderr, "hvpatch: [%zu/%zu] %s\n", results.size(), domains.size(), Line(r).c_str());
    if (tty) {
      std::fprintf(stderr, "%zu/%zu done, %d busy, %d failed", results.size(), domains.size(), counts["busy"],
                   counts["failed"]);
    }
    std::fflush(stderr);
    if (o.json) {
      std::printf("%s\n", Json(r).dump().c_str());
      std::fflush(stdout);
    }
  };
  while (next < domains.size() || !running.empty()) {
    while (next < domains.size() && running.size() < static_cast<std::size_t>(parallel)) {
      const std::string& d = domains[next++];
      auto c = Spawn(ChildArgv(o, command.name, d, arg), d);
      if (!c.ok()) {
        FleetOutcome r{d, "failed", c.status().message(), 0, 0, false, kExitError};
        results.push_back(r);
        ++counts[r.result];
        progress(r);
        continue;
      }
      running.push_back(std::move(*c));
    }
    if (running.empty()) break;
    std::vector<pollfd> fds;
    for (const Child& c : running) fds.push_back({c.out_fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) break;
    for (std::size_t i = 0; i < running.size();) {
      Child& c = running[i];
      bool done = false;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[65536];
        const ssize_t n = read(c.out_fd, buf, sizeof buf);
        if (n > 0 && c.out.size() < (16u << 20)) c.out.append(buf, static_cast<std::size_t>(n));
        done = n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN);
      }
      if (!done) {
        ++i;
        continue;
      }
      close(c.out_fd);
      int st = 0;
      while (waitpid(c.pid, &st, 0) < 0 && errno == EINTR) {
      }
      const int code = WIFEXITED(st) ? WEXITSTATUS(st) : kExitError;
      FleetOutcome r = ClassifyFleetChild(c.domain, code, c.out);
      results.push_back(r);
      ++counts[r.result];
      progress(r);
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
      fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  const int exit_code = counts["failed"] > 0 ? kExitError : counts["busy"] > 0 ? kExitBusy : kExitOk;
  std::sort(results.begin(), results.end(), [](const FleetOutcome& a, const FleetOutcome& b) { return a.domain < b.domain; });
  if (o.json) {
    nlohmann::json s = {{"summary",
                         {{"command", command.name}, {"domains", domains.size()}, {"ok", counts["ok"]},
                          {"busy", counts["busy"]}, {"skipped", counts["skipped"]}, {"failed", counts["failed"]}}},
                        {"exit_code", exit_code}};
    std::printf("%s\n", s.dump().c_str());
    return exit_code;
  }
  std::size_t w = 6;
  for (const auto& r : results) w = std::max(w, r.domain.size());
  std::printf("%-*s  %-7s  %9s  %5s  %-9s  %s\n", static_cast<int>(w), "DOMAIN", "RESULT", "PAUSE_US", "TRIES",
              "CONFIRMED", "DETAIL");
  for (const auto& r : results) {
    const bool ok = r.result == "ok";
    std::printf("%-*s  %-7s  %9s  %5s  %-9s  %s\n", static_cast<int>(w), r.domain.c_str(), r.result.c_str(),
                ok ? std::to_string(r.pause_us).c_str() : "-", ok ? std::to_string(r.tries).c_str() : "-",
                ok ? (r.confirmed ? "yes" : "no") : "-", r.detail.c_str());
  }
  std::printf("%zu domain(s): %d ok, %d busy, %d skipped, %d failed\n", domains.size(), counts["ok"], counts["busy"],
              counts["skipped"], counts["failed"]);
  return exit_code;
}

}  // namespace hv::cli
