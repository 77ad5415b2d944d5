// Page tables from a hostile guest: the input fills 16 pages of fake RAM that hold the page
// tables (entries may point back at their own table, at each other, or outside RAM, so a walk
// can loop), then kernel virtual memory is read through them the way every GuestKernel read
// and the arena's slot search go. Input: records of 10 bytes, a little-endian u16 word index
// into the 16 pages and the u64 entry to store; an entry value below 16 pages is turned into a
// present pointer to that page (so loops and shared tables are easy to reach).
#include <cstdint>
#include <cstring>
#include <vector>

#include "tests/unit/fake_phys_memory.h"
#include "vmm/page_walk.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::uint64_t kPages = 16;
  hv::testing::FakePhysMemory mem(kPages * 4096);
  for (std::size_t at = 0; at + 10 <= size; at += 10) {
    std::uint16_t index;
    std::uint64_t value;
    std::memcpy(&index, data + at, 2);
    std::memcpy(&value, data + at + 2, 8);
    if (value < kPages) value = (value << 12) | 0x63;  // present, rw, accessed, dirty
    std::uint8_t raw[8];
    std::memcpy(raw, &value, 8);
    mem.Write(8 * (index % (kPages * 512)), raw);
  }
  std::uint64_t cr3 = 0;
  if (size >= 1) cr3 = (data[0] % kPages) << 12;
  for (bool la57 : {false, true}) {
    const hv::vmm::PagingMode mode{cr3, la57, true};
    for (std::uint64_t va : {0xffffffff81000000ull, 0xffffffffc0000000ull, 0xffff888000000000ull,
                             0x0000000000400000ull, 0xffffffffff600000ull}) {
      (void)hv::vmm::TranslateVirt(mem, mode, va);
      std::vector<std::uint8_t> out(3 * 4096);
      (void)hv::vmm::ReadVirt(mem, mode, va + 4000, out);
    }
  }
  return 0;
}
