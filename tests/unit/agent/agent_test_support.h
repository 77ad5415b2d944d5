// Shared pieces of the agent unit tests: a temp dir with guest-like fixture files, the real
// hvpatch-agent binary started on a unix socket, and raw socket helpers for framing tests.
#pragma once

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace hv::agent::testing {

namespace fs = std::filesystem;

inline std::string MakeTempDir() {
  std::string tmpl = (fs::temp_directory_path() / "hvpatch-agent-test-XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  return p ? std::string(p) : std::string();
}

inline void WriteFile(const fs::path& path, std::string_view data) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

inline std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void Put32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }

// An ELF note: header, name and descriptor each padded to 4 bytes.
inline std::string Note(std::string_view name, uint32_t type, std::string_view desc) {
  std::string s;
  Put32(&s, static_cast<uint32_t>(name.size() + 1));
  Put32(&s, static_cast<uint32_t>(desc.size()));
  Put32(&s, type);
  s.append(name);
  s.push_back('\0');
  while (s.size() % 4) s.push_back('\0');
  s.append(desc);
  while (s.size() % 4) s.push_back('\0');
  return s;
}

inline const std::string kBuildId = std::string("\x01\x23\x45\x67\x89\xab\xcd\xef\x10\x32"
                                                "\x54\x76\x98\xba\xdc\xfe\x00\x11\x22\x33", 20);
inline constexpr uint64_t kTextBase = 0xffffffffa5000000ull;
inline constexpr uint64_t kCmdlineProcShow = kTextBase + 0x3a1230;

// A minimal /proc/kcore: ELF64 core with a PT_NOTE and two PT_LOAD segments, one covering kernel
// text around kCmdlineProcShow (which starts with the ftrace nop), one a vmalloc-like range.
inline std::string FakeKcore() {
  struct Ehdr {
    unsigned char ident[16];
    uint16_t type, machine;
    uint32_t version;
    uint64_t entry, phoff, shoff;
    uint32_t flags;
    uint16_t ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
  };
  struct Phdr {
    uint32_t type, flags;
    uint64_t offset, vaddr, paddr, filesz, memsz, align;
  };
  static_assert(sizeof(Ehdr) == 64 && sizeof(Phdr) == 56);
  Ehdr eh = {};
  std::memcpy(eh.ident, "\x7f" "ELF\x02\x01\x01", 7);
  eh.type = 4;  // ET_CORE
  eh.machine = 62;
  eh.version = 1;
  eh.phoff = 64;
  eh.ehsize = 64;
  eh.phentsize = 56;
  eh.phnum = 3;
  const uint64_t text_off = 0x1000, text_size = 0x400000, vm_off = text_off + text_size;
  Phdr ph[3] = {};
  ph[0] = {4, 0, 0x200, 0, 0, 0x10, 0, 4};  // PT_NOTE
  ph[1] = {1, 7, text_off, kTextBase, 0, text_size, text_size, 0x1000};
  ph[2] = {1, 7, vm_off, 0xffffc90000000000ull, 0, 0x1000, 0x1000, 0x1000};
  std::string img(vm_off + 0x1000, '\0');
  std::memcpy(img.data(), &eh, sizeof(eh));
  std::memcpy(img.data() + 64, ph, sizeof(ph));
  const char nop5[] = "\x0f\x1f\x44\x00\x00\x55\x48\x89\xe5";
  std::memcpy(img.data() + text_off + (kCmdlineProcShow - kTextBase), nop5, 9);
  std::memcpy(img.data() + vm_off, "VMALLOC!", 8);
  return img;
}

// A guest-like tree: <dir>/proc, <dir>/sys, state under <dir>/run/hvpatch/livepatch.
struct GuestFixture {
  std::string dir;
  std::string proc() const { return dir + "/proc"; }
  std::string sys() const { return dir + "/sys"; }
  std::string state() const { return dir + "/run/hvpatch/livepatch"; }

  void Populate(std::string_view release = "6.1.0-18-cloud-amd64") {
    WriteFile(proc() + "/sys/kernel/osrelease", std::string(release) + "\n");
    WriteFile(sys() + "/kernel/notes",
              Note("Xen", 1, std::string(8, '\x11')) + Note("GNU", 3, kBuildId) +
                  Note("Linux", 0x101, "6.1.0"));
    char text_sym[64];
    std::snprintf(text_sym, sizeof(text_sym), "%016llx", static_cast<unsigned long long>(kTextBase));
    char cmd_sym[64];
    std::snprintf(cmd_sym, sizeof(cmd_sym), "%016llx", static_cast<unsigned long long>(kCmdlineProcShow));
    WriteFile(proc() + "/kallsyms", std::string(text_sym) + " T _stext\n" + cmd_sym +
                                        " t cmdline_proc_show\n"
                                        "ffffffffc0a01000 t virtio_console_fn\t[virtio_console]\n"
                                        "ffffffffc0a02000 T klp_sample_fn\t[livepatch_sample]\n");
    WriteFile(proc() + "/kcore", FakeKcore());
    const std::string lp = sys() + "/kernel/livepatch/livepatch_sample";
    WriteFile(lp + "/enabled", "1\n");
    WriteFile(lp + "/transition", "0\n");
    WriteFile(lp + "/force", "");
    WriteFile(lp + "/vmlinux/patched", "1\n");
    fs::create_directories(lp + "/vmlinux/cmdline_proc_show,1");
    WriteFile(sys() + "/kernel/tracing/enabled_functions",
              "cmdline_proc_show (1) R I  \ttramp: 0xffffffffc0201000 (klp_ftrace_handler+0x0/0x1a0) "
              "->ftrace_ops_assist_func+0x0/0xf0\n"
              "virtio_console_fn [virtio_console] (2)\n");
  }
};

// The real hvpatch-agent binary (HVPATCH_AGENT, set by meson) listening on a unix socket.
class AgentProcess {
 public:
  ~AgentProcess() { Stop(); }

  // Starts the agent; waits until its socket exists. Returns false (with a gtest failure) otherwise.
  bool Start(const GuestFixture& g, const std::string& socket) {
    const char* bin = std::getenv("HVPATCH_AGENT");
    if (!bin || !*bin) {
      ADD_FAILURE() << "HVPATCH_AGENT is not set";
      return false;
    }
    socket_ = socket;
    log_ = g.dir + "/agent.log";
    std::error_code ec;
    fs::remove(socket, ec);  // a killed agent leaves its socket file behind
    pid_ = fork();
    if (pid_ == 0) {
      FILE* f = std::freopen(log_.c_str(), "a", stderr);
      (void)f;
      execl(bin, bin, "--unix", socket.c_str(), "--proc-root", g.proc().c_str(), "--sys-root",
            g.sys().c_str(), "--state-root", g.state().c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 500; ++i) {
      if (fs::exists(socket)) return true;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        ADD_FAILURE() << "hvpatch-agent exited early: " << ReadFile(log_);
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "hvpatch-agent did not create " << socket;
    return false;
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }
  std::string Log() const { return ReadFile(log_); }

 private:
  pid_t pid_ = -1;
  std::string socket_;
  std::string log_;
};

// A connected raw socket to `path`, or -1.
inline int ConnectRaw(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) < 0) {
    close(fd);
    return -1;
  }
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

}  // namespace hv::agent::testing
