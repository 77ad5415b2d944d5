// The warm start of the guest kernel's BTF: the answers codec against hostile bytes, KernelBtf
// recording and replaying exactly the parse's Results (errors too) with a lazy parse for a
// question the record lacks, and GuestKernel::Build using, refusing and rewriting entries on a
// fake guest.
#include "patcher/btf_answers.h"

#include <bpf/btf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <map>

#include "patcher/guest_kernel.h"
#include "patcher/kernel_btf.h"
#include "status_matchers.h"
#include "tests/unit/patcher/fake_guest_kernel.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::FakeGuestKernel;

// struct outer { int a; struct { int hidden; }; struct inner in; int bits:3; } with
// struct inner { long x; long sp; }, as in kernel_btf_test.cpp.
std::vector<std::uint8_t> SampleBtf() {
  struct btf* b = btf__new_empty();
  const int i32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  const int i64 = btf__add_int(b, "long", 8, BTF_INT_SIGNED);
  const int inner = btf__add_struct(b, "inner", 16);
  btf__add_field(b, "x", i64, 0, 0);
  btf__add_field(b, "sp", i64, 64, 0);
  const int anon = btf__add_struct(b, nullptr, 4);
  btf__add_field(b, "hidden", i32, 0, 0);
  btf__add_struct(b, "outer", 48);
  btf__add_field(b, "a", i32, 0, 0);
  btf__add_field(b, nullptr, anon, 32, 0);
  btf__add_field(b, "in", inner, 64, 0);
  btf__add_field(b, "bits", i32, 192, 3);
  std::uint32_t size = 0;
  const auto* raw = static_cast<const std::uint8_t*>(btf__raw_data(b, &size));
  std::vector<std::uint8_t> out(raw, raw + size);
  btf__free(b);
  return out;
}

// Every kind of question, with values and each kind of error the parse gives.
std::string AskAll(const KernelBtf& btf) {
  std::string out;
  auto put = [&](const std::string& q, const auto& r) {
    out += q + " -> ";
    if (r.ok()) {
      if constexpr (std::is_same_v<std::decay_t<decltype(*r)>, std::uint64_t>) {
        out += std::to_string(*r);
      } else {
        for (const auto& m : *r) out += m.name + "@" + std::to_string(m.offset) + "/" + std::to_string(m.size) + " ";
      }
    } else {
      out += std::string(CodeName(r.status().code())) + " '" + r.status().message() + "' hint '" +
             r.status().hint() + "'";
    }
    out += "\n";
  };
  put("offset outer.in.sp", btf.Offset("outer", "in.sp"));
  put("offset outer.hidden", btf.Offset("outer", "hidden"));
  put("offset outer.bits", btf.Offset("outer", "bits"));          // kUnimplemented
  put("offset task_struct.pid", btf.Offset("task_struct", "pid"));  // kNotFound
  put("offset outer.a.b", btf.Offset("outer", "a.b"));
  put("size outer.in", btf.MemberSize("outer", "in"));
  put("size outer.nope", btf.MemberSize("outer", "nope"));
  put("type size outer", btf.TypeSize("outer"));
  put("type size nope", btf.TypeSize("nope"));
  put("members inner", btf.Members("inner"));
  put("members nope", btf.Members("nope"));
  out += "has outer.in.x " + std::to_string(btf.HasMember("outer", "in.x")) + "\n";
  out += "has outer.zz " + std::to_string(btf.HasMember("outer", "zz")) + "\n";
  out += "types " + std::to_string(btf.type_count()) + "\n";
  return out;
}

const BtfAnswersKey kKey{"0123456789abcdef0123456789abcdef01234567", 0x3f2a10};

// A loader that counts its calls and parses `blob` (or fails when `blob` is empty).
KernelBtf::Loader CountingLoader(const std::vector<std::uint8_t>* blob, int* calls) {
  return [blob, calls]() -> Result<KernelBtf> {
    ++*calls;
    if (blob->empty()) return InvalidArgument("reading VA 0xffffffff82000000: page not present");
    return KernelBtf::Parse(*blob);
  };
}

