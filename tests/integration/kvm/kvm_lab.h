// KvmLab: the nested KVM lab (issue 13; lab notes "Nested KVM") as one object. These machines
// have no /dev/kvm, so it boots an L1 guest, the test guest's kernel and base initramfs under
// TCG with `-cpu max` (QEMU emulates AMD SVM, so L1 loads kvm_amd and has /dev/kvm), with two
// read-only virtio-blk disks:
//   - the lab disk (images/kvm-lab.sh lab): QEMU with its libraries and firmware, busybox, the
//     L2 guest's kernel, base initramfs and test patches (/images);
//   - a build disk made at Start() from given binaries and their shared libraries (/build/bin,
//     /build/lib; images/kvm-lab.sh build), so the hvpatch under test is what runs in L1.
// L1 uses them through a chroot with /dev, /proc, /sys bound and a tmpfs /tmp. Scripts run there
// over L1's command channel, with the environment set for the harness: PATH, LD_LIBRARY_PATH,
// HVPATCH_IMAGES, HVPATCH_AGENT and HVPATCH_BIN (the first build binaries named hvpatch-agent
// and hvpatch). L1's QEMU is a TestVm: under `timeout`, stopped by PID by Stop(), by the
// destructor, and when this process dies; everything started inside L1 dies with it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "tests/harness/test_vm.h"

namespace hv::testing {

struct KvmLabOptions {
  std::vector<std::string> binaries;  // executables for the build disk
  std::string lab_image;              // empty: ImagesDir()/kvm-lab/lab.img
  std::string lab_script;             // images/kvm-lab.sh
  int lifetime_s = 3000;              // `timeout` bound on L1's QEMU
};

class KvmLab {
 public:
  // Makes the build disk, boots L1, loads the modules and mounts the disks. `prepare_output()`
  // then holds what L1 printed about /dev/kvm and kvm_amd.
  static Result<std::unique_ptr<KvmLab>> Start(const KvmLabOptions& options);
  ~KvmLab();
  KvmLab(const KvmLab&) = delete;
  KvmLab& operator=(const KvmLab&) = delete;

  // Runs a shell script in L1's chroot (the lab disk as /), with the harness's environment.
  Result<CommandResult> Run(const std::string& script, int timeout_s);
  // Stops L1 by PID and removes the lab's temporary directory.
  Status Stop();

  const std::string& prepare_output() const { return prepare_output_; }
  double boot_seconds() const { return boot_seconds_; }

 private:
  KvmLab() = default;
  Status Boot(const KvmLabOptions& options);

  std::string dir_;
  std::unique_ptr<TestVm> l1_;
  std::string env_;
  std::string prepare_output_;
  double boot_seconds_ = 0;
};

}  // namespace hv::testing
