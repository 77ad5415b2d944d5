// The libvirt backend of vmm::Vm: a domain on a libvirt connection, reached through the
// libvirt C API (state, XML, device hot-plug) and QMP passthrough (LibvirtMonitor). Everything
// below QMP is the QEMU backend's (QemuVm over that channel): the gdbstub for vCPU state and
// code writes, process_vm_readv/writev on QEMU's guest RAM, the pause that keeps an
// operator's `virsh suspend`. What differs from a bare QEMU:
//   - the gdbstub socket is created by QEMU, which libvirt runs as `libvirt-qemu` by default
//     (Debian's qemu.conf): it goes in the domain's own libvirt directory
//     (/var/lib/libvirt/qemu/domain-N-NAME, writable by QEMU's user, not by others) and is
//     removed when this object goes;
//   - the agent's port is the domain's `org.hvpatch.agent.0` channel in its live XML; no such
//     channel: no agent, nothing to wait for;
//   - a domain without the arena gets one hot-plugged (libvirt <shmem>, see Arena()).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "vmm/libvirt_domain.h"
#include "vmm/qemu_vm.h"
#include "vmm/vm.h"

namespace hv::vmm {

struct LibvirtVmOptions {
  std::string uri = "qemu:///system";
  // Arena() hot-plugs an arena into a domain that has none (false: refuse, with the XML).
  bool attach_arena = true;
  // How long Arena() waits for the guest kernel to assign a hot-plugged device's BAR.
  int arena_bar_timeout_ms = 20000;
  // Told what Arena() did to the domain ("attached ...").
  std::function<void(const std::string&)> note;
  QemuVmOptions qemu;
};

class LibvirtVm final : public Vm {
 public:
  // Opens domain `name_or_uuid` on `options.uri`. Errors: those of LibvirtDomain::Open;
  // kFailedPrecondition when the domain is not running or its QEMU directory is not found;
  // then QemuVm's.
  static Result<std::unique_ptr<LibvirtVm>> Open(const std::string& name_or_uuid, const LibvirtVmOptions& options);
  ~LibvirtVm() override;

  Status Pause() override { return qemu_->Pause(); }
  Status Resume() override { return qemu_->Resume(); }
  Status PrepareToPause() override { return qemu_->PrepareToPause(); }
  Status AfterResume() override { return qemu_->AfterResume(); }
  Status ForceResume() override { return qemu_->ForceResume(); }
  Result<bool> Running() override { return qemu_->Running(); }
  Result<std::vector<VcpuState>> VcpuStates() override { return qemu_->VcpuStates(); }
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override { return qemu_->ReadPhys(gpa, out); }
  std::vector<PhysRange> RamRanges() const override { return qemu_->RamRanges(); }
  Status WritePhys(std::uint64_t gpa, std::span<const std::uint8_t> data) override {
    return qemu_->WritePhys(gpa, data);
  }
  Status WriteCode(std::uint64_t va, std::span<const std::uint8_t> data) override {
    return qemu_->WriteCode(va, data);
  }
  // The arena device. When the domain has none and attach_arena is set, hot-plugs
  // <shmem name='hvpatch-arena-UUID' role='master'> (ivshmem-plain, 2 MiB; role='master' gives
  // QEMU's master=on, so save/restore and migration carry it) into the live domain and its
  // persistent config, waits for the guest to assign BAR2, and tells options.note. Errors:
  // kNotFound with the XML to add when attach_arena is off; libvirt's error when the attach
  // fails (e.g. a domain without <acpi/> has no PCI hot-plug); kDeadlineExceeded when the BAR
  // stays unassigned.
  Result<ArenaDevice> Arena() override;
  // The host end of the `org.hvpatch.agent.0` channel in the live XML.
  Result<std::string> AgentSocket() override;
  // The QEMU UUID, which libvirt sets to the domain's: the same ledger as through qmp:.
  std::string Identity() const override { return qemu_->Identity(); }
  std::string Describe() const override;
  std::string RamAccess() const override { return qemu_->ram_access(); }

  LibvirtDomain& domain() { return *domain_; }
  QemuVm& qemu() { return *qemu_; }

 private:
  LibvirtVm() = default;
  Status AttachArena();

  LibvirtVmOptions options_;
  std::unique_ptr<LibvirtDomain> domain_;
  std::unique_ptr<QemuVm> qemu_;
};

// The <shmem> element hvpatch adds to a domain for its arena.
std::string ArenaShmemXml(const std::string& domain_uuid);
// The <shmem> device's name: hvpatch-arena-UUID.
std::string ArenaShmemName(const std::string& domain_uuid);
// The file libvirt backs that <shmem> with: /dev/shm/hvpatch-arena-UUID. Empty unless `domain_uuid`
// looks like a UUID (hex digits and dashes, 36 characters), so it never names another file.
std::string ArenaShmemPath(const std::string& domain_uuid);

// The source path of the unix channel whose target is virtio `port_name`, in a domain's XML.
// Errors: kNotFound. Pure (tested without libvirt).
Result<std::string> ChannelSocketFromXml(const std::string& xml, const std::string& port_name);

// The directory of libvirt's per-domain files (the one holding master-key.aes), from QEMU's
// command line (NUL-separated, as /proc/PID/cmdline). Errors: kNotFound. Pure.
Result<std::string> DomainDirFromCmdline(const std::string& cmdline);

}  // namespace hv::vmm
