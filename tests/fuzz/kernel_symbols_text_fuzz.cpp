// /proc/kallsyms text from a hostile agent and System.map files from users.
#include <cstdint>
#include <string_view>

#include "patcher/symbol_table.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto t = hv::patcher::ParseKallsymsText(text);
  if (t.ok() && t->size() > 0) {
    const auto& s = t->symbols().back();
    (void)t->Find(s.module, s.name, 0);
    (void)t->Find(s.module, s.name, 3);
    (void)t->FindByAddress(s.address);
  }
  (void)hv::patcher::ParseSystemMap(text, 0x1a200000);
  return 0;
}
