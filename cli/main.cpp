// hvpatch: live-patch the Linux kernel of running VMs from the hypervisor side.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/command.h"

namespace {

void PrintHelp(FILE* out) {
  std::fprintf(out,
               "usage: hvpatch [OPTIONS] COMMAND DOMAIN [ARGS]\n"
               "\n"
               "Live-patches the Linux kernel of a running VM from the hypervisor side: pauses the\n"
               "vCPUs, checks every guest stack, writes jmp trampolines, resumes. No module is\n"
               "loaded in the guest. PATCH.ko is a livepatch module built with kbuild.\n"
               "\n"
               "DOMAIN:\n"
               "  NAME or UUID           a libvirt domain on the -c connection (as virsh)\n"
               "  qmp:PATH               a QEMU QMP unix socket\n"
               "\n"
               "Commands:\n");
  for (const auto& c : hv::cli::Commands()) std::fprintf(out, "  %-34s %s\n", c.usage, c.summary);
  std::fprintf(out,
               "\n"
               "Options:\n"
               "  -c, --connect URI      libvirt URI for domain names (default qemu:///system)\n"
               "  --json                 print one JSON object (errors too)\n"
               "  --state-dir DIR        ledgers and locks (default /var/lib/hvpatch,\n"
               "                         or $HVPATCH_STATE_DIR)\n"
               "  --tries N              stack-check attempts before 'code busy' (default 5)\n"
               "  --retry-delay-ms MS    wait between attempts (default 1000)\n"
               "  --lock-wait-ms MS      wait for another hvpatch on the same VM (default 10000)\n"
               "  --system-map FILE      symbols of the guest's kernel build, used when they cannot\n"
               "                         be read from guest memory or from the agent\n"
               "  --kaslr-offset HEX     KASLR offset for --system-map (default: from vmcoreinfo)\n"
               "  --no-agent             do not use the guest agent (no in-guest confirmation)\n"
               "  --no-attach-arena      refuse a domain without the arena device instead of\n"
               "                         hot-plugging one (the hint shows the XML to add)\n"
               "  --agent-timeout-ms MS  how long to wait for the agent's sync (default 3000)\n"
               "  -h, --help             this help\n"
               "\n"
               "Exit codes: 0 ok, 1 error, 2 usage, 3 busy: retry later (a guest task is inside\n"
               "a function being replaced, or another hvpatch holds the VM's lock).\n");
}

bool ParseInt(const char* s, int min, int max, int* out) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (!*s || *end || v < min || v > max) return false;
  *out = static_cast<int>(v);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  hv::cli::GlobalOptions o;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "hvpatch: option '%s' needs a value\n", name);
        std::exit(hv::cli::kExitUsage);
      }
      return argv[++i];
    };
    auto int_value = [&](const char* name, int min, int max, int* out) {
      const char* v = value(name);
      if (!ParseInt(v, min, max, out)) {
        std::fprintf(stderr, "hvpatch: option '%s': bad value '%s' (expected %d..%d)\n", name, v,
                     min, max);
        std::exit(hv::cli::kExitUsage);
      }
    };
    if (a == "-h" || a == "--help") {
      PrintHelp(stdout);
      return hv::cli::kExitOk;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "-c" || a == "--connect") {
      o.uri = value("--connect");
    } else if (a == "--state-dir") {
      o.state_dir = value("--state-dir");
    } else if (a == "--tries") {
      int_value("--tries", 1, 100, &o.tries);
    } else if (a == "--retry-delay-ms") {
      int_value("--retry-delay-ms", 0, 600000, &o.retry_delay_ms);
    } else if (a == "--system-map") {
      o.system_map = value("--system-map");
    } else if (a == "--kaslr-offset") {
      const char* v = value("--kaslr-offset");
      char* end = nullptr;
      const unsigned long long off = std::strtoull(v, &end, 16);
      if (!*v || *end) {
        std::fprintf(stderr, "hvpatch: option '--kaslr-offset': bad value '%s' (expected hex)\n", v);
        return hv::cli::kExitUsage;
      }
      o.kaslr_offset = off;
    } else if (a == "--no-attach-arena") {
      o.attach_arena = false;
    } else if (a == "--no-agent") {
      o.agent = false;
    } else if (a == "--agent-timeout-ms") {
      int_value("--agent-timeout-ms", 100, 600000, &o.agent_timeout_ms);
    } else if (a == "--lock-wait-ms") {
      int_value("--lock-wait-ms", 0, 3600000, &o.lock_wait_ms);
    } else {
      std::fprintf(stderr, "hvpatch: unknown option '%s' (see hvpatch --help)\n", a.c_str());
      return hv::cli::kExitUsage;
    }
  }
  if (i >= argc) {
    PrintHelp(stderr);
    return hv::cli::kExitUsage;
  }
  const std::string name = argv[i++];
  for (const auto& c : hv::cli::Commands()) {
    if (name == c.name) {
      std::vector<std::string> args(argv + i, argv + argc);
      for (const auto& a : args) {
        if (a == "-h" || a == "--help") {
          std::printf("usage: hvpatch [OPTIONS] %s\n%s\n", c.usage, c.summary);
          return hv::cli::kExitOk;
        }
      }
      return c.run(o, args);
    }
  }
  std::fprintf(stderr, "hvpatch: unknown command '%s' (see hvpatch --help)\n", name.c_str());
  return hv::cli::kExitUsage;
}
