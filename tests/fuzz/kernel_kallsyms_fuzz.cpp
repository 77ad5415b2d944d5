// The kallsyms decoder on hostile tables. Input layout:
//   u16 num_syms | u16 token table length | 512 bytes token index | token table | names | offsets
// where the bytes after the token table are split in two halves for names and offsets.
#include <cstdint>
#include <cstring>

#include "patcher/kallsyms_decoder.h"
#include "patcher/symbol_table.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 4 + 512) return 0;
  std::uint16_t num, table_len;
  std::memcpy(&num, data, 2);
  std::memcpy(&table_len, data + 2, 2);
  std::span<const std::uint8_t> in(data + 4, size - 4);
  hv::patcher::KallsymsTables t;
  t.num_syms = num;
  t.token_index = in.first(512);
  in = in.subspan(512);
  t.token_table = in.first(std::min<std::size_t>(table_len, in.size()));
  in = in.subspan(t.token_table.size());
  t.names = in.first(in.size() / 2);
  t.offsets = in.subspan(in.size() / 2);
  t.relative_base = 0xffffffff81000000ull;
  auto syms = hv::patcher::KallsymsDecoder::Decode(t);
  if (syms.ok()) {
    hv::patcher::SymbolTable table;
    if (table.AddObject("", std::move(*syms)).ok() && table.size() > 0) {
      const auto& first = table.symbols().front();
      (void)table.Find("", first.name, 0);
      (void)table.Find("", first.name, 2);
      (void)table.FindByAddress(first.address + 1);
    }
  }
  return 0;
}
