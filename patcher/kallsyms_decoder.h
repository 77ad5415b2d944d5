// Decodes the kernel's compressed symbol table (kallsyms) as read from guest memory.
//
// Layout (Linux 6.1, kernel/kallsyms.c and scripts/kallsyms.c):
//   kallsyms_num_syms       u32: number of symbols
//   kallsyms_names          per symbol: a length L (one byte, or two bytes ULEB128 when the
//                           first has bit 7 set: "big" symbols, 6.1+), then L token numbers
//   kallsyms_token_table    256 NUL-terminated strings, concatenated
//   kallsyms_token_index    u16[256]: offset of each token string in the token table
//   kallsyms_offsets        s32 per symbol, with kallsyms_relative_base (u64), when
//                           CONFIG_KALLSYMS_BASE_RELATIVE; else kallsyms_addresses, u64 each
// A symbol's expanded text is its type letter followed by its name.
//
// Addresses with CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP): an offset >= 0 is an absolute
// value (per-cpu symbols: their small offsets into the per-cpu area, e.g. current_task), and a
// negative one means relative_base - 1 - offset. Without it every offset is an unsigned
// displacement from relative_base. The config is not recorded in memory, so it is inferred: a
// kernel built with it has negative offsets for all of its text, and one built without has none
// (scripts/kallsyms fails the build if an offset does not fit).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <span>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_memory.h"
#include "patcher/symbol_table.h"
#include "patcher/vmcoreinfo.h"

namespace hv::patcher {

// Where the tables are (kernel virtual addresses), normally from vmcoreinfo (Linux 6.0+).
struct KallsymsLocation {
  std::uint64_t num_syms = 0;
  std::uint64_t names = 0;
  std::uint64_t token_table = 0;
  std::uint64_t token_index = 0;
  std::uint64_t offsets = 0;        // 0 if the kernel uses absolute addresses
  std::uint64_t relative_base = 0;  // 0 if the kernel uses absolute addresses
  std::uint64_t addresses = 0;      // kallsyms_addresses, without BASE_RELATIVE
};

// The raw tables, already copied out of the guest. Pure input for Decode (and for fuzzing).
struct KallsymsTables {
  std::uint32_t num_syms = 0;
  std::span<const std::uint8_t> names;
  std::span<const std::uint8_t> token_table;
  std::span<const std::uint8_t> token_index;  // 512 bytes
  std::span<const std::uint8_t> offsets;      // 4 * num_syms bytes (base-relative)
  std::uint64_t relative_base = 0;
  std::span<const std::uint8_t> addresses;    // 8 * num_syms bytes (absolute), if no offsets
};

// The tables as copied out of guest memory, owning their bytes.
struct KallsymsRaw {
  std::uint32_t num_syms = 0;
  std::vector<std::uint8_t> names, token_table, token_index, values;  // values: offsets or addresses
  std::uint64_t relative_base = 0;
  bool base_relative = true;
  KallsymsTables tables() const;
  // A 64-bit digest of every table byte and field (not cryptographic: it tells a stale cache
  // from the tables in memory; the guest that could forge a collision is the source of both).
  std::uint64_t Digest() const;
};

class KallsymsDecoder {
 public:
  // Bounds: no real kernel comes near them.
  static constexpr std::uint32_t kMaxSymbols = 4u << 20;
  static constexpr std::size_t kMaxNamesBytes = 64u << 20;
  static constexpr std::size_t kMaxTokenTableBytes = 64u << 10;
  static constexpr std::size_t kMaxNameLength = 512;  // KSYM_NAME_LEN in 6.1

  // Table addresses from vmcoreinfo. kNotFound names the first missing SYMBOL().
  static Result<KallsymsLocation> Locate(const Vmcoreinfo& info);

  // Copies the tables out of guest memory and decodes them. Errors: read errors with the table
  // named in the context; everything Decode returns.
  static Result<SymbolList> Read(const KernelMemory& mem,
                                                const KallsymsLocation& where);
  // Only the copy: Read is ReadRaw + Decode. Errors as Read's read errors and bounds.
  static Result<KallsymsRaw> ReadRaw(const KernelMemory& mem, const KallsymsLocation& where);
  // ReadRaw(...).Digest() without the copy: the tables stream through a 64 KiB buffer. What the
  // warm start checks its cache entry with. Errors as ReadRaw.
  static Result<std::uint64_t> DigestInPlace(const KernelMemory& mem, const KallsymsLocation& where);

  // Decodes symbols in table order (sympos and size are left for SymbolTable). Errors
  // (kInvalidArgument): num_syms over kMaxSymbols, a token index outside the token table, a token
  // without NUL, names truncated at symbol N, an empty symbol, a name over kMaxNameLength,
  // offsets/addresses shorter than num_syms.
  static Result<SymbolList> Decode(const KallsymsTables& tables);

 private:
  // Where each table is and how long, with the bounds checked: what ReadRaw copies and
  // DigestInPlace streams, in the same order.
  struct Spans {
    struct Table {
      std::string_view name;
      std::uint64_t start = 0, size = 0;
    };
    std::uint32_t num_syms = 0;
    std::array<Table, 4> tables;  // names, token table, token index, offsets or addresses
    std::uint64_t relative_base = 0;
    bool base_relative = true;
  };
  static Result<Spans> Measure(const KernelMemory& mem, const KallsymsLocation& where);
};

}  // namespace hv::patcher
