#include "patcher/kallsyms_cache.h"

#include <cstring>

#include "base/hex.h"
#include "patcher/kallsyms_decoder.h"

namespace hv::patcher {
namespace {

constexpr char kMagic[8] = {'H', 'V', 'K', 'S', 'Y', 'M', 'C', '2'};
constexpr std::size_t kMaxBuildId = 128;

// The entry: this header, then the table's image (SymbolTable::Image). 176 bytes, so the image
// stays 8-byte aligned in a mapping.
struct Header {
  char magic[8];
  std::uint32_t build_id_length;
  std::uint32_t reserved;
  char build_id[kMaxBuildId];
  std::uint64_t kaslr_offset;
  std::uint64_t tables_digest;
  std::uint64_t image_bytes;
  std::uint64_t checksum;  // of the header (this field zero) and the image
};
static_assert(sizeof(Header) % 8 == 0);

// FNV-1a over 8-byte words in four interleaved lanes, folded at the end: it tells a torn or
// damaged file at memory speed (the entry is ~6 MB, read whole on every warm start; one lane
// waits on each multiply in turn, four keep the multiplier busy).
std::uint64_t Checksum(const Header& h, std::string_view image) {
  constexpr std::uint64_t kPrime = 0x100000001b3ull;
  std::uint64_t lane[4] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull, 0x9ce484222325cbf2ull, 0x2325cbf29ce48422ull};
  Header zeroed = h;
  zeroed.checksum = 0;
  auto word = [](const char* p) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
  };
  for (std::size_t i = 0; i < sizeof(zeroed); i += 8) {
    lane[0] = (lane[0] ^ word(reinterpret_cast<const char*>(&zeroed) + i)) * kPrime;
  }
  std::size_t i = 0;
  for (; i + 32 <= image.size(); i += 32) {
    for (int l = 0; l < 4; ++l) lane[l] = (lane[l] ^ word(image.data() + i + 8 * l)) * kPrime;
  }
  for (; i < image.size(); ++i) lane[0] = (lane[0] ^ static_cast<unsigned char>(image[i])) * kPrime;
  std::uint64_t sum = image.size();
  for (std::uint64_t l : lane) sum = (sum ^ l) * kPrime;
  return sum;
}

class CopiedEntry : public KernelCacheStore::Entry {
 public:
  explicit CopiedEntry(std::string bytes) : bytes_(std::move(bytes)) {}
  std::string_view bytes() const override { return bytes_; }

 private:
  std::string bytes_;  // operator new's alignment: 16 bytes
};

}  // namespace

Result<std::shared_ptr<const KernelCacheStore::Entry>> KernelCacheStore::Map(const std::string& key) {
  HV_ASSIGN_OR_RETURN(std::string bytes, Load(key));
  return std::shared_ptr<const Entry>(std::make_shared<CopiedEntry>(std::move(bytes)));
}

std::string KallsymsCacheKey::StoreKey() const {
  if (build_id.empty() || build_id.size() > kMaxBuildId) return "";
  for (char c : build_id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return "";
  }
  return "kallsyms-" + build_id + "-" + Hex(kaslr_offset).substr(2);
}

Result<std::string> EncodeKallsymsCache(const KallsymsCacheKey& key, const SymbolTable& vmlinux) {
  if (key.build_id.size() > kMaxBuildId) return InvalidArgument("a build-id over 128 characters");
  HV_ASSIGN_OR_RETURN(std::string image, vmlinux.Image());
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.build_id_length = static_cast<std::uint32_t>(key.build_id.size());
  std::memcpy(h.build_id, key.build_id.data(), key.build_id.size());
  h.kaslr_offset = key.kaslr_offset;
  h.tables_digest = key.tables_digest;
  h.image_bytes = image.size();
  h.checksum = Checksum(h, image);
  std::string out(reinterpret_cast<const char*>(&h), sizeof(h));
  out += image;
  return out;
}

Result<SymbolTable> DecodeKallsymsCache(std::string_view bytes, std::shared_ptr<const void> owner,
                                        const KallsymsCacheKey& expected) {
  auto bad = [](const std::string& what) { return InvalidArgument("kallsyms cache entry: " + what); };
  if (bytes.size() > kMaxKallsymsCacheBytes) return bad("larger than " + std::to_string(kMaxKallsymsCacheBytes) + " bytes");
  Header h;
  if (bytes.size() < sizeof(h) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return bad("no HVKSYMC2 magic");
  }
  std::memcpy(&h, bytes.data(), sizeof(h));
  const std::string_view image = bytes.substr(sizeof(h));
  if (h.build_id_length > kMaxBuildId || h.image_bytes != image.size()) {
    return bad("truncated (" + std::to_string(image.size()) + " bytes of table)");
  }
  if (h.checksum != Checksum(h, image)) return bad("checksum mismatch (corrupt or truncated)");
  const std::string_view build_id(h.build_id, h.build_id_length);
  if (build_id != expected.build_id) {
    return FailedPrecondition("kallsyms cache entry is for build-id '" + std::string(build_id) + "', not '" +
                              expected.build_id + "'");
  }
  if (h.kaslr_offset != expected.kaslr_offset) {
    return FailedPrecondition("kallsyms cache entry is for KASLR offset " + Hex(h.kaslr_offset) + ", not " +
                              Hex(expected.kaslr_offset));
  }
  if (h.tables_digest != expected.tables_digest) {
    return FailedPrecondition("kallsyms cache entry was decoded from other kallsyms tables (digest " +
                              Hex(h.tables_digest) + ", guest memory has " + Hex(expected.tables_digest) + ")");
  }
  Result<SymbolTable> t = SymbolTable::FromImage(image, std::move(owner));
  if (!t.ok()) return bad(t.status().message());
  if (t->size() > KallsymsDecoder::kMaxSymbols) return bad(std::to_string(t->size()) + " symbols exceed the limit");
  return t;
}

}  // namespace hv::patcher
