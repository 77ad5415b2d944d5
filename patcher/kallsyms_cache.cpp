#include "patcher/kallsyms_cache.h"

#include <cstring>

#include "base/hex.h"
#include "patcher/kallsyms_decoder.h"

namespace hv::patcher {
namespace {

constexpr char kMagic[8] = {'H', 'V', 'K', 'S', 'Y', 'M', 'C', '1'};
constexpr std::size_t kMaxBuildId = 128;

std::uint64_t Checksum(std::string_view b) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : b) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

void Put(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A bounds-checked little-endian reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  bool Get(int bytes, std::uint64_t* v) {
    if (b_.size() - pos_ < static_cast<std::size_t>(bytes)) return false;
    *v = 0;
    for (int i = 0; i < bytes; ++i) *v |= std::uint64_t{static_cast<unsigned char>(b_[pos_ + i])} << (8 * i);
    pos_ += static_cast<std::size_t>(bytes);
    return true;
  }
  bool Take(std::size_t n, std::string_view* s) {
    if (b_.size() - pos_ < n) return false;
    *s = b_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  std::size_t pos() const { return pos_; }

 private:
  std::string_view b_;
  std::size_t pos_ = 0;
};

}  // namespace

std::string KallsymsCacheKey::StoreKey() const {
  if (build_id.empty() || build_id.size() > kMaxBuildId) return "";
  for (char c : build_id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return "";
  }
  return "kallsyms-" + build_id + "-" + Hex(kaslr_offset).substr(2);
}

std::string EncodeKallsymsCache(const KallsymsCacheKey& key, std::span<const KernelSymbol> symbols) {
  std::string out(kMagic, sizeof(kMagic));
  Put(out, key.build_id.size(), 2);
  out += key.build_id;
  Put(out, key.kaslr_offset, 8);
  Put(out, key.tables_digest, 8);
  Put(out, symbols.size(), 4);
  for (const KernelSymbol& s : symbols) {
    Put(out, s.address, 8);
    out.push_back(s.type);
    Put(out, s.name.size(), 2);
    out += s.name;
  }
  Put(out, Checksum(out), 8);
  return out;
}

Result<std::vector<KernelSymbol>> DecodeKallsymsCache(std::string_view bytes, const KallsymsCacheKey& expected) {
  auto bad = [](const std::string& what) { return InvalidArgument("kallsyms cache entry: " + what); };
  if (bytes.size() > kMaxKallsymsCacheBytes) return bad("larger than " + std::to_string(kMaxKallsymsCacheBytes) + " bytes");
  if (bytes.size() < sizeof(kMagic) + 8 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return bad("no HVKSYMC1 magic");
  }
  const std::string_view body = bytes.substr(0, bytes.size() - 8);
  Reader tail(bytes.substr(bytes.size() - 8));
  std::uint64_t sum = 0;
  tail.Get(8, &sum);
  if (sum != Checksum(body)) return bad("checksum mismatch (corrupt or truncated)");

  Reader r(body.substr(sizeof(kMagic)));
  std::uint64_t id_len = 0, kaslr = 0, digest = 0, count = 0;
  std::string_view build_id;
  if (!r.Get(2, &id_len) || id_len > kMaxBuildId || !r.Take(id_len, &build_id) || !r.Get(8, &kaslr) ||
      !r.Get(8, &digest) || !r.Get(4, &count)) {
    return bad("truncated header");
  }
  if (build_id != expected.build_id) {
    return FailedPrecondition("kallsyms cache entry is for build-id '" + std::string(build_id) + "', not '" +
                              expected.build_id + "'");
  }
  if (kaslr != expected.kaslr_offset) {
    return FailedPrecondition("kallsyms cache entry is for KASLR offset " + Hex(kaslr) + ", not " +
                              Hex(expected.kaslr_offset));
  }
  if (digest != expected.tables_digest) {
    return FailedPrecondition("kallsyms cache entry was decoded from other kallsyms tables (digest " + Hex(digest) +
                              ", guest memory has " + Hex(expected.tables_digest) + ")");
  }
  if (count > KallsymsDecoder::kMaxSymbols) return bad(std::to_string(count) + " symbols exceed the limit");
  std::vector<KernelSymbol> out;
  out.reserve(static_cast<std::size_t>(count));
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t address = 0, type = 0, len = 0;
    std::string_view name;
    if (!r.Get(8, &address) || !r.Get(1, &type) || !r.Get(2, &len) || len == 0 ||
        len > KallsymsDecoder::kMaxNameLength || !r.Take(len, &name)) {
      return bad("symbol " + std::to_string(i) + " is truncated or has a bad name length");
    }
    KernelSymbol s;
    s.name = std::string(name);
    s.address = address;
    s.type = static_cast<char>(type);
    out.push_back(std::move(s));
  }
  if (r.pos() != body.size() - sizeof(kMagic)) return bad("trailing bytes after " + std::to_string(count) + " symbols");
  return out;
}

}  // namespace hv::patcher
