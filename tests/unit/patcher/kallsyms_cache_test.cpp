// The warm-start cache of decoded kallsyms: the entry codec against hostile bytes, and
// GuestKernel::Build using, refusing and rewriting entries on a fake guest.
#include "patcher/kallsyms_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "patcher/guest_kernel.h"
#include "patcher/kallsyms_decoder.h"
#include "status_matchers.h"
#include "tests/unit/patcher/fake_guest_kernel.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::FakeGuestKernel;

SymbolTable Sample() {
  static const std::string kLong(300, 'x');
  SymbolTable t;
  EXPECT_THAT(t.AddObject("", {{"_stext", 0xffffffff81000000, 0, 'T', 0, {}},
                               {"init_task", 0xffffffff82a0c940, 0, 'D', 0, {}},
                               {"dup", 0xffffffff81000100, 0, 't', 0, {}},
                               {"dup", 0xffffffff81000200, 0, 't', 0, {}},
                               {kLong, 0xffffffffc0001000, 0, 't', 0, {}}}),
              IsOk());
  return t;
}

std::string Encode(const KallsymsCacheKey& key, const SymbolTable& t) {
  Result<std::string> bytes = EncodeKallsymsCache(key, t);
  EXPECT_THAT(bytes, IsOk());
  return bytes.ok() ? *bytes : "";
}

const KallsymsCacheKey kKey{"0123456789abcdef0123456789abcdef01234567", 0x6c00000, 0x1122334455667788};

// An 8-byte aligned copy of `bytes` (as a file mapping is), alive as long as the table.
std::shared_ptr<const std::string> Aligned(std::string bytes) {
  return std::make_shared<const std::string>(std::move(bytes));
}

Result<SymbolTable> Decode(const std::string& bytes, const KallsymsCacheKey& key) {
  auto held = Aligned(bytes);
  return DecodeKallsymsCache(*held, held, key);
}

TEST(KallsymsCacheTest, RoundTripsTheWholeTable) {
  const SymbolTable want = Sample();
  auto got = Decode(Encode(kKey, want), kKey);
  ASSERT_THAT(got, IsOk());
  ASSERT_EQ(got->size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got->at(i).name, want.at(i).name);
    EXPECT_EQ(got->at(i).address, want.at(i).address);
    EXPECT_EQ(got->at(i).type, want.at(i).type);
    EXPECT_EQ(got->at(i).size, want.at(i).size);
    EXPECT_EQ(got->at(i).sympos, want.at(i).sympos);
  }
  // The index came along and works in place.
  auto second = got->Find("", "dup", 2);
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->address, 0xffffffff81000200u);
  EXPECT_THAT(got->Find("", "dup"), StatusIs(Code::kInvalidArgument, HasSubstr("2 occurrences")));
  EXPECT_EQ(got->FindByAddress(0xffffffff81000150)->name, "dup");
  EXPECT_EQ(got->FindAll("init_task").size(), 1u);
  // Modules still join a table read from an entry.
  ASSERT_THAT(got->AddObject("mod", {{"dup", 0xffffffffc0100000, 0, 't', 0, {}}}), IsOk());
  EXPECT_EQ(got->FindAll("dup").size(), 3u);
  EXPECT_EQ(got->Find("mod", "dup")->sympos, 1u);
}

TEST(KallsymsCacheTest, OnlyATableOfVmlinuxAloneIsEncoded) {
  SymbolTable t = Sample();
  ASSERT_THAT(t.AddObject("mod", {{"f", 0xffffffffc0100000, 0, 't', 0, {}}}), IsOk());
  EXPECT_THAT(EncodeKallsymsCache(kKey, t), StatusIs(Code::kFailedPrecondition, HasSubstr("vmlinux alone")));
}

TEST(KallsymsCacheTest, RefusesAnEntryForAnotherKernelOrOtherTables) {
  const std::string bytes = Encode(kKey, Sample());
  KallsymsCacheKey k = kKey;
  k.build_id[0] = 'f';
  EXPECT_THAT(Decode(bytes, k), StatusIs(Code::kFailedPrecondition, HasSubstr("build-id")));
  k = kKey;
  k.kaslr_offset += 0x200000;  // a reboot moved the kernel
  EXPECT_THAT(Decode(bytes, k), StatusIs(Code::kFailedPrecondition, HasSubstr("KASLR offset 0x6c00000")));
  k = kKey;
  k.tables_digest ^= 1;
  EXPECT_THAT(Decode(bytes, k), StatusIs(Code::kFailedPrecondition, HasSubstr("other kallsyms tables")));
}

