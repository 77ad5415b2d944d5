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
// Value formats (include/linux/crash_core.h): SYMBOL(x) and KERNELOFFSET are hex without "0x";
// OFFSET, SIZE, LENGTH and PAGESIZE are unsigned decimal; NUMBER is signed decimal.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "vmm/guest_memory.h"

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

  // Scans guest RAM as described above. Errors: kNotFound when no page holds an acceptable
  // vmcoreinfo (the message says how many candidates were rejected and why the first one was);
  // read errors from `mem` are returned with context.
  static Result<Vmcoreinfo> Find(const vmm::GuestPhysMemory& mem);

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
