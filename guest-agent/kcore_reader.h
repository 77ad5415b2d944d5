// Reads kernel virtual memory through /proc/kcore, an ELF core file whose PT_LOAD program headers map
// kernel virtual address ranges to file offsets (fs/proc/kcore.c).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace hv::agent {

class KcoreReader {
 public:
  // Opens `path` and reads its ELF header and program headers. kIo when it cannot be opened or
  // read, kInvalidArgument when it is not a 64-bit little-endian ELF core with sane headers.
  static Result<KcoreReader> Open(const std::string& path);

  KcoreReader(KcoreReader&& other) noexcept;
  KcoreReader& operator=(KcoreReader&& other) noexcept;
  ~KcoreReader();

  // Reads `length` bytes at kernel virtual address `address`. The whole range must lie inside one
  // PT_LOAD segment backed by file data: kNotFound otherwise. kIo when the read fails or is short.
  Result<std::string> Read(uint64_t address, uint32_t length) const;

 private:
  struct Segment {
    uint64_t vaddr;
    uint64_t offset;
    uint64_t filesz;
  };
  KcoreReader(std::string path, int fd, std::vector<Segment> segments)
      : path_(std::move(path)), fd_(fd), segments_(std::move(segments)) {}

  std::string path_;
  int fd_ = -1;
  std::vector<Segment> segments_;
};

}  // namespace hv::agent
