// The QEMU backend of vmm::Vm: QMP for run state, discovery and identity; QEMU's gdbstub
// (started at runtime over QMP) for vCPU registers and code writes; process_vm_readv/writev
// on QEMU's own mapping of guest RAM for bulk memory access.
//
// Run state: the VM's own run state (query-status "paused"/"running"), never the gdbstub's
// `c`/`s`. Pause() stops through the gdbstub's interrupt, which runs the same vm_stop(
// RUN_STATE_PAUSED) as QMP `stop` (the operator and libvirt see a STOP event and "paused"), and
// in the same round trip learns whether the VM was running, so an operator's pause is kept
// (GdbStubClient::StopIfRunning): one round trip instead of QMP query-status + stop. QEMU
// writes the stop reply only once every vCPU is out of guest code. Resume() is QMP `cont`.
// QEMU reports every stop to the attached gdbstub client as a "T02" stop reply nobody asked
// for (lab notes); the client consumes them, and never sends a byte while the VM runs (the
// gdbstub stops a running VM on any byte it receives).
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qmp/qmp_channel.h"
#include "vmm/gdb_register_layout.h"
#include "vmm/gdb_stub_client.h"
#include "vmm/phys_page_cache.h"
#include "vmm/qemu_memory_map.h"
#include "vmm/shared_ram_map.h"
#include "vmm/vm.h"

namespace hv::vmm {

struct QemuVmOptions {
  int qmp_timeout_ms = 10000;
  int gdb_timeout_ms = 5000;
  // A directory where QEMU itself can create the gdbstub's unix socket (QEMU creates it, so
  // it must be writable by QEMU's user, e.g. libvirt's per-domain directory when QEMU runs as
  // `libvirt-qemu`). Empty: a fresh private directory under /tmp (QEMU running as root or as
  // ourselves). The socket is removed when the QemuVm goes away.
  std::string gdb_socket_dir;
  // Arena() hot-plugs an arena into a VM without one (QMP object-add + device_add), and tells
  // `note`. Off by default: the libvirt backend attaches through libvirt instead.
  bool attach_arena = false;
  int arena_bar_timeout_ms = 20000;
  std::function<void(const std::string&)> note;
};

class QemuVm final : public Vm {
 public:
  // Connects to QEMU's QMP socket at `qmp_path` and sets everything up: QEMU's pid (from the
  // vCPU threads), the guest RAM layout and its host mapping, the arena device if present, and
  // a gdbstub on a private unix socket (replacing any gdbserver already running). The gdbstub
  // attach stops the VM briefly; a VM that was running is running again on return. Errors:
  //   kUnavailable         QMP socket unusable
  //   kFailedPrecondition  the host fast path disagrees with gdbstub reads, or no unique
  //                        mapping of guest RAM was found (the message says which)
  //   kIo                  /proc or process_vm_readv failed (e.g. not allowed to ptrace QEMU)
  static Result<std::unique_ptr<QemuVm>> Connect(const std::string& qmp_path,
                                                 const QemuVmOptions& options = {});
  // The same over any QMP channel, e.g. libvirt's passthrough (vmm/libvirt_vm.h). `name` is
  // what Describe() shows. Errors as Connect().
  static Result<std::unique_ptr<QemuVm>> Attach(std::unique_ptr<qmp::QmpChannel> channel, const std::string& name,
                                                const QemuVmOptions& options = {});
  ~QemuVm() override;