TEST(BtfAnswersTest, ReplayGivesTheParsesResultsWithoutParsing) {
  const auto blob = SampleBtf();
  auto parsed = KernelBtf::Parse(blob);
  ASSERT_THAT(parsed, IsOk());
  const std::string plain = AskAll(*parsed);  // not recording: today's answers
  EXPECT_THAT(plain, HasSubstr("offset outer.in.sp -> 16\n"));
  EXPECT_THAT(plain, HasSubstr("unimplemented 'BTF member 'outer.bits' is a bitfield'"));
  ASSERT_THAT(parsed->recorded().answers, ::testing::IsEmpty());

  parsed->Record();
  EXPECT_EQ(AskAll(*parsed), plain);
  const KernelBtf::Recorded rec = parsed->recorded();
  EXPECT_EQ(rec.answers.size(), 14u);  // HasMember shares Offset's question
  EXPECT_EQ(rec.generation, 14u);
  EXPECT_TRUE(parsed->HasUnsavedAnswers());

  auto decoded = DecodeBtfAnswers(EncodeBtfAnswers(kKey, rec.answers), kKey);
  ASSERT_THAT(decoded, IsOk());
  EXPECT_EQ(*decoded, rec.answers);
  int loads = 0;
  KernelBtf replay = KernelBtf::FromAnswers(std::move(*decoded), CountingLoader(&blob, &loads));
  EXPECT_EQ(AskAll(replay), plain);
  EXPECT_EQ(loads, 0);
  EXPECT_FALSE(replay.parsed());
  EXPECT_FALSE(replay.HasUnsavedAnswers());
}

TEST(BtfAnswersTest, AQuestionNotInTheRecordIsParsedOnceAndRecorded) {
  const auto blob = SampleBtf();
  BtfAnswers answers;
  answers[{BtfQuestionKind::kOffset, "outer", "in.sp"}] = BtfAnswer{Code::kOk, "", "", 16, {}};
  int loads = 0;
  KernelBtf btf = KernelBtf::FromAnswers(answers, CountingLoader(&blob, &loads));
  EXPECT_EQ(btf.Offset("outer", "in.sp").value(), 16u);
  EXPECT_EQ(loads, 0);
  EXPECT_EQ(btf.TypeSize("outer").value(), 48u);
  EXPECT_EQ(loads, 1);
  EXPECT_TRUE(btf.parsed());
  EXPECT_THAT(btf.Offset("outer", "in.zz"), StatusIs(Code::kNotFound, HasSubstr("'outer.in' has no member 'zz'")));
  EXPECT_EQ(loads, 1);
  const KernelBtf::Recorded rec = btf.recorded();
  EXPECT_EQ(rec.answers.size(), 3u);
  EXPECT_EQ(rec.generation, 2u);
  EXPECT_EQ(rec.answers.at({BtfQuestionKind::kTypeSize, "outer", ""}).value, 48u);
  EXPECT_EQ(rec.answers.at({BtfQuestionKind::kOffset, "outer", "in.zz"}).code, Code::kNotFound);
  EXPECT_TRUE(btf.HasUnsavedAnswers());
  btf.MarkSaved(rec.generation);
  EXPECT_FALSE(btf.HasUnsavedAnswers());
  EXPECT_EQ(btf.MemberSize("outer", "in").value(), 16u);
  EXPECT_TRUE(btf.HasUnsavedAnswers());
}

TEST(BtfAnswersTest, AFailedLazyParseGivesItsErrorAndRecordsNothing) {
  const std::vector<std::uint8_t> none;
  int loads = 0;
  KernelBtf btf = KernelBtf::FromAnswers({}, CountingLoader(&none, &loads));
  EXPECT_THAT(btf.Offset("outer", "a"), StatusIs(Code::kInvalidArgument, StartsWith("reading BTF: reading VA")));
  EXPECT_FALSE(btf.HasMember("outer", "a"));
  EXPECT_EQ(btf.type_count(), 0u);
  EXPECT_THAT(btf.Members("inner"), StatusIs(Code::kInvalidArgument, HasSubstr("page not present")));
  EXPECT_EQ(loads, 1);  // tried once
  EXPECT_THAT(btf.recorded().answers, ::testing::IsEmpty());
  EXPECT_FALSE(btf.HasUnsavedAnswers());
}

TEST(BtfAnswersTest, RefusesAnEntryForAnotherBuildOrBtfSize) {
  BtfAnswers answers;
  answers[{BtfQuestionKind::kTypeSize, "task_struct", ""}] = BtfAnswer{Code::kOk, "", "", 9792, {}};
  const std::string bytes = EncodeBtfAnswers(kKey, answers);
  BtfAnswersKey k = kKey;
  k.build_id[0] = 'f';
  EXPECT_THAT(DecodeBtfAnswers(bytes, k), StatusIs(Code::kFailedPrecondition, HasSubstr("for build-id '0123")));
  k = kKey;
  k.btf_bytes += 4;
  EXPECT_THAT(DecodeBtfAnswers(bytes, k),
              StatusIs(Code::kFailedPrecondition, HasSubstr("for a BTF of 4139536 bytes, not 4139540")));
}

