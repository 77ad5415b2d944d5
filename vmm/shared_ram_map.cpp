#include "vmm/shared_ram_map.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

#include "base/hex.h"

namespace hv::vmm {
namespace {

// Opens `path` if it is a regular file with inode `inode`: read-write when allowed (then
// `writable` is set), else read-only; -1 otherwise.
int OpenIfInode(const std::string& path, std::uint64_t inode, bool& writable) {
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  writable = fd >= 0;
  if (fd < 0) fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_ino) != inode) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

Result<std::unique_ptr<SharedRamMap>> SharedRamMap::Open(pid_t pid, const HostMapping& m) {
  if (m.perms.size() != 4 || m.perms[3] != 's' || m.inode == 0 || m.path.empty()) {
    return FailedPrecondition("QEMU's mapping " + Hex(m.start) + " (" + m.perms + " '" + m.path +
                              "') is not a shared file mapping");
  }
  const std::string proc = "/proc/" + std::to_string(pid);
  char range[64];
  std::snprintf(range, sizeof(range), "/map_files/%llx-%llx", static_cast<unsigned long long>(m.start),
                static_cast<unsigned long long>(m.end));
  std::string source = proc + range;
  bool writable = false;
  int fd = OpenIfInode(source, m.inode, writable);
  if (fd < 0) {
    // Without CAP_SYS_ADMIN: QEMU keeps the memfd (or file) open; find it by inode. Bounded by
    // QEMU's descriptor table, which the kernel bounds.
    if (DIR* d = opendir((proc + "/fd").c_str())) {
      while (dirent* e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        source = proc + "/fd/" + e->d_name;
        fd = OpenIfInode(source, m.inode, writable);
        if (fd >= 0) break;
      }
      closedir(d);
    }
  }
  if (fd < 0 && m.path.rfind("/memfd:", 0) != 0) {
    std::string path = m.path;
    const std::string deleted = " (deleted)";
    if (path.size() <= deleted.size() || path.compare(path.size() - deleted.size(), deleted.size(), deleted) != 0) {
      source = path;
      fd = OpenIfInode(path, m.inode, writable);
    }
  }
  if (fd < 0) {
    return NotFound("no file with inode " + std::to_string(m.inode) + " behind QEMU's mapping of '" + m.path +
                    "' is reachable from " + proc);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoError("fstat of '" + source + "'", err);
  }
  if (static_cast<std::uint64_t>(st.st_size) < m.file_offset + m.size()) {
    close(fd);
    return FailedPrecondition("'" + source + "' is " + std::to_string(st.st_size) + " bytes, shorter than QEMU's mapping");
  }
  void* p = mmap(nullptr, m.size(), writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd,
                 static_cast<off_t>(m.file_offset));
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) return ErrnoError("mapping '" + source + "'", err);
  return std::unique_ptr<SharedRamMap>(new SharedRamMap(static_cast<const std::uint8_t*>(p), m.size(), source, writable));
}

SharedRamMap::~SharedRamMap() { munmap(const_cast<std::uint8_t*>(data_), size_); }

}  // namespace hv::vmm
