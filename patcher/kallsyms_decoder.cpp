#include "patcher/kallsyms_decoder.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <span>
#include <string_view>

#include "base/hex.h"

namespace hv::patcher {
namespace {

// Reads [start, start + size) of guest kernel memory into a fresh buffer.
Result<std::vector<std::uint8_t>> ReadTable(const KernelMemory& mem, std::string_view name,
                                            std::uint64_t start, std::uint64_t size) {
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(size));
  Status s = mem.Read(start, buf);
  if (!s.ok()) return s.WithContext("reading " + std::string(name));
  return buf;
}

// Size of the table that starts at `start` and ends where `next` starts; the 6.1 layout puts
// names before markers before the token table before the token index.
Result<std::uint64_t> SpanTo(std::string_view name, std::uint64_t start, std::string_view next_name,
                             std::uint64_t next, std::uint64_t max) {
  if (next <= start || next - start > max) {
    return InvalidArgument(std::string(name) + " at " + Hex(start) + " is not within " +
                           std::to_string(max) + " bytes below " + std::string(next_name) + " at " +
                           Hex(next));
  }
  return next - start;
}

}  // namespace

Result<KallsymsLocation> KallsymsDecoder::Locate(const Vmcoreinfo& info) {
  KallsymsLocation w;
  HV_ASSIGN_OR_RETURN(w.num_syms, info.RequireSymbol("kallsyms_num_syms"));
  HV_ASSIGN_OR_RETURN(w.names, info.RequireSymbol("kallsyms_names"));
  HV_ASSIGN_OR_RETURN(w.token_table, info.RequireSymbol("kallsyms_token_table"));
  HV_ASSIGN_OR_RETURN(w.token_index, info.RequireSymbol("kallsyms_token_index"));
  if (auto offsets = info.Symbol("kallsyms_offsets")) {
    w.offsets = *offsets;
    HV_ASSIGN_OR_RETURN(w.relative_base, info.RequireSymbol("kallsyms_relative_base"));
  } else {
    HV_ASSIGN_OR_RETURN(w.addresses, info.RequireSymbol("kallsyms_addresses"));
  }
  return w;
}

KallsymsTables KallsymsRaw::tables() const {
  KallsymsTables t;
  t.num_syms = num_syms;
  t.names = names;
  t.token_table = token_table;
  t.token_index = token_index;
  if (base_relative) {
    t.offsets = values;
    t.relative_base = relative_base;
  } else {
    t.addresses = values;
  }
  return t;
}

// FNV-1a over 8-byte words (and the tail bytes), each table length-prefixed. Fed in pieces whose
// sizes are multiples of 8, it gives what it gives fed whole: Digest and DigestInPlace agree.
class TablesDigest {
 public:
  void Mix(std::uint64_t v) {
    h_ = (h_ ^ v) * 0x100000001b3ull;
    h_ ^= h_ >> 29;
  }
  void Bytes(std::span<const std::uint8_t> b) {
    std::size_t i = 0;
    for (; i + 8 <= b.size(); i += 8) {
      std::uint64_t w;
      std::memcpy(&w, b.data() + i, 8);
      Mix(w);
    }
    for (; i < b.size(); ++i) Mix(b[i]);
  }
  std::uint64_t value() const { return h_; }

 private:
  std::uint64_t h_ = 0xcbf29ce484222325ull;
};

std::uint64_t KallsymsRaw::Digest() const {
  TablesDigest d;
  d.Mix(num_syms);
  d.Mix(relative_base);
  d.Mix(base_relative ? 1 : 2);
  for (const std::vector<std::uint8_t>* t : {&names, &token_table, &token_index, &values}) {
    d.Mix(t->size());
    d.Bytes(*t);
  }
  return d.value();
}

