#include "tests/harness/test_vm.h"

#include "base/unix_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/harness/base64.h"

#ifndef HVPATCH_DEFAULT_IMAGES
#define HVPATCH_DEFAULT_IMAGES ""
#endif
#ifndef HVPATCH_DEFAULT_AGENT
#define HVPATCH_DEFAULT_AGENT ""
#endif

namespace hv::testing {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

std::string EnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& s, size_t n) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

bool ProcessAlive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

// Runs argv with stdout+stderr to `log`, waits, returns the exit status.
Status RunTool(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork", errno);
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    return Internal("'" + argv[0] + "' failed (status " + std::to_string(st) + "): " +
                    Tail(ReadFileOrEmpty(log), 600));
  }
  return Status::Ok();
}

}  // namespace

std::string ImagesDir() { return EnvOr("HVPATCH_IMAGES", HVPATCH_DEFAULT_IMAGES); }
std::string AgentBinary() { return EnvOr("HVPATCH_AGENT", HVPATCH_DEFAULT_AGENT); }
std::string PatchModule(std::string_view name) {
  return ImagesDir() + "/patches/" + std::string(name) + ".ko";
}

Result<std::unique_ptr<TestVm>> TestVm::Start(const TestVmOptions& options) {
  std::unique_ptr<TestVm> vm(new TestVm());
  Status s = vm->Boot(options);
  if (!s.ok()) {
    (void)vm->Stop();
    return s;
  }
  return vm;
}

Result<std::unique_ptr<TestVm>> TestVm::Attach(const std::string& dir) {
  std::unique_ptr<TestVm> vm(new TestVm());
  vm->dir_ = dir;
  vm->owns_dir_ = false;
  vm->owns_process_ = true;  // Stop() on an attached VM stops it: that is what `testvm stop` wants
  std::string pid = ReadFileOrEmpty(dir + "/qemu.pid");
  vm->qemu_pid_ = std::atoi(pid.c_str());
  if (!ProcessAlive(vm->qemu_pid_)) {
    vm->owns_process_ = false;
    return NotFound("no running test VM in '" + dir + "'");
  }
  HV_RETURN_IF_ERROR(vm->ConnectCommandChannel(5000));
  return vm;
}

