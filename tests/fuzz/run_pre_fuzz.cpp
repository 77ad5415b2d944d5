// The run-pre table of a module built by `hvpatch build` (patcher/run_pre.h): a module is operator
// input, but a corrupt or hostile one must never crash or hang hvpatch. The input is the
// section's bytes; every parsed record is then matched against its own code and against a
// truncated and a flipped copy, with and without relocation checks.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "patcher/run_pre.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> in(data, data + size);
  // Most inputs need the magic to reach the records.
  if (size > 0 && data[0] == 'x') {
    const char magic[] = "HVRUNPR2";
    in.assign(magic, magic + 8);
    in.insert(in.end(), data + 1, data + size);
  }
  auto records = hv::patcher::ParseRunPre(in);
  if (!records.ok()) return 0;
  for (const auto& f : *records) {
    std::vector<std::uint8_t> guest = f.code;
    (void)hv::patcher::MatchRunPre(f, guest);
    if (!guest.empty()) guest[guest.size() / 2] ^= 0xff;
    (void)hv::patcher::MatchRunPre(f, guest);
    (void)hv::patcher::MatchRunPreRelocations(f, guest, 0xffffffff81000000,
                                              [](const std::string& n) -> std::optional<std::uint64_t> {
                                                if (n.empty()) return std::nullopt;
                                                return 0xffffffff82000000 + n.size();
                                              });
    guest.resize(guest.size() / 2);
    (void)hv::patcher::MatchRunPre(f, guest);
  }
  return 0;
}
