// The warm-start cache of decoded kallsyms: the entry codec against hostile bytes, and
// GuestKernel::Build using, refusing and rewriting entries on a fake guest.
#include "patcher/kallsyms_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "patcher/guest_kernel.h"
#include "status_matchers.h"
#include "tests/unit/patcher/fake_guest_kernel.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::FakeGuestKernel;

std::vector<KernelSymbol> Sample() {
  std::vector<KernelSymbol> v(3);
  v[0].name = "_stext";
  v[0].address = 0xffffffff81000000;
  v[0].type = 'T';
  v[1].name = "init_task";
  v[1].address = 0xffffffff82a0c940;
  v[1].type = 'D';
  v[2].name = std::string(300, 'x');
  v[2].address = 0xffffffffc0001000;
  v[2].type = 't';
  return v;
}

const KallsymsCacheKey kKey{"0123456789abcdef0123456789abcdef01234567", 0x6c00000, 0x1122334455667788};

TEST(KallsymsCacheTest, RoundTripsNamesAddressesAndTypes) {
  const auto want = Sample();
  auto got = DecodeKallsymsCache(EncodeKallsymsCache(kKey, want), kKey);
  ASSERT_THAT(got, IsOk());
  ASSERT_EQ(got->size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ((*got)[i].name, want[i].name);
    EXPECT_EQ((*got)[i].address, want[i].address);
    EXPECT_EQ((*got)[i].type, want[i].type);
  }
}

TEST(KallsymsCacheTest, RefusesAnEntryForAnotherKernelOrOtherTables) {
  const std::string bytes = EncodeKallsymsCache(kKey, Sample());
  KallsymsCacheKey k = kKey;
  k.build_id[0] = 'f';
  EXPECT_THAT(DecodeKallsymsCache(bytes, k), StatusIs(Code::kFailedPrecondition, HasSubstr("build-id")));
  k = kKey;
  k.kaslr_offset += 0x200000;  // a reboot moved the kernel
  EXPECT_THAT(DecodeKallsymsCache(bytes, k), StatusIs(Code::kFailedPrecondition, HasSubstr("KASLR offset 0x6c00000")));
  k = kKey;
  k.tables_digest ^= 1;
  EXPECT_THAT(DecodeKallsymsCache(bytes, k), StatusIs(Code::kFailedPrecondition, HasSubstr("other kallsyms tables")));
}

TEST(KallsymsCacheTest, RefusesCorruptTruncatedAndForeignFiles) {
  const std::string bytes = EncodeKallsymsCache(kKey, Sample());
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  EXPECT_THAT(DecodeKallsymsCache(flipped, kKey), StatusIs(Code::kInvalidArgument, HasSubstr("checksum mismatch")));
  EXPECT_THAT(DecodeKallsymsCache(bytes.substr(0, bytes.size() - 20), kKey),
              StatusIs(Code::kInvalidArgument, HasSubstr("checksum mismatch")));
  EXPECT_THAT(DecodeKallsymsCache("", kKey), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
  EXPECT_THAT(DecodeKallsymsCache("{\"patches\": []}", kKey), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
}

// A file that passes the checksum but lies about its lengths (a forged entry) still cannot make
// the decoder read past its end or allocate without bound.
TEST(KallsymsCacheTest, BoundsEveryLengthOfAForgedEntry) {
  std::vector<KernelSymbol> one(1);
  one[0].name = "a";
  one[0].type = 'T';
  std::string bytes = EncodeKallsymsCache(kKey, one);
  auto reseal = [](std::string b) {
    b.resize(b.size() - 8);
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : b) h = (h ^ c) * 0x100000001b3ull;
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>((h >> (8 * i)) & 0xff));
    return b;
  };
  const std::size_t count_at = 8 + 2 + kKey.build_id.size() + 8 + 8;
  std::string many = bytes;
  many[count_at + 3] = 0x7f;  // ~2^30 symbols
  EXPECT_THAT(DecodeKallsymsCache(reseal(many), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("exceed the limit")));
  std::string two = bytes;
  two[count_at] = 2;  // one more symbol than the file holds
  EXPECT_THAT(DecodeKallsymsCache(reseal(two), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("symbol 1 is truncated")));
  std::string empty_name = bytes;
  empty_name[count_at + 4 + 8 + 1] = 0;  // name length 0
  EXPECT_THAT(DecodeKallsymsCache(reseal(empty_name), kKey),
              StatusIs(Code::kInvalidArgument, HasSubstr("bad name length")));
  std::string trailing = bytes;
  trailing.insert(trailing.size() - 8, "zz");
  EXPECT_THAT(DecodeKallsymsCache(reseal(trailing), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("trailing bytes")));
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
  const auto& a = (*cold)->symbols().symbols();
  const auto& b = (*warm)->symbols().symbols();
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

TEST(KallsymsCacheTest, WithoutAStoreNothingIsCached) {
  FakeGuestKernel g;
  auto k = BuildWith(g, nullptr);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().symbol_cache, "");
}

}  // namespace
}  // namespace hv::patcher
