#include "patcher/symbol_table.h"

#include <cstring>
#include <memory>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;

// `name` must outlive the symbol (a literal): KernelSymbol only views it.
KernelSymbol Sym(std::string_view name, std::uint64_t address, char type = 't') {
  KernelSymbol s;
  s.name = name;
  s.address = address;
  s.type = type;
  return s;
}

TEST(SymbolTableTest, SymposCountsDuplicatesInKallsymsOrderPerObject) {
  SymbolTable t;
  // Table order, not address order, decides sympos (livepatch walks kallsyms in table order).
  ASSERT_THAT(t.AddObject("", {Sym("show", 0x3000), Sym("other", 0x1000), Sym("show", 0x2000, 'd')}), IsOk());
  ASSERT_THAT(t.AddObject("mod", {Sym("show", 0x9000)}), IsOk());
  auto first = t.Find("", "show", 1);
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ(first->address, 0x3000u);
  auto second = t.Find("", "show", 2);
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->address, 0x2000u);  // every type counts, data too
  EXPECT_EQ(second->sympos, 2u);
  EXPECT_THAT(t.Find("", "show", 0),
              StatusIs(Code::kInvalidArgument,
                       HasSubstr("unresolvable ambiguity for symbol 'show' in object 'vmlinux': 2 occurrences")));
  EXPECT_THAT(t.Find("", "show", 3),
              StatusIs(Code::kNotFound, HasSubstr("symbol position 3 for symbol 'show' in object 'vmlinux'")));
  auto in_mod = t.Find("mod", "show", 0);  // unique within its own object
  ASSERT_THAT(in_mod, IsOk());
  EXPECT_EQ(in_mod->sympos, 1u);
  EXPECT_THAT(t.Find("mod", "other"), StatusIs(Code::kNotFound, HasSubstr("'other' in object 'mod' not found")));
  EXPECT_THAT(t.AddObject("mod", {}), StatusIs(Code::kInvalidArgument, HasSubstr("already")));
  EXPECT_EQ(t.modules(), std::vector<std::string>{"mod"});
  EXPECT_EQ(t.CountIn(""), 3u);
  EXPECT_EQ(t.FindAll("show").size(), 3u);
}

TEST(SymbolTableTest, SizesAreBoundedByTheNextHigherSymbol) {
  SymbolTable t;
  ASSERT_THAT(t.AddObject("", {Sym("a", 0x1000), Sym("alias_a", 0x1000), Sym("b", 0x1040), Sym("c", 0x10c0)},
                          0x1100),
              IsOk());
  EXPECT_EQ(t.Find("", "a")->size, 0x40u);
  EXPECT_EQ(t.Find("", "alias_a")->size, 0x40u);
  EXPECT_EQ(t.Find("", "b")->size, 0x80u);
  EXPECT_EQ(t.Find("", "c")->size, 0x40u);  // the object's end
  auto at = t.FindByAddress(0x1050);
  ASSERT_THAT(at, IsOk());
  EXPECT_EQ(at->name, "b");
  auto alias = t.FindByAddress(0x1000);
  ASSERT_THAT(alias, IsOk());
  EXPECT_EQ(alias->name, "a");  // the first alias in kallsyms order
  EXPECT_THAT(t.FindByAddress(0x2000), StatusIs(Code::kNotFound, HasSubstr("0x2000")));
  EXPECT_THAT(t.FindByAddress(0x10), StatusIs(Code::kNotFound, HasSubstr("0x10")));
}

TEST(SymbolTableTest, ManyIdenticalNamesStayLinear) {
  // A hostile guest can give every symbol the same name: sympos must not go quadratic.
  SymbolList v;
  for (std::uint64_t i = 0; i < 200000; ++i) v.Add("same", 0x1000 + i, 't');
  SymbolTable t;
  ASSERT_THAT(t.AddObject("", std::move(v)), IsOk());
  auto last = t.Find("", "same", 200000);
  ASSERT_THAT(last, IsOk());
  EXPECT_EQ(last->address, 0x1000u + 199999u);
  EXPECT_EQ(last->sympos, 200000u);
  EXPECT_THAT(t.Find("", "same", 0), StatusIs(Code::kInvalidArgument, HasSubstr("200000 occurrences")));
}