TEST(BtfAnswersTest, RefusesCorruptTruncatedOversizedAndForeignFiles) {
  BtfAnswers answers;
  answers[{BtfQuestionKind::kMembers, "inner", ""}] = BtfAnswer{Code::kOk, "", "", 0, {{"x", 0, 8}, {"sp", 8, 8}}};
  answers[{BtfQuestionKind::kOffset, "a", "b"}] = BtfAnswer{Code::kNotFound, "BTF has no struct", "a hint", 0, {}};
  const std::string bytes = EncodeBtfAnswers(kKey, answers);
  ASSERT_THAT(DecodeBtfAnswers(bytes, kKey), IsOk());
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  EXPECT_THAT(DecodeBtfAnswers(flipped, kKey), StatusIs(Code::kInvalidArgument, HasSubstr("checksum mismatch")));
  EXPECT_THAT(DecodeBtfAnswers(bytes.substr(0, bytes.size() - 9), kKey),
              StatusIs(Code::kInvalidArgument, HasSubstr("checksum mismatch")));
  EXPECT_THAT(DecodeBtfAnswers(bytes.substr(0, 10), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
  EXPECT_THAT(DecodeBtfAnswers("", kKey), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
  EXPECT_THAT(DecodeBtfAnswers(std::string(kMaxBtfAnswersBytes + 1, 'H'), kKey),
              StatusIs(Code::kInvalidArgument, HasSubstr("exceed the limit of 1048576")));
  EXPECT_THAT(DecodeBtfAnswers("HVKSYMC1 a kallsyms entry", kKey), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
}

// A file that passes the checksum but lies (a forged entry) still cannot make the decoder read
// past its end, allocate without bound or produce an unknown code.
TEST(BtfAnswersTest, BoundsEveryFieldOfAForgedEntry) {
  BtfAnswers one;
  one[{BtfQuestionKind::kOffset, "t", "p"}] = BtfAnswer{Code::kOk, "", "", 8, {}};
  const std::string bytes = EncodeBtfAnswers(kKey, one);
  auto reseal = [](std::string b) {
    b.resize(b.size() - 8);
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : b) h = (h ^ c) * 0x100000001b3ull;
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>((h >> (8 * i)) & 0xff));
    return b;
  };
  const std::size_t count_at = 8 + 2 + kKey.build_id.size() + 8;
  const std::size_t kind_at = count_at + 4;
  const std::size_t code_at = kind_at + 1 + 3 + 3;
  std::string many = bytes;
  many[count_at + 3] = 0x7f;
  EXPECT_THAT(DecodeBtfAnswers(reseal(many), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("exceed the limit")));
  std::string two = bytes;
  two[count_at] = 2;
  EXPECT_THAT(DecodeBtfAnswers(reseal(two), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("answer 1 is truncated")));
  std::string kind = bytes;
  kind[kind_at] = 9;
  EXPECT_THAT(DecodeBtfAnswers(reseal(kind), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("unknown question kind 9")));
  std::string code = bytes;
  code[code_at] = 42;
  EXPECT_THAT(DecodeBtfAnswers(reseal(code), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("unknown error code 42")));
  std::string long_type = bytes;
  long_type[kind_at + 2] = 0x7f;  // type length 0x7f01
  EXPECT_THAT(DecodeBtfAnswers(reseal(long_type), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("bad length")));
  std::string trailing = bytes;
  trailing.insert(trailing.size() - 8, "zz");
  EXPECT_THAT(DecodeBtfAnswers(reseal(trailing), kKey), StatusIs(Code::kInvalidArgument, HasSubstr("trailing bytes")));
}

TEST(BtfAnswersTest, StoreKeyOnlyFromAHexBuildId) {
  EXPECT_EQ(kKey.StoreKey(), "btf-0123456789abcdef0123456789abcdef01234567-3f2a10");
  BtfAnswersKey k = kKey;
  k.build_id = "../x";
  EXPECT_EQ(k.StoreKey(), "");
  k.build_id = "";
  EXPECT_EQ(k.StoreKey(), "");
}

class MemoryStore : public KernelCacheStore {
 public:
  Result<std::string> Load(const std::string& key) override {
    ++loads;
    auto it = entries.find(key);
    if (it == entries.end()) return NotFound("no entry '" + key + "'");
    return it->second;
  }
  Status Save(const std::string& key, std::string_view bytes) override {
    ++saves;
    if (read_only) return ErrnoError("creating '/state/cache'", EROFS);
    entries[key] = std::string(bytes);
    return Status::Ok();
  }
  std::string& btf_entry() {
    for (auto& [k, v] : entries) {
      if (k.rfind("btf-", 0) == 0) return v;
    }
    static std::string none;
    return none;
  }
  std::map<std::string, std::string> entries;
  int loads = 0, saves = 0;
  bool read_only = false;
};

// Counts the reads that go through it: the memory given as memory_after_build.
class CountingMemory : public vmm::GuestPhysMemory {
 public:
  explicit CountingMemory(const vmm::GuestPhysMemory& mem) : mem_(mem) {}
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override {
    ++reads;
    return mem_.ReadPhys(gpa, out);
  }
  std::vector<vmm::PhysRange> RamRanges() const override { return mem_.RamRanges(); }
  mutable int reads = 0;

 private:
  const vmm::GuestPhysMemory& mem_;
};

Result<std::unique_ptr<GuestKernel>> BuildWith(FakeGuestKernel& g, KernelCacheStore* store,
                                               const vmm::GuestPhysMemory* later = nullptr) {
  GuestKernelOptions o;
  o.cache = store;
  o.memory_after_build = later;
  const auto vcpus = g.vcpus();
  return GuestKernel::Build(g.mem(), vcpus, o);
}

void ExpectSameLayouts(const GuestKernel& a, const GuestKernel& b) {
  const TaskLayout& x = a.task_layout();
  const TaskLayout& y = b.task_layout();
  EXPECT_EQ(x.tasks, y.tasks);
  EXPECT_EQ(x.pid, y.pid);
  EXPECT_EQ(x.comm, y.comm);
  EXPECT_EQ(x.thread_sp, y.thread_sp);
  EXPECT_EQ(x.thread_size, y.thread_size);
  EXPECT_EQ(x.state_size, y.state_size);
  ASSERT_EQ(a.modules().size(), b.modules().size());
  for (std::size_t i = 0; i < a.modules().size(); ++i) {
    EXPECT_EQ(a.modules()[i].name, b.modules()[i].name);
    EXPECT_EQ(a.modules()[i].core_base, b.modules()[i].core_base);
    EXPECT_EQ(a.modules()[i].symbols.size(), b.modules()[i].symbols.size());
  }
  EXPECT_EQ(a.Summary().tasks, b.Summary().tasks);
  EXPECT_EQ(a.Summary().thread_size, b.Summary().thread_size);
}

TEST(BtfAnswersTest, SecondBuildAnswersFromTheEntryWithoutReadingBtf) {
  FakeGuestKernel g;
  MemoryStore store;
  auto cold = BuildWith(g, &store);
  ASSERT_THAT(cold, IsOk());
  EXPECT_THAT((*cold)->Summary().btf_cache, StartsWith("miss: no entry 'btf-" + std::string(FakeGuestKernel::kBuildId)));
  EXPECT_TRUE((*cold)->btf().parsed());
  const std::string key = "btf-" + std::string(FakeGuestKernel::kBuildId) + "-" +
                          Hex(g.btf_size()).substr(2);
  ASSERT_EQ(store.entries.count(key), 1u);
  EXPECT_EQ(store.saves, 2);  // kallsyms and BTF

  // The BTF in guest memory is garbage now: a build that touched it would fail.
  std::vector<std::uint8_t> junk(g.btf_size(), 0x5a);
  g.mem().Write(g.btf_pa(), junk);
  auto warm = BuildWith(g, &store);
  ASSERT_THAT(warm, IsOk());
  EXPECT_EQ((*warm)->Summary().btf_cache, "hit");
  EXPECT_FALSE((*warm)->btf().parsed());
  EXPECT_EQ(store.saves, 2);  // nothing new to save
  ExpectSameLayouts(**cold, **warm);
}

TEST(BtfAnswersTest, ALaterQuestionParsesThroughMemoryAfterBuildAndIsSaved) {
  FakeGuestKernel g;
  MemoryStore store;
  ASSERT_THAT(BuildWith(g, &store), IsOk());
  const BtfAnswersKey key{FakeGuestKernel::kBuildId, g.btf_size()};
  auto entry = DecodeBtfAnswers(store.btf_entry(), key);
  ASSERT_THAT(entry, IsOk());
  const BtfQuestion later{BtfQuestionKind::kOffset, "thread_struct", "sp"};
  ASSERT_EQ(entry->count(later), 0u) << "Build asks this itself: pick another question";

  CountingMemory after(g.mem());
  auto warm = BuildWith(g, &store, &after);
  ASSERT_THAT(warm, IsOk());
  ASSERT_EQ((*warm)->Summary().btf_cache, "hit");
  EXPECT_EQ(after.reads, 0);
  GuestKernel& k = **warm;
  EXPECT_THAT(k.btf().Offset("thread_struct", "sp"), IsOk());  // a commit's question, after Build
  EXPECT_EQ(k.btf().Offset("thread_struct", "sp").value(), 8u);
  EXPECT_GT(after.reads, 0);
  EXPECT_TRUE(k.btf().parsed());
  ASSERT_THAT(k.SaveBtfAnswers(store), IsOk());
  EXPECT_EQ(store.saves, 3);
  ASSERT_THAT(k.SaveBtfAnswers(store), IsOk());
  EXPECT_EQ(store.saves, 3);  // nothing new

  entry = DecodeBtfAnswers(store.btf_entry(), key);
  ASSERT_THAT(entry, IsOk());
  EXPECT_EQ(entry->at(later).value, 8u);
  std::vector<std::uint8_t> junk(g.btf_size(), 0x5a);
  g.mem().Write(g.btf_pa(), junk);
  auto third = BuildWith(g, &store);
  ASSERT_THAT(third, IsOk());
  EXPECT_EQ((*third)->btf().Offset("thread_struct", "sp").value(), 8u);
  EXPECT_FALSE((*third)->btf().parsed());
}

TEST(BtfAnswersTest, ABadEntryIsParsedAgainWithTheReasonAndRewritten) {
  const BtfAnswersKey key{FakeGuestKernel::kBuildId, 0};
  struct Case {
    const char* name;
    std::function<void(std::string&, std::uint64_t)> spoil;
    const char* reason;
  };
  const std::vector<Case> cases = {
      {"wrong build-id",
       [&](std::string& e, std::uint64_t size) {
         e = EncodeBtfAnswers({"00" + std::string(FakeGuestKernel::kBuildId).substr(2), size}, {});
       },
       "miss: BTF answers entry is for build-id '00"},
      {"wrong size",
       [&](std::string& e, std::uint64_t size) { e = EncodeBtfAnswers({FakeGuestKernel::kBuildId, size + 8}, {}); },
       "miss: BTF answers entry is for a BTF of"},
      {"corrupt", [](std::string& e, std::uint64_t) { e[e.size() / 2] ^= 1; }, "miss: BTF answers entry: checksum"},
      {"truncated", [](std::string& e, std::uint64_t) { e.resize(e.size() - 3); }, "miss: BTF answers entry: checksum"},
      {"oversized", [](std::string& e, std::uint64_t) { e.append(kMaxBtfAnswersBytes, 'x'); },
       "miss: BTF answers entry: 1"},
  };
  (void)key;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FakeGuestKernel g;
    MemoryStore store;
    auto cold = BuildWith(g, &store);
    ASSERT_THAT(cold, IsOk());
    c.spoil(store.btf_entry(), g.btf_size());
    auto k = BuildWith(g, &store);
    ASSERT_THAT(k, IsOk());
    EXPECT_THAT((*k)->Summary().btf_cache, StartsWith(c.reason));
    EXPECT_TRUE((*k)->btf().parsed());
    ExpectSameLayouts(**cold, **k);
    auto again = BuildWith(g, &store);
    ASSERT_THAT(again, IsOk());
    EXPECT_EQ((*again)->Summary().btf_cache, "hit");
  }
}

TEST(BtfAnswersTest, AReadOnlyStoreOnlyCostsAParse) {
  FakeGuestKernel g;
  MemoryStore store;
  store.read_only = true;
  auto k = BuildWith(g, &store);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->Summary().btf_cache, HasSubstr("(not saved: creating '/state/cache': Read-only file system)"));
  EXPECT_THAT((*k)->SaveBtfAnswers(store), StatusIs(Code::kIo, HasSubstr("Read-only")));
}

TEST(BtfAnswersTest, WithoutAStoreNothingIsRecorded) {
  FakeGuestKernel g;
  auto k = BuildWith(g, nullptr);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().btf_cache, "");
  EXPECT_FALSE((*k)->btf().recording());
  EXPECT_THAT((*k)->btf().recorded().answers, ::testing::IsEmpty());
  EXPECT_FALSE((*k)->btf().HasUnsavedAnswers());
  MemoryStore store;
  EXPECT_THAT((*k)->SaveBtfAnswers(store), IsOk());
  EXPECT_EQ(store.saves, 0);
}

}  // namespace
}  // namespace hv::patcher
