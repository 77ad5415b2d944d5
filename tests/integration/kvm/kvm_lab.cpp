#include "tests/integration/kvm/kvm_lab.h"

#include <stdlib.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "tests/harness/run_program.h"

namespace hv::testing {
namespace {

namespace fs = std::filesystem;

// L1's preparation: the modules the base /init does not load (virtio_blk for the disks, then
// irqbypass, kvm, kvm-amd in that order: lab notes), the disks, the chroot's mounts.
constexpr char kPrepareL1[] = R"sh(set -e
for m in virtio_blk irqbypass kvm kvm-amd; do insmod /lib/modules/$m.ko; done
i=0; while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done
mkdir -p /lab
mount -t ext4 -o ro /dev/vda /lab
mount -t ext4 -o ro /dev/vdb /lab/build
mount -t tmpfs tmpfs /lab/tmp
mount -o bind /dev /lab/dev
mount -t proc proc /lab/proc
mount -t sysfs sys /lab/sys
echo "L1: $(ls -l /dev/kvm) kvm_amd.nested=$(cat /sys/module/kvm_amd/parameters/nested) npt=$(cat /sys/module/kvm_amd/parameters/npt)"
)sh";

// Single-quotes `s` for sh.
std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

Result<std::unique_ptr<KvmLab>> KvmLab::Start(const KvmLabOptions& options) {
  std::unique_ptr<KvmLab> lab(new KvmLab());
  Status s = lab->Boot(options);
  if (!s.ok()) {
    (void)lab->Stop();
    return s.WithContext("starting the KVM lab");
  }
  return lab;
}

Status KvmLab::Boot(const KvmLabOptions& o) {
  const std::string image = o.lab_image.empty() ? ImagesDir() + "/kvm-lab/lab.img" : o.lab_image;
  if (!fs::exists(image)) {
    return FailedPrecondition("lab disk '" + image + "' not found").WithHint("run images/build.sh");
  }
  char tmpl[] = "/tmp/hvpatch-kvm-lab-XXXXXX";
  if (!mkdtemp(tmpl)) return ErrnoError("mkdtemp", errno);
  dir_ = tmpl;

  std::vector<std::string> argv = {o.lab_script, "build", dir_ + "/build.img"};
  env_ = "PATH=/build/bin:/usr/bin:/bin LD_LIBRARY_PATH=/build/lib HVPATCH_IMAGES=/images";
  bool agent = false, hvpatch = false;
  for (const std::string& b : o.binaries) {
    argv.push_back(b);
    const std::string name = fs::path(b).filename();
    if (name == "hvpatch-agent" && !agent) env_ += " HVPATCH_AGENT=/build/bin/hvpatch-agent", agent = true;
    if (name == "hvpatch" && !hvpatch) env_ += " HVPATCH_BIN=/build/bin/hvpatch", hvpatch = true;
  }
  HV_ASSIGN_OR_RETURN(ProgramResult built, RunProgram(argv, {}, 300));
  if (built.exit_code != 0) {
    return Internal("making the build disk: '" + o.lab_script + "' exited " + std::to_string(built.exit_code) +
                    ": " + built.err);
  }

  // L1 itself is always TCG (whatever HVPATCH_TEST_ACCEL says), without arena or agent: it is
  // the lab, not a patch target.
  TestVmOptions l1;
  l1.accel = "tcg";
  l1.smp = 2;
  l1.mem_mib = 2048;
  l1.arena = false;
  l1.agent = false;
  l1.boot_timeout_s = 300;
  l1.lifetime_s = o.lifetime_s;
  l1.dir = dir_ + "/l1";
  l1.extra_qemu_args = {"-cpu", "max",
                        "-drive", "file=" + image + ",if=virtio,format=raw,readonly=on",
                        "-drive", "file=" + dir_ + "/build.img,if=virtio,format=raw,readonly=on"};
  const auto t0 = std::chrono::steady_clock::now();
  HV_ASSIGN_OR_RETURN(l1_, TestVm::Start(l1));
  HV_ASSIGN_OR_RETURN(prepare_output_, l1_->Check(kPrepareL1, 120));
  boot_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status::Ok();
}

Result<CommandResult> KvmLab::Run(const std::string& script, int timeout_s) {
  if (!l1_) return FailedPrecondition("the KVM lab is not running");
  return l1_->Run("chroot /lab /bin/env -i " + env_ + " /bin/sh -c " + Quote(script) + " 2>&1", timeout_s);
}

Status KvmLab::Stop() {
  Status s = Status::Ok();
  if (l1_) s = l1_->Stop();
  l1_.reset();
  if (!dir_.empty() && std::getenv("HVPATCH_KEEP_VM_DIR") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  dir_.clear();
  return s;
}

KvmLab::~KvmLab() { (void)Stop(); }

}  // namespace hv::testing
