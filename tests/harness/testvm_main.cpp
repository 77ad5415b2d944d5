// hvpatch-testvm: the VM test harness for shell scripts (the demo, manual poking).
//   hvpatch-testvm start DIR [--no-agent] [--accel kvm] [--mem MIB] [--shared-ram] [--qemu-arg ARG]...
//                                            boot a test guest in DIR, detached; prints its QMP target
//                                            (--shared-ram: guest RAM in a shared memfd, which
//                                            hvpatch maps: docs/performance.md)
//   hvpatch-testvm run DIR SCRIPT            run SCRIPT in the guest; prints output, exits with its code
//   hvpatch-testvm stop DIR                  stop the guest started in DIR (by its PID)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/harness/test_vm.h"

namespace {

int Usage() {
  std::fprintf(stderr,
               "usage: hvpatch-testvm start DIR [--no-agent] [--accel tcg|kvm] [--mem MIB] [--shared-ram] [--qemu-arg ARG]...\n"
               "       hvpatch-testvm run DIR SCRIPT\n"
               "       hvpatch-testvm stop DIR\n");
  return 2;
}

int Fail(const hv::Status& s) {
  std::fprintf(stderr, "hvpatch-testvm: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string cmd = argv[1], dir = argv[2];
  if (cmd == "start") {
    hv::testing::TestVmOptions o;
    o.dir = dir;
    o.detach = true;
    for (int i = 3; i < argc; ++i) {
      if (std::strcmp(argv[i], "--no-agent") == 0) o.agent = false;
      else if (std::strcmp(argv[i], "--accel") == 0 && i + 1 < argc) o.accel = argv[++i];
      else if (std::strcmp(argv[i], "--mem") == 0 && i + 1 < argc) o.mem_mib = std::atoi(argv[++i]);
      else if (std::strcmp(argv[i], "--shared-ram") == 0) o.shared_ram = true;
      else if (std::strcmp(argv[i], "--qemu-arg") == 0 && i + 1 < argc) o.extra_qemu_args.push_back(argv[++i]);
      else return Usage();
    }
    auto vm = hv::testing::TestVm::Start(o);
    if (!vm.ok()) return Fail(vm.status());
    std::printf("%s\n", (*vm)->qmp_target().c_str());
    (*vm)->Disown();  // detached: the VM outlives us; `stop` ends it
    return 0;
  }
  auto vm = hv::testing::TestVm::Attach(dir);
  if (!vm.ok()) return Fail(vm.status());
  if (cmd == "run" && argc == 4) {
    auto r = (*vm)->Run(argv[3], 600);
    if (!r.ok()) return Fail(r.status());
    std::fwrite(r->output.data(), 1, r->output.size(), stdout);
    (*vm)->Disown();
    return r->exit_code;
  }
  if (cmd == "stop" && argc == 3) {
    hv::Status s = (*vm)->Stop();
    return s.ok() ? 0 : Fail(s);
  }
  return Usage();
}