  // vmm::Vm
  Status Pause() override;
  Status Resume() override;
  // QMP `cont`, whoever paused the VM; forgets any nesting of our own Pause() calls.
  Status ForceResume() override;
  // The migration check for hvpatch's own writes into guest RAM (see
  // MarkDirectWritesForMigration), moved out of the pause: `query-migrate` before it, and, when
  // no migration was under way then, again after the resume. A migration that started in
  // between gets those writes marked in a second, short pause. Without PrepareToPause(),
  // Resume() asks inside the pause as before.
  Status PrepareToPause() override;
  Status AfterResume() override;
  // QMP query-status "running".
  Result<bool> Running() override;
  // Through QOM and query-chardev (vmm/qemu_agent_port.h).
  Result<std::string> AgentSocket() override;
  // Read once per pause over the gdbstub, then served from memory until the VM runs again.
  Result<std::vector<VcpuState>> VcpuStates() override;
  // Reads guest RAM, and also the arena's BAR. While this object holds the VM paused, small
  // reads go through a per-pause page cache (vmm/phys_page_cache.h), cleared when the VM may
  // run again; every write of this object drops the pages it touched. Errors: kInvalidArgument
  // naming the first address outside both; kIo when the host read fails.
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override;
  std::vector<PhysRange> RamRanges() const override;
  // True when every RAM range is mapped into this process (a shared file or memfd backend,
  // vmm/shared_ram_map.h): reads are then a memcpy and bypass the page cache.
  bool ReadsFromMapping() const override;
  // From the mapping, when there is one: the first cache lines of the range.
  void Prefetch(std::uint64_t gpa, std::size_t size) const override;
  // The shared RAM mapping's ranges when ReadsFromMapping(); else empty.
  std::vector<DirectRange> DirectRam() const override;
  // Plain host writes into guest RAM or the arena BAR. Errors as ReadPhys.
  Status WritePhys(std::uint64_t gpa, std::span<const std::uint8_t> data) override;
  // Translates `va` through the page tables of the first vCPU found in kernel mode (any kernel
  // page table maps kernel text; a user-mode vCPU may be on a PTI user table that does not)
  // and writes the code:
  //  - under TCG, with gdbstub `M` in physical mode: QEMU's physical write path invalidates
  //    translated blocks on those pages, so TCG runs the new bytes;
  //  - under KVM (query-kvm enabled), straight into guest RAM like WritePhys: there is no
  //    translation cache, and the gdbstub's write is the same memcpy into the same RAM (see
  //    docs/kvm.md). The one thing the gdbstub adds, marking the pages dirty for a migration in
  //    progress, is made up before the vCPUs run again (Resume), by writing the same bytes
  //    through the gdbstub if query-migrate shows a migration. HVPATCH_CODE_WRITE=gdbstub in
  //    the environment forces the gdbstub path (for measurements).
  // At most 1 MiB. Errors: kFailedPrecondition when not paused; page walk errors; kInternal when
  // the read-back differs.
  Status WriteCode(std::uint64_t va, std::span<const std::uint8_t> data) override;
  // "gdbstub" or "direct": how WriteCode writes on this VM.
  const char* code_write_path() const { return direct_code_writes_ ? "direct" : "gdbstub"; }
  // query-kvm said enabled at connect.
  bool kvm() const { return kvm_; }
  // The arena device; with options.attach_arena, one is hot-plugged first when there is none:
  // memory-backend-file (2 MiB, share=on, /dev/shm/hvpatch-arena-UUID) + ivshmem-plain with
  // master=on (so migration and save/restore carry it), then waits for the guest to assign
  // BAR2. Errors: kNotFound with the QEMU options in the hint; QMP errors of the hot-plug;
  // kDeadlineExceeded when the BAR stays unassigned.
  Result<ArenaDevice> Arena() override;
  // Waits up to `timeout_ms` for a just hot-plugged arena's BAR (RefreshArena in a loop).
  Result<ArenaDevice> WaitForArena(int timeout_ms);
  // Looks for the arena device again, e.g. after hot-plugging one. Errors: QMP errors only;
  // a device still missing or with no BAR assigned shows in Arena().
  Status RefreshArena();
  std::string Identity() const override;
  std::string Describe() const override;

  // The QMP connection (QEMU accepts one client per QMP socket, so tests and tools that need
  // more QMP share this one).
  qmp::QmpChannel& qmp() { return *qmp_; }
  // The gdbstub connection; use only while paused.
  GdbStubClient& gdb() { return *gdb_; }
  pid_t qemu_pid() const { return pid_; }
  const std::string& uuid() const { return uuid_; }
  int pause_depth() const { return pause_depth_; }
  // Guest RAM and where QEMU maps it (for tools and tests that read it another way).
  const std::vector<HostRange>& host_ram() const { return ram_; }
  // "mapped /proc/PID/map_files/..." or "process_vm_readv (why not mapped)": how RAM is read.
  const std::string& ram_access() const { return ram_access_; }
  std::string RamAccess() const override { return ram_access_; }