TEST(SymbolTableTest, PerCpuSizesStopBelowTheKernelImage) {
  SymbolTable t;
  ASSERT_THAT(t.AddObject("", {Sym("__per_cpu_start", 0, 'A'), Sym("__per_cpu_end", 0x34000, 'A'),
                               Sym("_stext", 0xffffffff81000000ull, 'T'), Sym("f", 0xffffffff81000040ull)}),
              IsOk());
  EXPECT_EQ(t.Find("", "__per_cpu_start")->size, 0x34000u);
  EXPECT_EQ(t.Find("", "__per_cpu_end")->size, 0u);
  EXPECT_THAT(t.FindByAddress(0xff11000012345678ull), StatusIs(Code::kNotFound, HasSubstr("no symbol")));
  EXPECT_EQ(t.FindByAddress(0xffffffff81000010ull)->name, "_stext");
}

TEST(SymbolTableTest, ParsesProcKallsymsWithModules) {
  auto t = ParseKallsymsText(
      "0000000000000000 A fixed_percpu_data\n"
      "ffffffff81000000 T _stext\n"
      "ffffffff81000100 t dup\n"
      "ffffffff81000200 t dup\n"
      "ffffffffc0001000 t vp_notify\t[virtio_pci]\n"
      "ffffffffc0002000 T virtio_break_device\t[virtio]\n"
      "ffffffffc0003000 t bpf_prog_6deef7357e7b4530_sd_devices\t[bpf]\n"
      "ffffffffc0004000 t ftrace_trampoline\t[__builtin__ftrace]\n");
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->size(), 6u);
  EXPECT_EQ(t->modules(), (std::vector<std::string>{"virtio_pci", "virtio"}));
  auto dup = t->Find("", "dup", 2);
  ASSERT_THAT(dup, IsOk());
  EXPECT_EQ(dup->address, 0xffffffff81000200u);
  EXPECT_EQ(t->Find("", "fixed_percpu_data")->type, 'A');
}

