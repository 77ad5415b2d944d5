// The libvirt test lab: a real libvirtd (scripts/libvirtd-test.sh, started and stopped by PID
// for the suite; CI has none running) and TCG test domains defined from images/out: direct
// kernel boot of the test guest, <features><acpi/> (PCI hot-plug), the agent channel
// org.hvpatch.agent.0 and the harness's command channel org.hvpatch.test.0, both unix sockets in
// the domain's directory. QEMU runs as libvirt-qemu (libvirt's defaults, Debian's qemu.conf).
// Domains are named hvpatch-test-*: `libvirtd-test.sh stop` destroys any a dead test left.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "tests/harness/run_program.h"
#include "tests/harness/test_vm.h"

namespace hv::testing {

inline constexpr char kLibvirtUri[] = "qemu:///system";

// virsh -c qemu:///system ARGS...; errors when virsh fails (with its stderr).
Result<std::string> Virsh(const std::vector<std::string>& args, int timeout_s = 120);

class LibvirtDaemon {
 public:
  // Starts libvirtd with the hvpatch hook installed (running `hvpatch_bin libvirt-hook` with
  // HVPATCH_STATE_DIR=state_dir), or none when hvpatch_bin is empty.
  static Result<std::unique_ptr<LibvirtDaemon>> Start(const std::string& hvpatch_bin, const std::string& state_dir);
  ~LibvirtDaemon();  // libvirtd-test.sh stop
  std::string start_log;
};

struct TestDomainOptions {
  int mem_mib = 256;
  int vcpus = 2;
  bool agent = true;  // the agent in the initramfs and its channel in the XML
  int boot_timeout_s = 240;
};

class TestDomain {
 public:
  // Defines (persistent) domain `name` and starts it; returns once the guest is ready.
  static Result<std::unique_ptr<TestDomain>> Create(const std::string& name, const TestDomainOptions& options = {});
  ~TestDomain();  // destroy, undefine, remove the directory

  // virsh start, then waits for the guest (HVPATCH-READY on the console) and reconnects the
  // command channel. Returns how long `virsh start` itself took.
  Result<double> Start();
  // virsh destroy.
  Status Destroy();
  // Waits for the guest after a start or a restore.
  Status WaitReady();
  // Runs a shell script in the guest; fails unless it exits 0.
  Result<std::string> Guest(const std::string& script, int timeout_s = 60);
  Result<CommandResult> GuestRun(const std::string& script, int timeout_s = 60);

  const std::string& name() const { return name_; }
  const std::string& dir() const { return dir_; }
  std::string Console() const;

 private:
  TestDomain() = default;
  std::string name_, dir_;
  TestDomainOptions options_;
  std::size_t console_mark_ = 0;
  std::unique_ptr<TestVm> channel_;  // the command channel, through TestVm::Attach
  bool defined_ = false;
};

}  // namespace hv::testing
