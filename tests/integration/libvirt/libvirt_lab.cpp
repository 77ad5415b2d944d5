#include "tests/integration/libvirt/libvirt_lab.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#ifndef HVPATCH_SOURCE_ROOT
#define HVPATCH_SOURCE_ROOT ""
#endif

namespace hv::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Script() { return std::string(HVPATCH_SOURCE_ROOT) + "/scripts/libvirtd-test.sh"; }

Status Failed(const std::string& what, const ProgramResult& r) {
  return Internal(what + " exited " + std::to_string(r.exit_code) + ": " + r.err + r.out);
}

}  // namespace

Result<std::string> Virsh(const std::vector<std::string>& args, int timeout_s) {
  std::vector<std::string> argv = {"virsh", "-q", "-c", kLibvirtUri};
  argv.insert(argv.end(), args.begin(), args.end());
  HV_ASSIGN_OR_RETURN(ProgramResult r, RunProgram(argv, {}, timeout_s));
  if (r.exit_code != 0) return Failed("virsh " + (args.empty() ? std::string() : args[0]), r);
  return r.out;
}

Result<std::unique_ptr<LibvirtDaemon>> LibvirtDaemon::Start(const std::string& hvpatch_bin,
                                                            const std::string& state_dir) {
  // A daemon a crashed earlier run left behind is ours to stop (same script, same PID file).
  (void)RunProgram({Script(), "stop"}, {}, 120);
  std::vector<std::string> argv = {Script(), "start"};
  if (!hvpatch_bin.empty()) argv.insert(argv.end(), {"--hook", hvpatch_bin, "--state-dir", state_dir});
  HV_ASSIGN_OR_RETURN(ProgramResult r, RunProgram(argv, {}, 300));
  if (r.exit_code != 0) return Failed("libvirtd-test.sh start", r);
  auto d = std::make_unique<LibvirtDaemon>();
  d->start_log = r.out + r.err;
  return d;
}

LibvirtDaemon::~LibvirtDaemon() { (void)RunProgram({Script(), "stop"}, {}, 300); }

Result<std::unique_ptr<TestDomain>> TestDomain::Create(const std::string& name, const TestDomainOptions& o) {
  std::unique_ptr<TestDomain> d(new TestDomain());
  d->name_ = name;
  d->options_ = o;
  const std::string images = ImagesDir();
  if (!fs::exists(images + "/vmlinuz")) {
    return FailedPrecondition("test images not found in '" + images + "'").WithHint("run images/build.sh");
  }
  // QEMU runs as libvirt-qemu: its files live in a world-searchable directory of their own
  // (libvirt's DAC driver gives the kernel, initrd and sockets to QEMU's user).
  char tmpl[] = "/tmp/hvpatch-lv-XXXXXX";
  if (!mkdtemp(tmpl)) return ErrnoError("mkdtemp", errno);
  d->dir_ = tmpl;
  chmod(d->dir_.c_str(), 0755);
  std::error_code ec;
  fs::copy_file(images + "/vmlinuz", d->dir_ + "/vmlinuz", ec);
  if (ec) return Internal("copying the kernel: " + ec.message());
  if (o.agent) {
    const std::string agent = AgentBinary();
    if (agent.empty() || !fs::exists(agent)) return FailedPrecondition("hvpatch-agent not found at '" + agent + "'");
    fs::create_directories(d->dir_ + "/agent-root/bin", ec);
    fs::copy_file(agent, d->dir_ + "/agent-root/bin/hvpatch-agent", ec);
    if (ec) return Internal("staging the agent: " + ec.message());
    // The kernel unpacks concatenated cpio archives in order: base image, then the agent.
    HV_ASSIGN_OR_RETURN(ProgramResult r,
                        RunProgram({"sh", "-c",
                                    "cd '" + d->dir_ + "/agent-root' && find . | cpio -o -H newc --quiet -R 0:0 | "
                                    "gzip -1 > ../agent.cpio.gz && cat '" + images + "/initramfs-base.cpio.gz' "
                                    "../agent.cpio.gz > ../initrd.img"}));
    if (r.exit_code != 0) return Failed("building the initrd", r);
  } else {
    fs::copy_file(images + "/initramfs-base.cpio.gz", d->dir_ + "/initrd.img", ec);
    if (ec) return Internal("copying the initrd: " + ec.message());
  }
  const std::string& dir = d->dir_;
  std::string xml =
      "<domain type='qemu'>\n"
      "  <name>" + name + "</name>\n"
      "  <memory unit='MiB'>" + std::to_string(o.mem_mib) + "</memory>\n"
      "  <vcpu>" + std::to_string(o.vcpus) + "</vcpu>\n"
      "  <os>\n"
      "    <type arch='x86_64' machine='pc'>hvm</type>\n"
      "    <kernel>" + dir + "/vmlinuz</kernel>\n"
      "    <initrd>" + dir + "/initrd.img</initrd>\n"
      "    <cmdline>console=ttyS0 panic=-1 quiet loglevel=4</cmdline>\n"
      "  </os>\n"
      "  <features><acpi/></features>\n"
      "  <on_poweroff>destroy</on_poweroff>\n"
      "  <on_reboot>destroy</on_reboot>\n"
      "  <on_crash>destroy</on_crash>\n"
      "  <devices>\n"
      "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
      "    <serial type='file'><source path='" + dir + "/console.log' append='on'/><target port='0'/></serial>\n"
      "    <console type='file'><source path='" + dir + "/console.log' append='on'/><target type='serial' port='0'/></console>\n";
  if (o.agent) {
    xml += "    <channel type='unix'><source mode='bind' path='" + dir +
           "/agent.sock'/><target type='virtio' name='org.hvpatch.agent.0'/></channel>\n";
  }
  xml += "    <channel type='unix'><source mode='bind' path='" + dir +
         "/cmd.sock'/><target type='virtio' name='org.hvpatch.test.0'/></channel>\n"
         "    <memballoon model='none'/>\n"
         "  </devices>\n"
         "</domain>\n";
  {
    std::ofstream f(dir + "/domain.xml");
    f << xml;
  }
  HV_RETURN_IF_ERROR(Virsh({"define", dir + "/domain.xml"}).status());
  d->defined_ = true;
  HV_RETURN_IF_ERROR(d->Start().status());
  return d;
}

