// hvpatch-kvm-lab: the nested KVM lab by hand (docs/kvm.md).
//   hvpatch-kvm-lab [--with FILE]... [--timeout S] SCRIPT
// Boots L1 (tests/integration/kvm/kvm_lab.h) with the build's hvpatch, hvpatch-agent,
// hvpatch-testvm and kvm_guest_test plus each --with FILE on its build disk, runs SCRIPT in L1's
// chroot (PATH has them; HVPATCH_TEST_ACCEL=kvm makes the harness start guests under KVM), prints
// its output, stops L1 by PID, and exits with SCRIPT's exit code.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/integration/kvm/kvm_lab.h"

#ifndef HVPATCH_KVM_LAB_SCRIPT
#define HVPATCH_KVM_LAB_SCRIPT ""
#endif
#ifndef HVPATCH_KVM_LAB_BINARIES
#define HVPATCH_KVM_LAB_BINARIES ""
#endif

int main(int argc, char** argv) {
  hv::testing::KvmLabOptions o;
  o.lab_script = HVPATCH_KVM_LAB_SCRIPT;
  std::string list = HVPATCH_KVM_LAB_BINARIES, script;
  for (std::size_t at = 0; at <= list.size();) {
    const std::size_t end = std::min(list.find(':', at), list.size());
    if (end > at) o.binaries.push_back(list.substr(at, end - at));
    at = end + 1;
  }
  int timeout_s = 1800;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--with") == 0 && i + 1 < argc) o.binaries.push_back(argv[++i]);
    else if (std::strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) timeout_s = std::atoi(argv[++i]);
    else if (script.empty() && argv[i][0] != '-') script = argv[i];
    else script.clear(), i = argc;
  }
  if (script.empty()) {
    std::fprintf(stderr, "usage: hvpatch-kvm-lab [--with FILE]... [--timeout S] SCRIPT\n");
    return 2;
  }
  o.lifetime_s = timeout_s + 600;
  auto lab = hv::testing::KvmLab::Start(o);
  if (!lab.ok()) {
    std::fprintf(stderr, "hvpatch-kvm-lab: %s\n", lab.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "hvpatch-kvm-lab: L1 ready in %.1f s\n%s", (*lab)->boot_seconds(),
               (*lab)->prepare_output().c_str());
  auto r = (*lab)->Run(script, timeout_s);
  int rc = 1;
  if (r.ok()) {
    std::fwrite(r->output.data(), 1, r->output.size(), stdout);
    rc = r->exit_code;
  } else {
    std::fprintf(stderr, "hvpatch-kvm-lab: %s\n", r.status().ToString().c_str());
  }
  hv::Status s = (*lab)->Stop();
  if (!s.ok()) std::fprintf(stderr, "hvpatch-kvm-lab: stopping L1: %s\n", s.ToString().c_str());
  return rc;
}
