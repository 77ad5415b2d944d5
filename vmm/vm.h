// The one interface through which hvpatch touches a running VM. Backends: QEMU (QMP + gdbstub +
// host RAM), libvirt (later), and hvpatch's own KVM micro-VMM (later). vmm::Open() picks one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "vmm/guest_memory.h"

namespace hv::vmm {

// One vCPU's architectural state, as needed by the page walk and the stack check.
struct VcpuState {
  int index = 0;
  std::uint64_t rip = 0, rsp = 0, rflags = 0;
  std::uint64_t cs = 0;
  std::uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
  std::uint64_t gs_base = 0, kernel_gs_base = 0;
  bool la57() const { return (cr4 >> 12) & 1; }
  bool in_kernel() const { return (cs & 3) == 0; }
};

// The hypervisor-owned arena device (ivshmem-plain, vendor 0x1af4 device 0x1110).
struct ArenaDevice {
  std::uint64_t bar_gpa = 0;    // BAR2 guest-physical address (2 MiB aligned)
  std::uint64_t size = 0;       // BAR2 size
  std::string pci_address;      // e.g. "00:04.0"
  std::string backing_path;     // host file behind the memory backend, if any
};

class Vm : public GuestPhysMemory {
 public:
  // Stops all vCPUs. Returns once none runs guest code. Nested calls are counted: only the
  // outermost Resume() restarts the VM, and only if it was running when the outermost Pause()
  // found it (an operator's pause is preserved).
  virtual Status Pause() = 0;
  virtual Status Resume() = 0;

  // Optional bracket around a short pause, for work that need not stop the guest. Called just
  // before the outermost Pause(), PrepareToPause() does the checks a backend would otherwise
  // make inside the pause; called just after the outermost Resume(), AfterResume() finishes
  // what the resume left to do with the guest running. A caller that skips them loses nothing
  // but time: without PrepareToPause(), Resume() does that work itself, in the pause.
  virtual Status PrepareToPause() { return Status::Ok(); }
  virtual Status AfterResume() { return Status::Ok(); }

  // Starts the vCPUs whoever paused them, ending any nesting. Only for crash recovery: a dead
  // hvpatch left the VM paused (its ledger says so). Backends that cannot tell return
  // kUnimplemented.
  virtual Status ForceResume() { return Unimplemented("forced resume on " + Describe()); }

  // True when the guest's vCPUs are running (not paused by anyone). Used to record, before a
  // transaction pauses the VM, the run state a crash recovery must restore.
  virtual Result<bool> Running() = 0;

  // State of every vCPU. Requires the VM paused (kFailedPrecondition otherwise).
  virtual Result<std::vector<VcpuState>> VcpuStates() = 0;

  // Writes to guest-physical memory that has never been executed (the arena, page tables).
  // TCG may keep stale translations of bytes that already ran: use WriteCode for those.
  virtual Status WritePhys(std::uint64_t gpa, std::span<const std::uint8_t> data) = 0;

  // Writes guest code so that every vCPU executes the new bytes next time, under TCG too.
  // `va` is a kernel virtual address (translated through vCPU 0's page tables). Requires pause.
  virtual Status WriteCode(std::uint64_t va, std::span<const std::uint8_t> data) = 0;

  // The arena device, or kNotFound when the VM has none (hint: how to add it).
  virtual Result<ArenaDevice> Arena() = 0;

  // The host end (a unix socket path) of the guest agent's virtio-serial port
  // org.hvpatch.agent.0, or kNotFound when the VM has no such port.
  virtual Result<std::string> AgentSocket() { return NotFound("no agent port on " + Describe()); }

  // A stable identity for ledgers and locks (e.g. QEMU's UUID, or the socket path).
  virtual std::string Identity() const = 0;
  // Human-readable name for messages.
  virtual std::string Describe() const = 0;
  // How hvpatch reads guest RAM, for operators ("mapped /proc/PID/map_files/...", or
  // "process_vm_readv (why not mapped)"); empty when the backend does not say.
  virtual std::string RamAccess() const { return ""; }
};

struct OpenOptions {
  std::string uri = "qemu:///system";  // libvirt connection for domain names
  bool attach_arena = true;            // hot-plug an arena into a libvirt domain without one
  std::function<void(const std::string&)> note;  // what opening or Arena() did to the VM
};

// Opens a VM by target string:
//   "qmp:PATH"  a QEMU QMP unix socket
//   anything else: a libvirt domain name or UUID on options.uri (vmm/libvirt_vm.h)
//   later: "vmm:PATH"
Result<std::unique_ptr<Vm>> Open(std::string_view target, const OpenOptions& options = {});

}  // namespace hv::vmm
