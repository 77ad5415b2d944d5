#include "guest-agent/kernel_notes.h"

#include <cstdint>
#include <cstring>

namespace hv::agent {

namespace {

constexpr uint32_t kNtGnuBuildId = 3;

uint32_t Load32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));  // notes are in the kernel's (little-endian) byte order
  return v;
}

uint64_t Align4(uint64_t v) { return (v + 3) & ~uint64_t{3}; }

}  // namespace

Result<std::string> FindGnuBuildId(std::string_view notes) {
  uint64_t off = 0;
  // Each iteration consumes at least the 12-byte header, so the loop ends.
  while (off + 12 <= notes.size()) {
    const uint64_t namesz = Load32(notes.data() + off);
    const uint64_t descsz = Load32(notes.data() + off + 4);
    const uint32_t type = Load32(notes.data() + off + 8);
    const uint64_t name_off = off + 12;
    const uint64_t desc_off = name_off + Align4(namesz);
    const uint64_t next = desc_off + Align4(descsz);
    if (desc_off + descsz > notes.size()) {
      return InvalidArgument("note at offset " + std::to_string(off) + " runs past the end (" +
                             std::to_string(notes.size()) + " bytes)");
    }
    std::string_view name = notes.substr(name_off, namesz);
    if (!name.empty() && name.back() == '\0') name.remove_suffix(1);
    if (type == kNtGnuBuildId && name == "GNU") {
      if (descsz == 0) return InvalidArgument("GNU build-id note is empty");
      return std::string(notes.substr(desc_off, descsz));
    }
    off = next;
  }
  return NotFound("no GNU build-id note");
}

}  // namespace hv::agent
