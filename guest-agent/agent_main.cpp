// hvpatch-agent: the in-guest daemon (see docs/agent.md).
//
//   hvpatch-agent                   serve the virtio-serial port org.hvpatch.agent.0 in the foreground
//   hvpatch-agent --unix PATH       listen on a unix socket instead (tests)
//   --port NAME                     another virtio-serial port name
//   --proc-root DIR --sys-root DIR --dev-root DIR   where /proc, /sys and /dev are (tests)
//   --state-root DIR                the parity tree (default /run/hvpatch/livepatch)
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "guest-agent/agent_server.h"
#include "guest-agent/agent_service.h"
#include "guest-agent/channel.h"

namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: hvpatch-agent [--unix PATH | --port NAME] [--proc-root DIR] [--sys-root DIR]\n"
               "                     [--dev-root DIR] [--state-root DIR]\n");
}

}  // namespace

int main(int argc, char** argv) {
  hv::agent::AgentPaths paths;
  std::string unix_path;
  std::string port_name = "org.hvpatch.agent.0";
  std::string dev_root = "/dev";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      Usage();
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "hvpatch-agent: option '%s' is unknown or lacks its value\n", arg.c_str());
      Usage();
      return 2;
    }
    const std::string value = argv[++i];
    if (arg == "--unix") unix_path = value;
    else if (arg == "--port") port_name = value;
    else if (arg == "--proc-root") paths.proc_root = value;
    else if (arg == "--sys-root") paths.sys_root = value;
    else if (arg == "--dev-root") dev_root = value;
    else if (arg == "--state-root") paths.state_root = value;
    else {
      std::fprintf(stderr, "hvpatch-agent: unknown option '%s'\n", arg.c_str());
      Usage();
      return 2;
    }
  }
  // A host that vanishes mid-write must cost a session, not the daemon.
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<hv::agent::Channel> channel;
  if (!unix_path.empty()) {
    auto listening = hv::agent::UnixSocketChannel::Listen(unix_path);
    if (!listening.ok()) {
      std::fprintf(stderr, "hvpatch-agent: %s\n", listening.status().message().c_str());
      return 1;
    }
    channel = std::move(*listening);
  } else {
    channel = std::make_unique<hv::agent::VirtioSerialChannel>(port_name, paths.sys_root, dev_root);
  }
  if (unix_path.empty()) {
    // The guest console shows the kernel log (notices need loglevel>5); one line there tells an
    // operator the agent is up.
    if (FILE* kmsg = std::fopen((dev_root + "/kmsg").c_str(), "w")) {
      std::fprintf(kmsg, "<5>hvpatch-agent %s: started, serving %s\n", HVPATCH_AGENT_VERSION,
                   channel->Describe().c_str());
      std::fclose(kmsg);
    }
  }
  hv::agent::AgentService service(paths);
  hv::agent::AgentServer server(channel.get(), &service);
  std::fprintf(stderr, "hvpatch-agent %s: serving %s\n", HVPATCH_AGENT_VERSION,
               channel->Describe().c_str());
  server.Run();
}
