// vmcoreinfo from hostile guest RAM: the input is parsed as text, and also planted at a page
// start of a small fake RAM (as the data page, and as the ELF note copy) for the scan.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "patcher/vmcoreinfo.h"
#include "tests/unit/fake_phys_memory.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = hv::patcher::Vmcoreinfo::Parse(text);
  if (parsed.ok()) {
    (void)parsed->Symbol("init_uts_ns");
    (void)parsed->RequireNumber("phys_base");
  }
  hv::testing::FakePhysMemory mem(64 * 1024);
  const std::size_t n = std::min<std::size_t>(size, 4096);
  mem.Write(0x1000, std::span(data, n));
  // The note shape: namesz 11, descsz from the input, "VMCOREINFO", then the input.
  std::uint8_t note[24] = {11, 0, 0, 0};
  const std::uint32_t descsz = size >= 4 ? (data[0] | data[1] << 8) : 0;
  std::memcpy(note + 4, &descsz, 4);
  std::memcpy(note + 12, "VMCOREINFO", 11);
  mem.Write(0x3000, note);
  mem.Write(0x3000 + 24, std::span(data, std::min<std::size_t>(size, 4096 - 24)));
  auto found = hv::patcher::Vmcoreinfo::Find(mem);
  (void)found;
  return 0;
}
