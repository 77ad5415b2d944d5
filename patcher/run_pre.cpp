#include "patcher/run_pre.h"

#include <cstring>

#include "base/hex.h"

namespace hv::patcher {

namespace {

constexpr char kMagic[8] = {'H', 'V', 'R', 'U', 'N', 'P', 'R', '2'};
constexpr std::uint32_t kMaxFunctions = 4096;
constexpr std::uint32_t kMaxCode = 1u << 20;
constexpr std::uint32_t kMaxEntries = 1u << 16;

void Put(std::vector<std::uint8_t>& o, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) o.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
void PutString(std::vector<std::uint8_t>& o, const std::string& s) {
  Put(o, s.size(), 2);
  o.insert(o.end(), s.begin(), s.end());
}

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> b) : b_(b) {}
  Result<std::uint64_t> Get(int bytes, const std::string& what) {
    if (b_.size() - pos_ < static_cast<std::size_t>(bytes)) return Truncated(what);
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= std::uint64_t{b_[pos_ + i]} << (8 * i);
    pos_ += bytes;
    return v;
  }
  Result<std::string> GetString(const std::string& what) {
    HV_ASSIGN_OR_RETURN(std::uint64_t n, Get(2, what + " length"));
    if (b_.size() - pos_ < n) return Truncated(what);
    std::string s(reinterpret_cast<const char*>(b_.data()) + pos_, n);
    pos_ += n;
    return s;
  }
  Result<std::vector<std::uint8_t>> GetBytes(std::uint64_t n, const std::string& what) {
    if (b_.size() - pos_ < n) return Truncated(what);
    std::vector<std::uint8_t> v(b_.begin() + pos_, b_.begin() + pos_ + n);
    pos_ += n;
    return v;
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  Status Truncated(const std::string& what) const {
    return InvalidArgument(what + " at offset " + Hex(pos_) + " runs past the end of the section");
  }
  std::span<const std::uint8_t> b_;
  std::size_t pos_ = 0;
};

bool StartsWith(const std::string& s, std::string_view p) { return s.compare(0, p.size(), p) == 0; }

bool IsNopOrInt3Padding(std::span<const std::uint8_t> g) {
  // Padding after a shortened instruction: int3, single-byte nops or the multi-byte nop forms.
  for (std::uint8_t b : g) {
    if (b != 0xcc && b != 0x90 && b != 0x0f && b != 0x1f && b != 0x00 && b != 0x40 && b != 0x44 &&
        b != 0x66 && b != 0x2e && b != 0x84) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::vector<std::uint8_t> SerializeRunPre(const std::vector<RunPreFunction>& functions) {
  std::vector<std::uint8_t> o(kMagic, kMagic + sizeof(kMagic));
  Put(o, functions.size(), 4);
  for (const auto& f : functions) {
    PutString(o, f.name);
    PutString(o, f.object);
    Put(o, f.code.size(), 4);
    o.insert(o.end(), f.code.begin(), f.code.end());
    Put(o, f.holes.size(), 4);
    for (const auto& h : f.holes) {
      Put(o, h.offset, 4);
      Put(o, h.width, 1);
      Put(o, h.type, 1);
      Put(o, static_cast<std::uint64_t>(h.addend), 8);
      PutString(o, h.target);
    }
    Put(o, f.volatiles.size(), 4);
    for (const auto& v : f.volatiles) {
      Put(o, v.offset, 4);
      Put(o, v.length, 1);
      Put(o, static_cast<std::uint8_t>(v.kind), 1);
    }
  }
  return o;
}

Result<std::vector<RunPreFunction>> ParseRunPre(std::span<const std::uint8_t> bytes) {
  const std::string ctx = std::string("reading section '") + kRunPreSection + "'";
  if (bytes.size() < sizeof(kMagic) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return InvalidArgument("bad magic (not an hvpatch run-pre table)").WithContext(ctx);
  }
  Reader r(bytes.subspan(sizeof(kMagic)));
  auto parse = [&]() -> Result<std::vector<RunPreFunction>> {
    HV_ASSIGN_OR_RETURN(std::uint64_t n, r.Get(4, "function count"));
    if (n > kMaxFunctions) return InvalidArgument("too many functions (" + std::to_string(n) + ")");
    std::vector<RunPreFunction> out;
    for (std::uint64_t i = 0; i < n; ++i) {
      const std::string w = "function " + std::to_string(i);
      RunPreFunction f;
      HV_ASSIGN_OR_RETURN(f.name, r.GetString(w + " name"));
      HV_ASSIGN_OR_RETURN(f.object, r.GetString(w + " object"));
      HV_ASSIGN_OR_RETURN(std::uint64_t size, r.Get(4, w + " code size"));
      if (size == 0 || size > kMaxCode) return InvalidArgument(w + " ('" + f.name + "') code size " + std::to_string(size) + " is out of range");
      HV_ASSIGN_OR_RETURN(f.code, r.GetBytes(size, w + " code"));
      HV_ASSIGN_OR_RETURN(std::uint64_t nh, r.Get(4, w + " hole count"));
      if (nh > kMaxEntries) return InvalidArgument(w + " has too many holes");
      for (std::uint64_t k = 0; k < nh; ++k) {
        RunPreHole h;
        HV_ASSIGN_OR_RETURN(std::uint64_t off, r.Get(4, w + " hole offset"));
        HV_ASSIGN_OR_RETURN(std::uint64_t width, r.Get(1, w + " hole width"));
        HV_ASSIGN_OR_RETURN(std::uint64_t type, r.Get(1, w + " hole type"));
        HV_ASSIGN_OR_RETURN(std::uint64_t addend, r.Get(8, w + " hole addend"));
        h.type = static_cast<std::uint8_t>(type);
        h.addend = static_cast<std::int64_t>(addend);
        HV_ASSIGN_OR_RETURN(h.target, r.GetString(w + " hole target"));
        if (width == 0 || off + width > size) return InvalidArgument(w + " ('" + f.name + "') hole at " + Hex(off) + " is outside its code");
        h.offset = static_cast<std::uint32_t>(off);
        h.width = static_cast<std::uint8_t>(width);
        f.holes.push_back(std::move(h));
      }
      HV_ASSIGN_OR_RETURN(std::uint64_t nv, r.Get(4, w + " volatile count"));
      if (nv > kMaxEntries) return InvalidArgument(w + " has too many volatile ranges");
      for (std::uint64_t k = 0; k < nv; ++k) {
        RunPreVolatile v;
        HV_ASSIGN_OR_RETURN(std::uint64_t off, r.Get(4, w + " volatile offset"));
        HV_ASSIGN_OR_RETURN(std::uint64_t len, r.Get(1, w + " volatile length"));
        HV_ASSIGN_OR_RETURN(std::uint64_t kind, r.Get(1, w + " volatile kind"));
        if (kind < 1 || kind > 5) return InvalidArgument(w + " volatile range kind " + std::to_string(kind) + " is unknown");
        v.offset = static_cast<std::uint32_t>(std::min<std::uint64_t>(off, size));
        v.length = static_cast<std::uint8_t>(len);
        v.kind = static_cast<VolatileKind>(kind);
        f.volatiles.push_back(v);
      }
      out.push_back(std::move(f));
    }
    if (!r.done()) return InvalidArgument("trailing bytes after " + std::to_string(n) + " functions");
    return out;
  };
  auto out = parse();
  if (!out.ok()) return out.status().WithContext(ctx);
  return out;
}

std::optional<RunPreMismatch> MatchRunPre(const RunPreFunction& f, std::span<const std::uint8_t> guest) {
  const std::size_t n = f.code.size();
  if (guest.size() < n) {
    return RunPreMismatch{guest.size(), "the guest function is " + std::to_string(guest.size()) +
                                            " bytes, the build's " + std::to_string(n)};
  }
  // What each byte is: 0 = compare, 1 = skip (relocation field or volatile range).
  std::vector<std::uint8_t> skip(n, 0);
  auto skip_range = [&](std::size_t off, std::size_t len) {
    for (std::size_t i = off; i < off + len && i < n; ++i) skip[i] = 1;
  };
  for (const auto& v : f.volatiles) skip_range(v.offset, v.length);
  for (const auto& h : f.holes) {
    skip_range(h.offset, h.width);
    // The instruction that holds the field starts 1 byte before it for call/jmp rel32.
    if (h.offset < 1) continue;
    const std::size_t insn = h.offset - 1;
    const std::uint8_t op = f.code[insn];
    const std::size_t end = h.offset + h.width;
    if (h.target == "__fentry__" && insn == 0 && op == 0xe8) {
      // ftrace's site: the nop at boot, or ftrace's call (traced / in-guest livepatch), or a jmp
      // (a trampoline of hvpatch's or another tool's). The entry check judges which are usable.
      const std::uint8_t g = guest[0];
      if (g == 0xe8 || g == 0xe9 || (g == 0x0f && guest[1] == 0x1f && guest[2] == 0x44)) skip_range(0, 5);
      continue;
    }
    if (h.target == "__x86_return_thunk" && op == 0xe9) {
      // apply_returns(): `jmp __x86_return_thunk` -> `ret; int3 x4` unless the mitigation needs it.
      if (guest[insn] == 0xc3 && IsNopOrInt3Padding(guest.subspan(insn + 1, end - insn - 1))) skip_range(insn, end - insn);
      continue;
    }
    if (StartsWith(h.target, "__x86_indirect_thunk_") && (op == 0xe8 || op == 0xe9)) {
      // apply_retpolines(): the thunk call/jmp becomes `call/jmp *%reg` (maybe after lfence),
      // padded. Any such rewrite of these 5 bytes counts as the kernel's own.
      const std::uint8_t g = guest[insn];
      if (g != op) skip_range(insn, end - insn);
      continue;
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (skip[i] || guest[i] == f.code[i]) continue;
    return RunPreMismatch{i, "guest has " + Hex(guest[i]) + ", the build " + Hex(f.code[i])};
  }
  return std::nullopt;
}

std::optional<RunPreMismatch> MatchRunPreRelocations(
    const RunPreFunction& f, std::span<const std::uint8_t> guest, std::uint64_t va,
    const std::function<std::optional<std::uint64_t>(const std::string&)>& resolve) {
  for (const auto& h : f.holes) {
    if (h.target.empty() || h.target == "__fentry__" || h.target == "__x86_return_thunk" ||
        StartsWith(h.target, "__x86_indirect_thunk_")) {
      continue;
    }
    // The module is untrusted input: the field's width must be the relocation type's own (at most
    // the 8 bytes of `have` below) and lie inside the guest's bytes, without overflow.
    const std::size_t type_width = (h.type == 1) ? 8 : (h.type == 2 || h.type == 4 || h.type == 10 || h.type == 11) ? 4 : 0;
    if (type_width == 0 || h.width != type_width) continue;
    if (h.offset > guest.size() || guest.size() - h.offset < h.width) continue;
    bool in_volatile = false;
    for (const auto& v : f.volatiles) {
      if (h.offset < v.offset + v.length && v.offset < h.offset + h.width) in_volatile = true;
    }
    if (in_volatile) continue;
    const auto target = resolve(h.target);
    if (!target) continue;
    const std::uint64_t sa = *target + static_cast<std::uint64_t>(h.addend);
    std::uint64_t want = 0;
    std::uint64_t have = 0;
    std::memcpy(&have, guest.data() + h.offset, h.width);
    switch (h.type) {
      case 2: case 4:  // R_X86_64_PC32, R_X86_64_PLT32
        want = static_cast<std::uint32_t>(sa - (va + h.offset));
        break;
      case 10: case 11:  // R_X86_64_32, R_X86_64_32S
        want = static_cast<std::uint32_t>(sa);
        break;
      case 1:  // R_X86_64_64
        want = sa;
        break;
      default:
        continue;
    }
    if (want != have) {
      return RunPreMismatch{h.offset, "the guest's code refers elsewhere than '" + h.target + "'" +
                                          (h.addend != 0 ? " + " + std::to_string(h.addend) : std::string())};
    }
  }
  return std::nullopt;
}

}  // namespace hv::patcher