Result<KallsymsDecoder::Spans> KallsymsDecoder::Measure(const KernelMemory& mem, const KallsymsLocation& where) {
  Spans s;
  Result<std::uint32_t> num = mem.ReadU32(where.num_syms);
  if (!num.ok()) return num.status().WithContext("reading kallsyms_num_syms");
  s.num_syms = *num;
  if (s.num_syms > kMaxSymbols) {
    return InvalidArgument("kallsyms_num_syms " + std::to_string(s.num_syms) +
                           " exceeds the limit of " + std::to_string(kMaxSymbols));
  }
  HV_ASSIGN_OR_RETURN(std::uint64_t names_size,
                      SpanTo("kallsyms_names", where.names, "kallsyms_token_table",
                             where.token_table, kMaxNamesBytes));
  HV_ASSIGN_OR_RETURN(std::uint64_t tokens_size,
                      SpanTo("kallsyms_token_table", where.token_table, "kallsyms_token_index",
                             where.token_index, kMaxTokenTableBytes));
  s.tables[0] = {"kallsyms_names", where.names, names_size};
  s.tables[1] = {"kallsyms_token_table", where.token_table, tokens_size};
  s.tables[2] = {"kallsyms_token_index", where.token_index, 512};
  if (where.offsets) {
    s.tables[3] = {"kallsyms_offsets", where.offsets, 4ull * s.num_syms};
    Result<std::uint64_t> base = mem.ReadU64(where.relative_base);
    if (!base.ok()) return base.status().WithContext("reading kallsyms_relative_base");
    s.relative_base = *base;
    s.base_relative = true;
  } else {
    s.tables[3] = {"kallsyms_addresses", where.addresses, 8ull * s.num_syms};
    s.base_relative = false;
  }
  return s;
}

Result<std::uint64_t> KallsymsDecoder::DigestInPlace(const KernelMemory& mem, const KallsymsLocation& where) {
  HV_ASSIGN_OR_RETURN(Spans s, Measure(mem, where));
  TablesDigest d;
  d.Mix(s.num_syms);
  d.Mix(s.relative_base);
  d.Mix(s.base_relative ? 1 : 2);
  // A small buffer used over and over: no allocation the size of the tables, so no page faults
  // for them (the warm start reads nothing else of kallsyms).
  std::array<std::uint8_t, 64 * 1024> buf;
  for (const Spans::Table& t : s.tables) {
    d.Mix(t.size);
    for (std::uint64_t done = 0; done < t.size;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), t.size - done));
      Status read = mem.Read(t.start + done, std::span(buf.data(), n));
      if (!read.ok()) return read.WithContext("reading " + std::string(t.name));
      d.Bytes(std::span(buf.data(), n));
      done += n;
    }
  }
  return d.value();
}

Result<KallsymsRaw> KallsymsDecoder::ReadRaw(const KernelMemory& mem, const KallsymsLocation& where) {
  HV_ASSIGN_OR_RETURN(Spans s, Measure(mem, where));
  KallsymsRaw t;
  t.num_syms = s.num_syms;
  t.relative_base = s.relative_base;
  t.base_relative = s.base_relative;
  std::vector<std::uint8_t>* into[] = {&t.names, &t.token_table, &t.token_index, &t.values};
  for (std::size_t i = 0; i < s.tables.size(); ++i) {
    HV_ASSIGN_OR_RETURN(*into[i], ReadTable(mem, s.tables[i].name, s.tables[i].start, s.tables[i].size));
  }
  return t;
}

Result<SymbolList> KallsymsDecoder::Read(const KernelMemory& mem,
                                                        const KallsymsLocation& where) {
  HV_ASSIGN_OR_RETURN(KallsymsRaw raw, ReadRaw(mem, where));
  return Decode(raw.tables());
}