 private:
  QemuVm() = default;
  Status Setup(const QemuVmOptions& options);
  Status SetupSteps(const QemuVmOptions& options);  // Setup's work after its first batch
  // During Setup: the reply to `command` from Setup's first pipelined batch, taken once; else
  // (and always after Setup) the command run now.
  Result<nlohmann::json> SetupQuery(const std::string& command,
                                    const nlohmann::json& arguments = nlohmann::json::object());
  Status FindPid();
  Status DiscoverMemory();
  Status DiscoverArena();
  Status StartGdbStub(const QemuVmOptions& options, bool vm_running);
  Status VerifyFastPath();
  Status RequirePaused();
  Status AttachArena();
  QemuVmOptions options_;
  Result<VcpuState> ReadVcpu(int index);
  // A vCPU's state from its `g` reply, through the register layout of target.xml.
  Result<VcpuState> DecodeVcpu(int index, const std::vector<std::uint8_t>& g) const;
  // Each `g` reply in vCPU order; the first that does not decode is the error.
  Result<std::vector<VcpuState>> DecodeVcpus(const std::vector<std::vector<std::uint8_t>>& regs) const;
  // The host range holding [gpa, gpa+len), split by the caller at range ends.
  const HostRange* FindRange(std::uint64_t gpa) const;
  Status HostTransfer(std::uint64_t gpa, std::uint8_t* buf, std::size_t len, bool write) const;
  // The guest may run again (or we cannot tell): forget what the pause read.
  void ForgetPauseState();
  // Before the vCPUs run: if a migration is in progress, rewrite this pause's direct code
  // writes through the gdbstub so QEMU marks them dirty and sends them (see WriteCode).
  Status MarkDirectWritesForMigration();
  // Moves the writes waiting for AfterResume()'s check into direct_writes_ (this pause's).
  void TakeUncheckedWrites();
  // Whether `query-migrate` shows a migration under way, and its status.
  Result<std::pair<bool, std::string>> MigrationUnderWay();

  std::unique_ptr<qmp::QmpChannel> qmp_;
  // Replies of Setup's first batch, by command and arguments; empty outside Setup.
  std::map<std::string, Result<nlohmann::json>> setup_replies_;
  std::unique_ptr<GdbStubClient> gdb_;
  std::optional<GdbRegisterLayout> layout_;
  std::vector<std::string> threads_;
  std::string qmp_path_;  // empty for Attach()
  std::string name_;      // Describe()
  std::string gdb_dir_;   // our own temp directory for the socket, removed with it
  std::string gdb_sock_;  // the gdbstub socket, removed when this object goes
  pid_t pid_ = -1;
  std::string uuid_;
  // A memory backend of guest RAM and the host mappings that might hold it (resolved by
  // VerifyFastPath against gdbstub reads).
  struct Block {
    std::string id;
    std::uint64_t size = 0;
    std::vector<std::uint64_t> hvas;
    std::vector<HostMapping> mappings;  // /proc/PID/maps line of each of hvas
  };
  // Maps a shared file/memfd backend into this process when it holds the gdbstub's samples.
  Status MapShared(const Block& b, std::uint64_t base, const std::vector<MemorySample>& truth,
                   std::vector<HostRange>& ranges);
  std::vector<Block> blocks_;
  std::vector<FlatRange> flat_;
  std::string arena_memdev_;
  std::vector<HostRange> ram_;     // guest RAM, sorted by gpa
  std::vector<HostRange> extra_;   // the arena BAR, when mapped
  std::vector<std::unique_ptr<SharedRamMap>> shared_maps_;
  std::string ram_access_ = "process_vm_readv";  // how guest RAM is read (ram_access())
  bool mapped_ = false;                          // every range of ram_ has `local`
  std::optional<ArenaDevice> arena_;
  Status arena_status_;            // why there is no arena, when there is none
  bool kvm_ = false;
  bool direct_code_writes_ = false;
  std::vector<std::pair<std::uint64_t, std::size_t>> direct_writes_;  // gpa, length; this pause
  // PrepareToPause() found no migration under way, for the next outermost Pause() ...
  bool prepared_no_migration_ = false;
  // ... which moves it here, for its Resume().
  bool no_migration_before_pause_ = false;
  // Writes of the last pause whose migration check waits for AfterResume().
  std::vector<std::pair<std::uint64_t, std::size_t>> unchecked_writes_;
  int pause_depth_ = 0;
  bool resume_on_outer_ = false;
  // Valid only while pause_depth_ > 0 (see ReadPhys and VcpuStates).
  mutable PhysPageCache page_cache_;
  std::optional<std::vector<VcpuState>> vcpus_;
};

}  // namespace hv::vmm
