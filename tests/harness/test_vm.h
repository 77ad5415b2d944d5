// TestVm: boots the hvpatch test guest (images/) under QEMU and talks to it.
//
// Used by integration tests (through TestVmFixture below or directly) and by the shell, via the
// `hvpatch-testvm` program (tests/harness/testvm_main.cpp). The VM gets:
//   - a QMP unix socket                      dir()/qmp.sock
//   - the console written to                  dir()/console.log
//   - the agent's virtio-serial port          dir()/agent.sock  (org.hvpatch.agent.0)
//   - a command channel for tests             dir()/cmd.sock    (org.hvpatch.test.0)
//   - an ivshmem-plain arena, 2 MiB, master=on, backed by dir()/arena (share=on)
// QEMU runs under `timeout` and is always stopped by its own PID: by Stop(), by the destructor,
// and (for owned VMs) by PR_SET_PDEATHSIG if the test process dies.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::testing {

struct TestVmOptions {
  int smp = 2;
  // "tcg", or "kvm" (with `-cpu host`: the KVM suite runs the harness inside the nested lab's
  // L1). Empty: $HVPATCH_TEST_ACCEL, else "tcg" (so any suite or bench can run under KVM).
  std::string accel;
  int mem_mib = 512;
  bool arena = true;
  // Guest RAM in a shared memfd (memory-backend-memfd,share=on) instead of QEMU's anonymous
  // memory: hvpatch then maps it (vmm/shared_ram_map.h).
  bool shared_ram = false;
  bool agent = true;            // append the built hvpatch-agent to the initramfs
  std::string extra_append;     // more kernel command line
  std::vector<std::string> extra_qemu_args;
  int boot_timeout_s = 180;
  int lifetime_s = 3600;        // `timeout` bound on QEMU itself
  std::string dir;              // empty: a fresh temp dir, removed on Stop()
  bool detach = false;          // QEMU outlives this process (hvpatch-testvm start)
  // false: a reboot of the guest (or QMP system_reset) resets the VM inside the same QEMU,
  // instead of QEMU exiting.
  bool no_reboot = true;
  // A QEMU -incoming URI (e.g. "exec:cat FILE"): the VM's state comes from a migration stream
  // instead of a boot. Start then waits for the guest to answer on the command channel, not for
  // the boot's ready marker. Use `dir` to keep the paths of the VM it replaces.
  std::string incoming;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr, merged
};

class TestVm {
 public:
  // Boots a guest and waits for the ready marker on the console.
  static Result<std::unique_ptr<TestVm>> Start(const TestVmOptions& options);
  // Attaches to a VM started detached in `dir` (reads dir/qemu.pid).
  static Result<std::unique_ptr<TestVm>> Attach(const std::string& dir);

  ~TestVm();
  TestVm(const TestVm&) = delete;
  TestVm& operator=(const TestVm&) = delete;

  // Runs a shell script in the guest through the command channel.
  Result<CommandResult> Run(std::string_view script, int timeout_s = 60);
  // Like Run, but fails unless the exit code is 0; returns the output.
  Result<std::string> Check(std::string_view script, int timeout_s = 60);

  // How many times the guest has printed its ready marker on the console (one per boot).
  int Boots() const;
  // Waits until the guest has booted more than `boots` times (a reboot inside this QEMU).
  Status WaitForBoot(int boots, int timeout_s = 180);

  // Leaves the VM running when this object goes away (hvpatch-testvm start/run).
  void Disown() { owns_process_ = false; owns_dir_ = false; }

  // Stops QEMU (SIGTERM, then SIGKILL after a grace period) by PID and removes an owned temp dir.
  Status Stop();

  const std::string& dir() const { return dir_; }
  std::string qmp_path() const { return dir_ + "/qmp.sock"; }
  std::string qmp_target() const { return "qmp:" + qmp_path(); }
  std::string agent_path() const { return dir_ + "/agent.sock"; }
  std::string console_path() const { return dir_ + "/console.log"; }
  std::string arena_path() const { return dir_ + "/arena"; }
  pid_t qemu_pid() const { return qemu_pid_; }
  std::string Console() const;

 private:
  TestVm() = default;
  Status Boot(const TestVmOptions& options);
  Status ConnectCommandChannel(int timeout_ms);

  std::string dir_;
  bool owns_dir_ = false;
  bool owns_process_ = true;
  pid_t qemu_pid_ = -1;     // the QEMU process
  pid_t timeout_pid_ = -1;  // its `timeout` parent (our child), reaped on Stop()
  int cmd_fd_ = -1;
  std::string cmd_buf_;
  unsigned next_id_ = 1;
};

// Paths the build compiled in (overridable by environment for relocated trees):
//   HVPATCH_IMAGES  the images/ output directory
//   HVPATCH_AGENT   the hvpatch-agent binary to append to the initramfs
//   HVPATCH_TEST_ACCEL  the accelerator when TestVmOptions::accel is empty (default tcg)
std::string ImagesDir();
std::string AgentBinary();
// A built test patch module: ImagesDir()/patches/NAME.ko
std::string PatchModule(std::string_view name);

}  // namespace hv::testing