Result<SymbolList> KallsymsDecoder::Decode(const KallsymsTables& t) {
  if (t.num_syms > kMaxSymbols) {
    return InvalidArgument("kallsyms_num_syms " + std::to_string(t.num_syms) +
                           " exceeds the limit of " + std::to_string(kMaxSymbols));
  }
  if (t.token_index.size() < 512) {
    return InvalidArgument("kallsyms_token_index has " + std::to_string(t.token_index.size()) +
                           " bytes, not 512");
  }
  const std::string_view table(reinterpret_cast<const char*>(t.token_table.data()),
                               t.token_table.size());
  std::array<std::string_view, 256> tokens;
  for (int i = 0; i < 256; ++i) {
    std::uint16_t off;
    std::memcpy(&off, t.token_index.data() + 2 * i, 2);
    if (off >= table.size()) {
      return InvalidArgument("kallsyms token " + std::to_string(i) + " offset " +
                             std::to_string(off) + " is outside the " +
                             std::to_string(table.size()) + "-byte token table");
    }
    const std::size_t nul = table.find('\0', off);
    if (nul == std::string_view::npos) {
      return InvalidArgument("kallsyms token " + std::to_string(i) + " has no NUL");
    }
    tokens[i] = table.substr(off, nul - off);
  }

  const bool base_relative = !t.offsets.empty() || t.addresses.empty();
  const std::size_t value_bytes = base_relative ? 4 : 8;
  const std::span<const std::uint8_t> values = base_relative ? t.offsets : t.addresses;
  if (values.size() / value_bytes < t.num_syms) {
    return InvalidArgument(std::string(base_relative ? "kallsyms_offsets" : "kallsyms_addresses") +
                           " holds " + std::to_string(values.size() / value_bytes) +
                           " entries for " + std::to_string(t.num_syms) + " symbols");
  }
  bool absolute_percpu = false;
  if (base_relative) {
    for (std::uint32_t i = 0; i < t.num_syms && !absolute_percpu; ++i) {
      std::int32_t off;
      std::memcpy(&off, values.data() + 4 * i, 4);
      absolute_percpu = off < 0;
    }
  }

  SymbolList out;
  // Names average under 20 bytes; the buffer grows if they do not.
  out.Reserve(t.num_syms, 20 * static_cast<std::size_t>(t.num_syms));
  std::string text;
  std::size_t pos = 0;
  for (std::uint32_t i = 0; i < t.num_syms; ++i) {
    auto truncated = [&] {
      return InvalidArgument("kallsyms_names truncated at symbol " + std::to_string(i) + " of " +
                             std::to_string(t.num_syms) + " (offset " + std::to_string(pos) + ")");
    };
    if (pos >= t.names.size()) return truncated();
    std::size_t len = t.names[pos];
    if (len & 0x80) {  // ULEB128, at most two bytes
      if (pos + 1 >= t.names.size()) return truncated();
      len = (len & 0x7f) | (static_cast<std::size_t>(t.names[pos + 1]) << 7);
      pos += 2;
    } else {
      pos += 1;
    }
    if (len == 0) {
      return InvalidArgument("kallsyms symbol " + std::to_string(i) +
                             " has length 0: the names table is truncated or corrupt");
    }
    if (len > t.names.size() - pos) return truncated();
    text.clear();
    for (std::size_t k = 0; k < len; ++k) {
      text.append(tokens[t.names[pos + k]]);
      if (text.size() > kMaxNameLength + 1) {
        return InvalidArgument("kallsyms symbol " + std::to_string(i) + " is longer than " +
                               std::to_string(kMaxNameLength) + " characters");
      }
    }
    pos += len;
    if (text.size() < 2) continue;  // a type with no name: /proc/kallsyms does not show it

    std::uint64_t address = 0;
    if (base_relative) {
      std::int32_t off;
      std::memcpy(&off, values.data() + 4 * i, 4);
      if (!absolute_percpu) {
        address = t.relative_base + static_cast<std::uint32_t>(off);
      } else if (off >= 0) {
        address = static_cast<std::uint64_t>(off);
      } else {
        address = t.relative_base - 1 - static_cast<std::uint64_t>(static_cast<std::int64_t>(off));
      }
    } else {
      std::memcpy(&address, values.data() + 8 * i, 8);
    }
    out.Add(std::string_view(text).substr(1), address, text[0]);
  }
  return out;
}

}  // namespace hv::patcher