Status TestVm::Boot(const TestVmOptions& o) {
  const std::string images = ImagesDir();
  if (images.empty() || !fs::exists(images + "/vmlinuz") ||
      !fs::exists(images + "/initramfs-base.cpio.gz")) {
    return FailedPrecondition("test images not found in '" + images + "'")
        .WithHint("run images/build.sh (scripts/test.sh does it)");
  }
  if (o.dir.empty()) {
    char tmpl[] = "/tmp/hvpatch-vm-XXXXXX";
    if (!mkdtemp(tmpl)) return ErrnoError("mkdtemp", errno);
    dir_ = tmpl;
    owns_dir_ = true;
  } else {
    dir_ = o.dir;
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) return Internal("creating '" + dir_ + "': " + ec.message());
    for (const char* f : {"qmp.sock", "agent.sock", "cmd.sock", "console.log", "qemu.pid"})
      fs::remove(dir_ + "/" + f, ec);
  }

  // The initramfs is the cached base archive plus, when asked, a second archive holding the
  // freshly built agent: the kernel unpacks concatenated cpio archives in order.
  std::string initrd = images + "/initramfs-base.cpio.gz";
  if (o.agent) {
    const std::string agent = AgentBinary();
    if (agent.empty() || !fs::exists(agent)) {
      return FailedPrecondition("hvpatch-agent binary not found at '" + agent + "'")
          .WithHint("build it with meson, or set HVPATCH_AGENT");
    }
    const std::string stage = dir_ + "/agent-root";
    std::error_code ec;
    fs::create_directories(stage + "/bin", ec);
    fs::copy_file(agent, stage + "/bin/hvpatch-agent", fs::copy_options::overwrite_existing, ec);
    if (ec) return Internal("staging the agent: " + ec.message());
    HV_RETURN_IF_ERROR(RunTool(
        {"sh", "-c",
         "cd '" + stage + "' && find . | cpio -o -H newc --quiet -R 0:0 | gzip -1 > ../agent.cpio.gz"},
        dir_ + "/build.log"));
    HV_RETURN_IF_ERROR(RunTool({"sh", "-c",
                                "cat '" + initrd + "' '" + dir_ + "/agent.cpio.gz' > '" + dir_ +
                                    "/initrd.img'"},
                               dir_ + "/build.log"));
    initrd = dir_ + "/initrd.img";
  }

  const std::string accel = o.accel.empty() ? EnvOr("HVPATCH_TEST_ACCEL", "tcg") : o.accel;
  std::vector<std::string> argv = {
      "timeout", "--kill-after=5", std::to_string(o.lifetime_s), "qemu-system-x86_64",
      "-accel", accel, "-machine", "pc", "-m", std::to_string(o.mem_mib),
      "-smp", std::to_string(o.smp), "-nodefaults", "-display", "none",
      "-kernel", images + "/vmlinuz", "-initrd", initrd,
      "-append", "console=ttyS0 panic=-1 quiet loglevel=4 " + o.extra_append,
      "-serial", "file:" + console_path(), "-monitor", "none",
      "-qmp", "unix:" + qmp_path() + ",server=on,wait=off",
      "-pidfile", dir_ + "/qemu.pid",
      "-device", "virtio-serial-pci,id=vser0",
      "-chardev", "socket,id=agent,path=" + agent_path() + ",server=on,wait=off",
      "-device", "virtserialport,bus=vser0.0,chardev=agent,name=org.hvpatch.agent.0",
      "-chardev", "socket,id=cmd,path=" + dir_ + "/cmd.sock,server=on,wait=off",
      "-device", "virtserialport,bus=vser0.0,chardev=cmd,name=org.hvpatch.test.0",
  };
  if (accel == "kvm") argv.insert(argv.end(), {"-cpu", "host"});
  if (o.no_reboot) argv.push_back("-no-reboot");
  if (!o.incoming.empty()) argv.insert(argv.end(), {"-incoming", o.incoming});
  if (o.shared_ram) {
    argv.insert(argv.end(), {"-object", "memory-backend-memfd,id=ram0,share=on,size=" + std::to_string(o.mem_mib) + "M",
                             "-machine", "memory-backend=ram0"});
  }
  if (o.arena) {
    // master=on lets migration and save/restore carry the arena (lab notes).
    argv.insert(argv.end(),
                {"-object", "memory-backend-file,id=arena,size=2M,mem-path=" + arena_path() + ",share=on",
                 "-device", "ivshmem-plain,id=hvpatch-arena,memdev=arena,master=on"});
  }
  argv.insert(argv.end(), o.extra_qemu_args.begin(), o.extra_qemu_args.end());

  const std::string qemu_log = dir_ + "/qemu.log";
  pid_t child = fork();
  if (child < 0) return ErrnoError("fork", errno);
  if (child == 0) {
    if (o.detach) {
      setsid();
    } else {
      // If the test process dies, `timeout` gets SIGTERM and passes it on to QEMU.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
    }
    int fd = open(qemu_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int devnull = open("/dev/null", O_RDONLY);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    if (devnull >= 0) dup2(devnull, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  timeout_pid_ = child;

  const auto deadline = Clock::now() + std::chrono::seconds(o.boot_timeout_s);
  while (true) {
    if (qemu_pid_ <= 0) {
      std::string pid = ReadFileOrEmpty(dir_ + "/qemu.pid");
      if (!pid.empty()) qemu_pid_ = std::atoi(pid.c_str());
    }
    int st = 0;
    if (waitpid(timeout_pid_, &st, WNOHANG) == timeout_pid_) {
      timeout_pid_ = -1;
      qemu_pid_ = -1;
      return Internal("QEMU exited during boot (status " + std::to_string(st) + "): " +
                      Tail(ReadFileOrEmpty(qemu_log), 800) + " console: " +
                      Tail(Console(), 800));
    }
    if (qemu_pid_ > 0 && o.incoming.empty() && Console().find("HVPATCH-READY") != std::string::npos) break;
    if (qemu_pid_ > 0 && !o.incoming.empty() && ConnectCommandChannel(1000).ok()) {
      // A restored guest prints nothing: it is back once its command loop answers.
      auto r = Run("true", std::max(1, static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(
                                                deadline - Clock::now()).count())));
      if (r.ok() && r->exit_code == 0) {
        if (o.detach) owns_dir_ = false;
        return Status::Ok();
      }
      return Internal("restored guest does not answer: " +
                      (r.ok() ? "exit " + std::to_string(r->exit_code) : r.status().message()) +
                      "; qemu log: " + Tail(ReadFileOrEmpty(qemu_log), 800));
    }
    if (Clock::now() > deadline) {
      return DeadlineExceeded("guest not ready after " + std::to_string(o.boot_timeout_s) +
                              " s; console: " + Tail(Console(), 1500));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (o.detach) owns_dir_ = false;
  return ConnectCommandChannel(10000);
}

Status TestVm::ConnectCommandChannel(int timeout_ms) {
  const std::string path = dir_ + "/cmd.sock";
  // QEMU creates the socket at startup, before the guest is ready: retry until it is there.
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    auto fd = ConnectUnixSocket(path, 1000);
    if (fd.ok()) {
      cmd_fd_ = *fd;
      return Status::Ok();
    }
    if (Clock::now() > deadline) return fd.status().WithContext("connecting to '" + path + "'");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Result<CommandResult> TestVm::Run(std::string_view script, int timeout_s) {
  if (cmd_fd_ < 0) return FailedPrecondition("test VM has no command channel");
  const unsigned id = next_id_++;
  // A per-run id lets a late answer from a timed-out command be told apart and skipped.
  const std::string tag = std::to_string(getpid()) + "-" + std::to_string(id);
  std::string line = tag + " " + Base64Encode(script) + "\n";
  for (size_t off = 0; off < line.size();) {
    ssize_t n = write(cmd_fd_, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("writing to the guest command channel", errno);
    off += static_cast<size_t>(n);
  }
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  const std::string begin = "HVOUT " + tag + "\n";
  const std::string end = "HVEND " + tag + " ";
  while (true) {
    size_t b = cmd_buf_.find(begin);
    size_t e = b == std::string::npos ? b : cmd_buf_.find(end, b);
    size_t eol = e == std::string::npos ? e : cmd_buf_.find('\n', e);
    if (eol != std::string::npos) {
      std::string body = cmd_buf_.substr(b + begin.size(), e - b - begin.size());
      CommandResult r;
      r.exit_code = std::atoi(cmd_buf_.substr(e + end.size(), eol - e - end.size()).c_str());
      auto decoded = Base64Decode(body);
      if (!decoded.ok()) return decoded.status().WithContext("guest command output");
      r.output = std::move(*decoded);
      cmd_buf_.erase(0, eol + 1);
      return r;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return DeadlineExceeded("guest command timed out after " + std::to_string(timeout_s) +
                              " s: '" + std::string(script.substr(0, 80)) + "'");
    }
    pollfd p{cmd_fd_, POLLIN, 0};
    int pr = poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 200)));
    if (pr < 0 && errno != EINTR) return ErrnoError("poll", errno);
    if (pr > 0) {
      char buf[65536];
      ssize_t n = read(cmd_fd_, buf, sizeof buf);
      if (n == 0) return Unavailable("guest command channel closed (QEMU gone?)");
      if (n < 0 && errno != EINTR) return ErrnoError("reading the guest command channel", errno);
      if (n > 0) cmd_buf_.append(buf, static_cast<size_t>(n));
      if (cmd_buf_.size() > (64u << 20)) return Internal("guest command output over 64 MiB");
    }
  }
}

Result<std::string> TestVm::Check(std::string_view script, int timeout_s) {
  HV_ASSIGN_OR_RETURN(CommandResult r, Run(script, timeout_s));
  if (r.exit_code != 0) {
    return Internal("guest command '" + std::string(script.substr(0, 80)) + "' exited " +
                    std::to_string(r.exit_code) + ": " + Tail(r.output, 400));
  }
  return std::move(r.output);
}

std::string TestVm::Console() const { return ReadFileOrEmpty(console_path()); }

int TestVm::Boots() const {
  const std::string c = Console();
  int n = 0;
  for (size_t at = c.find("HVPATCH-READY"); at != std::string::npos; at = c.find("HVPATCH-READY", at + 1)) ++n;
  return n;
}

Status TestVm::WaitForBoot(int boots, int timeout_s) {
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (Boots() <= boots) {
    if (!ProcessAlive(qemu_pid_)) return Unavailable("QEMU exited while waiting for the guest to boot again");
    if (Clock::now() > deadline) {
      return DeadlineExceeded("guest did not boot again within " + std::to_string(timeout_s) +
                              " s; console: " + Tail(Console(), 1500));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return Status::Ok();
}

Status TestVm::Stop() {
  if (cmd_fd_ >= 0) {
    close(cmd_fd_);
    cmd_fd_ = -1;
  }
  if (owns_process_ && qemu_pid_ > 0 && ProcessAlive(qemu_pid_)) {
    // Only our own QEMU, by PID. SIGTERM lets QEMU exit cleanly; SIGKILL after a grace period.
    kill(qemu_pid_, SIGTERM);
    for (int i = 0; i < 100 && ProcessAlive(qemu_pid_); ++i) {
      if (timeout_pid_ > 0 && waitpid(timeout_pid_, nullptr, WNOHANG) == timeout_pid_) timeout_pid_ = -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (ProcessAlive(qemu_pid_)) kill(qemu_pid_, SIGKILL);
  }
  if (timeout_pid_ > 0) {
    int st;
    for (int i = 0; i < 100; ++i) {
      if (waitpid(timeout_pid_, &st, WNOHANG) != 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    timeout_pid_ = -1;
  }
  qemu_pid_ = -1;
  if (owns_dir_ && !dir_.empty() && std::getenv("HVPATCH_KEEP_VM_DIR") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    owns_dir_ = false;
  }
  return Status::Ok();
}

TestVm::~TestVm() {
  if (owns_process_ || owns_dir_) (void)Stop();
}

}  // namespace hv::testing