TEST(SymbolTableTest, RejectsMalformedKallsymsLines) {
  EXPECT_THAT(ParseKallsymsText("ffffffff81000000 T ok\nzzzz T bad\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("line 2 'zzzz T bad': address is not hex")));
  EXPECT_THAT(ParseKallsymsText("ffffffff81000000 T\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("no type letter")));
  EXPECT_THAT(ParseKallsymsText("ffffffff81000000 T x\tvirtio\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("module is not in brackets")));
  EXPECT_THAT(ParseKallsymsText("ffffffffffffffffff T x\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("no address")));
}

TEST(SymbolTableTest, SystemMapGetsTheKaslrOffsetExceptPerCpu) {
  auto t = ParseSystemMap(
      "0000000000000000 D __per_cpu_start\n"
      "000000000001fb80 D current_task\n"
      "ffffffff81000000 T _stext\n", 0x1a200000);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->Find("", "current_task")->address, 0x1fb80u);
  EXPECT_EQ(t->Find("", "_stext")->address, 0xffffffff9b200000u);
  EXPECT_THAT(ParseSystemMap("ffffffff81000000 T x\t[mod]\n", 0),
              StatusIs(Code::kInvalidArgument, HasSubstr("a System.map has no modules")));
}

}  // namespace
// Objects added apart (vmlinux from the cache, modules later) answer as one table would.
TEST(SymbolTableTest, ObjectsAddedApartAnswerAsOneTable) {
  SymbolTable apart, together;
  ASSERT_THAT(apart.AddObject("", {Sym("f", 0x1000), Sym("g", 0x2000)}, 0x3000), IsOk());
  ASSERT_THAT(apart.AddObject("mod", {Sym("f", 0x1000), Sym("h", 0x2800), Sym("k", 0x5000)}, 0x5100), IsOk());
  std::vector<SymbolTable::ObjectSymbols> both;
  both.push_back({"", {Sym("f", 0x1000), Sym("g", 0x2000)}, 0x3000});
  both.push_back({"mod", {Sym("f", 0x1000), Sym("h", 0x2800), Sym("k", 0x5000)}, 0x5100});
  ASSERT_THAT(together.AddObjects(std::move(both)), IsOk());
  for (const SymbolTable* t : {&apart, &together}) {
    ASSERT_EQ(t->size(), 5u);
    EXPECT_EQ(t->at(2).module, "mod");
    EXPECT_EQ(t->FindByAddress(0x1000)->module, "");      // vmlinux wins at one address
    EXPECT_EQ(t->FindByAddress(0x2810)->name, "g");       // vmlinux wins where both cover
    EXPECT_EQ(t->FindByAddress(0x5010)->name, "k");       // only the module covers
    const auto all = t->FindAll("f");
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].module, "");
    EXPECT_EQ(all[1].module, "mod");
    EXPECT_EQ(t->Find("mod", "f")->sympos, 1u);
    EXPECT_EQ(t->Find("mod", "h")->size, 0x2800u);  // up to k
    EXPECT_EQ(t->Find("mod", "k")->size, 0x100u);   // up to the module's end
    EXPECT_THAT(t->Find("mod", "g"), StatusIs(Code::kNotFound, HasSubstr("not found")));
  }
  EXPECT_THAT(apart.AddObject("mod", {}), StatusIs(Code::kInvalidArgument, HasSubstr("already")));
}

// An image is untrusted: whatever it says, lookups stay in bounds and end.
TEST(SymbolTableTest, FromImageChecksEveryOffsetAndIndex) {
  SymbolTable t;
  ASSERT_THAT(t.AddObject("", {Sym("a", 0x1000), Sym("b", 0x2000), Sym("a", 0x3000)}), IsOk());
  Result<std::string> image = t.Image();
  ASSERT_THAT(image, IsOk());
  auto load = [](std::string bytes) {
    auto held = std::make_shared<const std::string>(std::move(bytes));
    return SymbolTable::FromImage(*held, held);
  };
  auto round = load(*image);
  ASSERT_THAT(round, IsOk());
  EXPECT_EQ(round->Find("", "a", 2)->address, 0x3000u);
  EXPECT_EQ(round->FindByAddress(0x2004)->name, "b");

  // Header: magic(8) record_size(4) reserved(4) probe(8) records(8) name_bytes(8) slots(8) reserved(8).
  constexpr std::size_t kHeader = 56, kRecords = kHeader, kNames = kRecords + 3 * 32;
  const std::size_t slots_at = kNames + 8, slot_count = 16;
  const std::size_t next_at = slots_at + 4 * slot_count, by_address_at = next_at + 16;
  auto patched = [&](std::size_t at, const void* v, std::size_t n) {
    std::string b = *image;
    std::memcpy(b.data() + at, v, n);
    return b;
  };
  const std::uint32_t far = 1000, self = 0, two = 2;
  EXPECT_THAT(load(image->substr(1)), StatusIs(Code::kInvalidArgument, HasSubstr("image")));
  EXPECT_THAT(load(patched(0, "HVSYMTB9", 8)), StatusIs(Code::kInvalidArgument, HasSubstr("magic")));
  EXPECT_THAT(load(*image + std::string(8, '\0')), StatusIs(Code::kInvalidArgument, HasSubstr("where the counts give")));
  EXPECT_THAT(load(patched(kRecords + 16, &far, 4)), StatusIs(Code::kInvalidArgument, HasSubstr("record 0 is out of bounds")));
  EXPECT_THAT(load(patched(next_at, &self, 4)), StatusIs(Code::kInvalidArgument, HasSubstr("broken name link")));
  EXPECT_THAT(load(patched(by_address_at, &two, 4)), StatusIs(Code::kInvalidArgument, HasSubstr("address order")));
  std::string full = *image;
  for (std::size_t k = 0; k < slot_count; ++k) std::memcpy(full.data() + slots_at + 4 * k, &self, 4);
  EXPECT_THAT(load(full), StatusIs(Code::kInvalidArgument, HasSubstr("no free slot")));
  EXPECT_THAT(load(patched(slots_at, &far, 4)), StatusIs(Code::kInvalidArgument, HasSubstr("name slot out of bounds")));
  // A table with modules has no image (the cache holds vmlinux alone).
  ASSERT_THAT(t.AddObject("mod", {Sym("m", 0x9000)}), IsOk());
  EXPECT_THAT(t.Image(), StatusIs(Code::kFailedPrecondition, HasSubstr("vmlinux alone")));
}

}  // namespace hv::patcher
