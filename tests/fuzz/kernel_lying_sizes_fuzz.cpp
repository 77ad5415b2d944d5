// A guest whose vmcoreinfo and kallsyms tables lie about their sizes and places: GuestKernel::Build
// over a fake guest (the whole model: vmcoreinfo scan, kallsyms decode, BTF, modules) after the
// input has rewritten
//   - the value of chosen vmcoreinfo lines (SYMBOL(kallsyms_num_syms), the table addresses,
//     phys_base, KERNELOFFSET, ...): tables said to be elsewhere, overlapping, or huge;
//   - words of the kallsyms tables themselves (kallsyms_num_syms, token index, offsets), so the
//     symbol count, the token lengths and the name lengths lie;
//   - the vmcoreinfo note's text length (a line cut short or running past the page).
// Input: records of 11 bytes: u8 kind, u16 index, u64 value (little-endian).
//   kind % 3 == 0: vmcoreinfo line `index % lines` gets `value` (hex) after its '='
//   kind % 3 == 1: kallsyms table `index % 6`'s word `value >> 48` becomes `value & 0xffffffffffff`
//                  (a small value), or the whole u64 when bit 47 is set
//   kind % 3 == 2: the vmcoreinfo text is cut to `value % (length + 64)` bytes
// Everything is restored after each input, so the fake guest is built once.
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "patcher/guest_kernel.h"
#include "tests/unit/patcher/fake_guest_kernel.h"

namespace {

using hv::testing::FakeGuestKernel;

const char* const kTables[] = {"kallsyms_num_syms", "kallsyms_token_index", "kallsyms_token_table",
                               "kallsyms_names", "kallsyms_offsets", "kallsyms_relative_base"};

struct World {
  FakeGuestKernel guest;
  std::vector<std::uint8_t> image;  // the image up to past the last kallsyms table
  std::vector<std::string> lines;
  World() {
    std::uint64_t end = 0;
    for (const char* t : kTables) end = std::max(end, guest.Symbol(t) - FakeGuestKernel::kImageVa);
    image.resize(std::min<std::uint64_t>(end + (256u << 10), FakeGuestKernel::kImageSize));
    if (!guest.mem().ReadPhys(FakeGuestKernel::kImagePa, image).ok()) std::abort();
    std::string text = guest.vmcoreinfo_text();
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t nl = text.find('\n', at);
      lines.push_back(text.substr(at, nl - at));
      at = nl == std::string::npos ? text.size() : nl + 1;
    }
  }
  void WriteVmcoreinfo(const std::string& text) {
    std::vector<std::uint8_t> page(4096, 0);
    std::memcpy(page.data(), text.data(), std::min<std::size_t>(text.size(), page.size()));
    guest.mem().Write(FakeGuestKernel::kVmcoreinfoPa, page);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World* w = new World();
  std::vector<std::string> lines = w->lines;
  std::size_t cut = std::string::npos;
  for (std::size_t at = 0; at + 11 <= size; at += 11) {
    const std::uint8_t kind = data[at];
    std::uint16_t index;
    std::uint64_t value;
    std::memcpy(&index, data + at + 1, 2);
    std::memcpy(&value, data + at + 3, 8);
    if (kind % 3 == 0) {
      std::string& line = lines[index % lines.size()];
      const std::size_t eq = line.find('=');
      if (eq == std::string::npos) continue;
      char hex[24];
      std::snprintf(hex, sizeof hex, "%llx", static_cast<unsigned long long>(value));
      line = line.substr(0, eq + 1) + hex;
    } else if (kind % 3 == 1) {
      const std::uint64_t va = w->guest.Symbol(kTables[index % 6]);
      const std::uint64_t word = (value >> 48) & 0x3ff;
      const std::uint64_t v = (value >> 47) & 1 ? value : value & 0xffffffffffffull;
      if (va + 8 * word + 8 <= FakeGuestKernel::kImageVa + w->image.size()) w->guest.Write64(va + 8 * word, v);
    } else {
      cut = value;
    }
  }
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  if (cut != std::string::npos) text.resize(cut % (text.size() + 64), 'Z');
  w->WriteVmcoreinfo(text);
  const auto vcpus = w->guest.vcpus();
  auto kernel = hv::patcher::GuestKernel::Build(w->guest.mem(), vcpus);
  if (kernel.ok()) (void)(*kernel)->Summary();
  // Restore the honest guest.
  w->guest.mem().Write(FakeGuestKernel::kImagePa, w->image);
  std::string honest;
  for (const auto& l : w->lines) honest += l + "\n";
  w->WriteVmcoreinfo(honest);
  return 0;
}
