#include "guest-agent/kcore_reader.h"

#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/hex.h"

namespace hv::agent {

namespace {

// /proc/kcore has one header per memory range; real kernels have tens.
constexpr uint16_t kMaxProgramHeaders = 4096;

Status PreadExact(int fd, void* buf, size_t size, uint64_t offset, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = pread(fd, static_cast<char*>(buf) + done, size - done,
                            static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("reading '" + path + "' at offset " + std::to_string(offset + done), errno);
    }
    if (n == 0) {
      return Status(Code::kIo, "short read of '" + path + "' at offset " + std::to_string(offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Result<KcoreReader> KcoreReader::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("opening '" + path + "'", errno);
  auto fail = [fd](Status s) {
    close(fd);
    return s;
  };
  Elf64_Ehdr eh;
  if (Status s = PreadExact(fd, &eh, sizeof(eh), 0, path); !s.ok()) return fail(s);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
      eh.e_ident[EI_DATA] != ELFDATA2LSB) {
    return fail(InvalidArgument("'" + path + "' is not a 64-bit little-endian ELF file"));
  }
  if (eh.e_type != ET_CORE) {
    return fail(InvalidArgument("'" + path + "' is ELF type " + std::to_string(eh.e_type) + ", not a core"));
  }
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > kMaxProgramHeaders) {
    return fail(InvalidArgument("'" + path + "' has " + std::to_string(eh.e_phnum) +
                                " program headers of " + std::to_string(eh.e_phentsize) + " bytes"));
  }
  std::vector<Elf64_Phdr> ph(eh.e_phnum);
  if (Status s = PreadExact(fd, ph.data(), ph.size() * sizeof(Elf64_Phdr), eh.e_phoff, path); !s.ok()) {
    return fail(s);
  }
  std::vector<Segment> segments;
  for (const Elf64_Phdr& p : ph) {
    if (p.p_type != PT_LOAD || p.p_filesz == 0) continue;
    if (p.p_vaddr + p.p_filesz < p.p_vaddr || p.p_offset + p.p_filesz < p.p_offset) continue;  // wraps
    segments.push_back({p.p_vaddr, p.p_offset, p.p_filesz});
  }
  if (segments.empty()) return fail(InvalidArgument("'" + path + "' has no PT_LOAD segment"));
  return KcoreReader(path, fd, std::move(segments));
}

KcoreReader::KcoreReader(KcoreReader&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), segments_(std::move(other.segments_)) {
  other.fd_ = -1;
}

KcoreReader& KcoreReader::operator=(KcoreReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    segments_ = std::move(other.segments_);
    other.fd_ = -1;
  }
  return *this;
}

KcoreReader::~KcoreReader() {
  if (fd_ >= 0) close(fd_);
}

Result<std::string> KcoreReader::Read(uint64_t address, uint32_t length) const {
  if (length == 0) return std::string();
  const uint64_t end = address + length;
  if (end < address) return InvalidArgument("range at " + Hex(address) + " wraps around");
  for (const Segment& s : segments_) {
    if (address >= s.vaddr && end <= s.vaddr + s.filesz) {
      std::string out(length, '\0');
      HV_RETURN_IF_ERROR(PreadExact(fd_, out.data(), length, s.offset + (address - s.vaddr), path_));
      return out;
    }
  }
  return NotFound("address range " + Hex(address) + "+" + std::to_string(length) +
                  " is not mapped in '" + path_ + "'");
}

}  // namespace hv::agent