std::string TestDomain::Console() const { return ReadFile(dir_ + "/console.log"); }

Result<double> TestDomain::Start() {
  channel_.reset();
  console_mark_ = Console().size();
  const auto t0 = Clock::now();
  HV_RETURN_IF_ERROR(Virsh({"start", name_}).status());
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  HV_RETURN_IF_ERROR(WaitReady());
  return seconds;
}

Status TestDomain::WaitReady() {
  channel_.reset();
  const auto deadline = Clock::now() + std::chrono::seconds(options_.boot_timeout_s);
  while (Console().find("HVPATCH-READY", console_mark_) == std::string::npos) {
    if (Clock::now() > deadline) {
      return DeadlineExceeded("domain '" + name_ + "' not ready after " + std::to_string(options_.boot_timeout_s) +
                              " s; console: " + Console().substr(console_mark_));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  // TestVm::Attach talks to dir/cmd.sock and wants QEMU's pid in dir/qemu.pid.
  const std::string pid = ReadFile("/run/libvirt/qemu/" + name_ + ".pid");
  {
    std::ofstream f(dir_ + "/qemu.pid");
    f << pid;
  }
  HV_ASSIGN_OR_RETURN(channel_, TestVm::Attach(dir_));
  channel_->Disown();  // libvirt owns QEMU: never stopped through TestVm
  return Status::Ok();
}

Status TestDomain::Destroy() {
  channel_.reset();
  return Virsh({"destroy", name_}).status();
}

Result<CommandResult> TestDomain::GuestRun(const std::string& script, int timeout_s) {
  if (!channel_) return FailedPrecondition("domain '" + name_ + "' has no command channel (not started)");
  return channel_->Run(script, timeout_s);
}

Result<std::string> TestDomain::Guest(const std::string& script, int timeout_s) {
  if (!channel_) return FailedPrecondition("domain '" + name_ + "' has no command channel (not started)");
  return channel_->Check(script, timeout_s);
}

TestDomain::~TestDomain() {
  std::error_code ec_ignored_;
  channel_.reset();
  if (defined_) {
    auto uuid = Virsh({"domuuid", name_}, 60);
    (void)Virsh({"destroy", name_}, 60);
    (void)Virsh({"undefine", name_}, 60);
    // libvirt leaves a <shmem> device's backing file behind. The hook removes it at release;
    // this covers a domain that stopped while the hook was moved away.
    if (uuid.ok()) fs::remove("/dev/shm/hvpatch-arena-" + uuid->substr(0, uuid->find('\n')), ec_ignored_);
  }
  if (!dir_.empty() && std::getenv("HVPATCH_KEEP_VM_DIR") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

}  // namespace hv::testing
