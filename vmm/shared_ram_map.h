// A read-only mapping, in hvpatch's own address space, of guest RAM that QEMU keeps in a shared
// file or memfd (`-object memory-backend-memfd,share=on` or `memory-backend-file,share=on`;
// libvirt: <memoryBacking><source type='memfd'/><access mode='shared'/>).
//
// Why: every process_vm_readv pins each remote page it touches, and on this kind of host that
// costs 1.4-2.7 us per page whether the iovecs come one per call or 1024 per call (measured,
// bench/README.md "Pause against task count"). A stack check touches ~5 pages per guest task, so
// batching cannot make it independent of the task count; a read from a mapping is a memcpy.
// Anonymous guest RAM (QEMU's default) has no file to map: it keeps the process_vm_readv path.
//
// The mapping is MAP_SHARED and PROT_READ: hvpatch never writes through it (writes keep going
// through process_vm_writev and the gdbstub), and it sees every byte QEMU and the guest write.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include "base/status.h"
#include "vmm/qemu_memory_map.h"

namespace hv::vmm {

class SharedRamMap {
 public:
  // Maps the file behind QEMU's mapping `m` of process `pid`: through /proc/PID/map_files (the
  // exact file, needs CAP_SYS_ADMIN), else the open descriptor in /proc/PID/fd whose inode is
  // the one /proc/PID/maps names (memfds have no path to open), else `m.path` itself when the
  // inode matches. Errors: kFailedPrecondition when `m` is not a shared file mapping;
  // kNotFound when no file with its inode is reachable; kIo for open/fstat/mmap failures.
  static Result<std::unique_ptr<SharedRamMap>> Open(pid_t pid, const HostMapping& m);
  ~SharedRamMap();
  SharedRamMap(const SharedRamMap&) = delete;
  SharedRamMap& operator=(const SharedRamMap&) = delete;

  // The byte QEMU sees at `m.start` is data()[0].
  const std::uint8_t* data() const { return data_; }
  // The same bytes for writing when the file could be opened read-write (it is mapped shared
  // and writable then); else null.
  std::uint8_t* writable_data() const { return writable_ ? const_cast<std::uint8_t*>(data_) : nullptr; }
  std::uint64_t size() const { return size_; }
  const std::string& source() const { return source_; }  // what was opened, for messages

 private:
  SharedRamMap(const std::uint8_t* data, std::uint64_t size, std::string source, bool writable)
      : data_(data), size_(size), source_(std::move(source)), writable_(writable) {}
  const std::uint8_t* data_;
  std::uint64_t size_;
  std::string source_;
  bool writable_;
};

}  // namespace hv::vmm