TEST(KallsymsCacheTest, RefusesCorruptTruncatedAndForeignFiles) {
  const std::string bytes = Encode(kKey, Sample());
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  EXPECT_THAT(Decode(flipped, kKey), StatusIs(Code::kInvalidArgument, HasSubstr("checksum mismatch")));
  EXPECT_THAT(Decode(bytes.substr(0, bytes.size() - 24), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("truncated")));
  EXPECT_THAT(Decode("", kKey), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
  EXPECT_THAT(Decode("{\"patches\": []}", kKey), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
}

// An entry that passes the checksum but lies inside its table (a forged or miswritten entry)
// still cannot make a lookup read out of bounds: the table's own checks refuse it.
TEST(KallsymsCacheTest, AResealedEntryIsStillCheckedInside) {
  std::string bytes = Encode(kKey, Sample());
  constexpr std::size_t kHeader = 176, kChecksumAt = 168, kTableHeader = 56;
  // The checksum as kallsyms_cache.cpp computes it: four FNV-1a lanes over 8-byte words of the
  // image, the header (checksum zeroed) in lane 0 first, folded with the image's size.
  auto reseal = [&](std::string b) {
    constexpr std::uint64_t kPrime = 0x100000001b3ull;
    std::memset(b.data() + kChecksumAt, 0, 8);
    std::uint64_t lane[4] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull, 0x9ce484222325cbf2ull, 0x2325cbf29ce48422ull};
    auto word = [&](std::size_t at) {
      std::uint64_t w;
      std::memcpy(&w, b.data() + at, 8);
      return w;
    };
    for (std::size_t i = 0; i < kHeader; i += 8) lane[0] = (lane[0] ^ word(i)) * kPrime;
    const std::size_t image = b.size() - kHeader;
    std::size_t i = 0;
    for (; i + 32 <= image; i += 32) {
      for (int l = 0; l < 4; ++l) lane[l] = (lane[l] ^ word(kHeader + i + 8 * l)) * kPrime;
    }
    for (; i < image; ++i) lane[0] = (lane[0] ^ static_cast<unsigned char>(b[kHeader + i])) * kPrime;
    std::uint64_t h = image;
    for (std::uint64_t l : lane) h = (h ^ l) * kPrime;
    std::memcpy(b.data() + kChecksumAt, &h, 8);
    return b;
  };
  ASSERT_THAT(Decode(reseal(bytes), kKey), IsOk());  // the reseal itself is right
  std::string far_name = bytes;
  const std::uint32_t offset = 1u << 30;  // record 0's name_offset
  std::memcpy(far_name.data() + kHeader + kTableHeader + 16, &offset, 4);
  EXPECT_THAT(Decode(reseal(far_name), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("record 0 is out of bounds")));
}

TEST(KallsymsCacheTest, StoreKeyOnlyFromAHexBuildId) {
  EXPECT_EQ(kKey.StoreKey(), "kallsyms-0123456789abcdef0123456789abcdef01234567-6c00000");
  KallsymsCacheKey k = kKey;
  k.build_id = "../../etc/passwd";
  EXPECT_EQ(k.StoreKey(), "");
  k.build_id = "";
  EXPECT_EQ(k.StoreKey(), "");
  k.build_id = std::string(129, 'a');
  EXPECT_EQ(k.StoreKey(), "");
}

// Holds the kallsyms entries only: the BTF answers Build also keeps in the store
// (btf_answers_test.cpp) are refused, so the counts below are the kallsyms cache's.
class MemoryStore : public KernelCacheStore {
 public:
  Result<std::string> Load(const std::string& key) override {
    if (key.rfind("kallsyms-", 0) != 0) return NotFound("no entry '" + key + "'");
    ++loads;
    auto it = entries.find(key);
    if (it == entries.end()) return NotFound("no entry '" + key + "'");
    return it->second;
  }
  Status Save(const std::string& key, std::string_view bytes) override {
    if (key.rfind("kallsyms-", 0) != 0) return Status::Ok();
    ++saves;
    entries[key] = std::string(bytes);
    return Status::Ok();
  }
  std::map<std::string, std::string> entries;
  int loads = 0, saves = 0;
};

Result<std::unique_ptr<GuestKernel>> BuildWith(FakeGuestKernel& g, KernelCacheStore* store) {
  GuestKernelOptions o;
  o.cache = store;
  const auto vcpus = g.vcpus();
  return GuestKernel::Build(g.mem(), vcpus, o);
}

TEST(KallsymsCacheTest, SecondBuildUsesTheEntryAndGetsTheSameSymbols) {
  FakeGuestKernel g;
  MemoryStore store;
  auto cold = BuildWith(g, &store);
  ASSERT_THAT(cold, IsOk());
  EXPECT_THAT((*cold)->Summary().symbol_cache, StartsWith("miss: no entry"));
  ASSERT_EQ(store.saves, 1);
  ASSERT_EQ(store.entries.size(), 1u);
  EXPECT_THAT(store.entries.begin()->first, StartsWith("kallsyms-" + std::string(FakeGuestKernel::kBuildId)));

  auto warm = BuildWith(g, &store);
  ASSERT_THAT(warm, IsOk());
  EXPECT_EQ((*warm)->Summary().symbol_cache, "hit");
  EXPECT_EQ(store.saves, 1);
  const auto a = (*cold)->symbols().symbols();
  const auto b = (*warm)->symbols().symbols();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].address, b[i].address);
    EXPECT_EQ(a[i].size, b[i].size);
    EXPECT_EQ(a[i].sympos, b[i].sympos);
    EXPECT_EQ(a[i].module, b[i].module);
  }
}

