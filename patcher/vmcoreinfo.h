// vmcoreinfo: the kernel's own description of itself for crash dumps, found in guest RAM.
//
// How it is found, with no help from the guest (Linux 6.1, kernel/crash_core.c):
//   The kernel fills `vmcoreinfo_data`, a zeroed page from the page allocator, with "KEY=VALUE\n"
//   lines at boot; the first line is always "OSRELEASE=...". It then copies the text into
//   `vmcoreinfo_note`, a page-aligned allocation holding one ELF note (namesz 11, name
//   "VMCOREINFO", type 0) whose descriptor is the same text. So every page start in guest RAM is
//   checked for either shape: "OSRELEASE=" at offset 0, or that note header with "OSRELEASE=" at
//   offset 24. RAM is read in large chunks so the scan costs one pass over memory.
//   A candidate is accepted only if it parses and, when it carries SYMBOL(init_uts_ns),
//   OFFSET(uts_namespace.name) and NUMBER(phys_base), the release string found through them in
//   the live kernel image equals its OSRELEASE. That rejects stale copies (a kexec'd-away kernel,
//   freed page-cache pages holding such text).
//
// The live check (when vCPU state is given): after a reboot of the same VM, the old kernel's
// pages are not cleared, and the old init_uts_ns at its old physical place may still hold the
// same release string, so a stale copy of the same kernel build passes the check above with the
// old KASLR offset and phys_base. The vCPUs' page tables are the new kernel's, though: the
// candidate's SYMBOL(init_uts_ns) (else SYMBOL(_stext)) must translate through a vCPU's CR3 to
// the physical address the candidate implies (symbol - __START_KERNEL_map + phys_base). Every
// kernel page table maps the kernel half alike; a vCPU in user mode under PTI runs on the user
// half of an 8 KiB PGD pair (arch/x86/mm/pti.c: the user PGD is the kernel PGD + 4 KiB, and maps
// no kernel data), so its CR3 with bit 12 cleared is tried too. Only vCPUs with long-mode paging
// on count (not one in firmware mid-reboot). A candidate no usable vCPU maps as it says is
// rejected; with no usable vCPU the check cannot run and the scan accepts as above.
//
// The location hint: the copy does not move within a boot and rarely across boots, so the
// caller may remember found_at() (the CLI keeps it per VM in the state directory) and pass it to
// ReadAt, which costs one page read instead of a pass over RAM. ReadAt accepts only a candidate
// the live check confirmed, since a hint is exactly where a stale copy survives a reboot.
//
// Value formats (include/linux/crash_core.h): SYMBOL(x) and KERNELOFFSET are hex without "0x";
// OFFSET, SIZE, LENGTH and PAGESIZE are unsigned decimal; NUMBER is signed decimal.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "vmm/guest_memory.h"
#include "vmm/vm.h"

namespace hv::patcher {

// __START_KERNEL_map on x86-64: the kernel image is mapped linearly from here to phys_base.
inline constexpr std::uint64_t kStartKernelMap = 0xffffffff80000000ull;

class Vmcoreinfo {
 public:
  // The most text accepted: the kernel's VMCOREINFO_BYTES is one page.
  static constexpr std::size_t kMaxTextBytes = 4096;

  // Parses "KEY=VALUE" lines. Unknown keys are kept (Raw()). Errors (kInvalidArgument):
  // text over kMaxTextBytes, no OSRELEASE line, a malformed SYMBOL/OFFSET/SIZE/NUMBER/PAGESIZE/
  // KERNELOFFSET value, or a BUILD-ID that is not hex.
  static Result<Vmcoreinfo> Parse(std::string_view text);

  // Scans guest RAM as described above; each candidate also passes the live check against
  // `vcpus` (their states in a pause) when any of them can run it. Errors: kNotFound when no
  // page holds an acceptable vmcoreinfo (the message says how many candidates were rejected and
  // why the first one was); read errors from `mem` are returned with context.
  static Result<Vmcoreinfo> Find(const vmm::GuestPhysMemory& mem,
                                 std::span<const vmm::VcpuState> vcpus = {});

  // The copy at `gpa` (a location hint: either shape), accepted only when it passes the checks
  // above including the live check. Errors: kInvalidArgument for a `gpa` that is not page
  // aligned or not guest RAM, kNotFound when the page holds no vmcoreinfo, kInvalidArgument
  // when it is malformed or fails a check ("stale copy: ..."), kFailedPrecondition when no vCPU
  // state can confirm it.
  static Result<Vmcoreinfo> ReadAt(const vmm::GuestPhysMemory& mem, std::uint64_t gpa,
                                   std::span<const vmm::VcpuState> vcpus);

  const std::string& os_release() const { return os_release_; }
  // Lower-case hex as the kernel prints it (GNU build-id, usually 40 digits); empty if absent.
  const std::string& build_id() const { return build_id_; }
  std::uint64_t page_size() const { return page_size_; }
  // The KASLR virtual offset (KERNELOFFSET); 0 when absent.
  std::uint64_t kernel_offset() const { return kernel_offset_; }
  // Guest-physical address of the accepted copy (0 for Parse()).
  std::uint64_t found_at() const { return found_at_; }
  const std::string& text() const { return text_; }

  std::optional<std::uint64_t> Symbol(std::string_view name) const;
  std::optional<std::int64_t> Number(std::string_view name) const;
  // `name` is "struct.field", as in OFFSET(task_struct.tasks).
  std::optional<std::uint64_t> Offset(std::string_view name) const;
  std::optional<std::uint64_t> Size(std::string_view name) const;
  std::optional<std::string> Raw(std::string_view key) const;

  // Like Symbol() but kNotFound "vmcoreinfo has no SYMBOL(name)" when absent.
  Result<std::uint64_t> RequireSymbol(std::string_view name) const;
  Result<std::int64_t> RequireNumber(std::string_view name) const;

 private:
  std::string text_;
  std::string os_release_;
  std::string build_id_;
  std::uint64_t page_size_ = 0;
  std::uint64_t kernel_offset_ = 0;
  std::uint64_t found_at_ = 0;
  std::map<std::string, std::string, std::less<>> raw_;
  std::map<std::string, std::uint64_t, std::less<>> symbols_;
  std::map<std::string, std::int64_t, std::less<>> numbers_;
  std::map<std::string, std::uint64_t, std::less<>> offsets_;
  std::map<std::string, std::uint64_t, std::less<>> sizes_;
};

}  // namespace hv::patcher