TEST(KallsymsCacheTest, ACorruptEntryIsDecodedAgainAndRewritten) {
  FakeGuestKernel g;
  MemoryStore store;
  ASSERT_THAT(BuildWith(g, &store), IsOk());
  std::string& entry = store.entries.begin()->second;
  entry[entry.size() / 3] ^= 1;
  auto k = BuildWith(g, &store);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->Summary().symbol_cache, HasSubstr("checksum mismatch"));
  EXPECT_EQ((*k)->Summary().vmlinux_symbols, g.expected_symbols().size());
  EXPECT_EQ(store.saves, 2);
  auto again = BuildWith(g, &store);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ((*again)->Summary().symbol_cache, "hit");
}

TEST(KallsymsCacheTest, ChangedTablesInMemoryInvalidateTheEntry) {
  FakeGuestKernel g;
  MemoryStore store;
  ASSERT_THAT(BuildWith(g, &store), IsOk());
  // Same build-id and KASLR offset, other bytes in kallsyms_offsets (as after a guest rewrote
  // them, or an entry made for another kernel that lies about its build-id): not used.
  const std::uint64_t last = g.Symbol("kallsyms_offsets") + 4 * (g.expected_symbols().size() - 1);
  const std::uint32_t v = static_cast<std::uint32_t>(g.mem().Read64(g.Pa(last)));
  g.Write32(last, v - 0x10);
  auto k = BuildWith(g, &store);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->Summary().symbol_cache, HasSubstr("decoded from other kallsyms tables"));
}

// The warm start checks its entry with a digest streamed from guest memory; it must be the one
// the cold start saved, taken over the copied tables.
TEST(KallsymsCacheTest, TheStreamedDigestIsTheDigestOfTheCopiedTables) {
  FakeGuestKernel g;
  auto k = BuildWith(g, nullptr);
  ASSERT_THAT(k, IsOk());
  const KernelMemory kmem(g.mem(), (*k)->paging());
  auto where = KallsymsDecoder::Locate((*k)->vmcoreinfo());
  ASSERT_THAT(where, IsOk());
  auto raw = KallsymsDecoder::ReadRaw(kmem, *where);
  ASSERT_THAT(raw, IsOk());
  auto streamed = KallsymsDecoder::DigestInPlace(kmem, *where);
  ASSERT_THAT(streamed, IsOk());
  EXPECT_EQ(*streamed, raw->Digest());
  // And it sees a change in the last table's last entry.
  const std::uint64_t last = g.Symbol("kallsyms_offsets") + 4 * (g.expected_symbols().size() - 1);
  g.Write32(last, static_cast<std::uint32_t>(g.mem().Read64(g.Pa(last))) - 0x10);
  auto changed = KallsymsDecoder::DigestInPlace(kmem, *where);
  ASSERT_THAT(changed, IsOk());
  EXPECT_NE(*changed, *streamed);
}

TEST(KallsymsCacheTest, WithoutAStoreNothingIsCached) {
  FakeGuestKernel g;
  auto k = BuildWith(g, nullptr);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().symbol_cache, "");
}

}  // namespace
}  // namespace hv::patcher
