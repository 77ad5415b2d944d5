// The module writer on a compared pair of small objects: the klp tables, the re-emitted
// relocations (exported by name, others as .klp.sym, carried ones locally), __mcount_loc and the
// run-pre record of the replaced function.
#include "builder/livepatch_writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>

#include "status_matchers.h"

namespace hv::builder {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

KernelObject ReadObject(const std::string& name) {
  const char* dir = std::getenv("HVPATCH_BUILDER_OBJECTS");
  std::ifstream f(std::string(dir ? dir : ".") + "/" + name, std::ios::binary);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto o = KernelObject::Read(bytes, name);
  EXPECT_THAT(o, IsOk());
  return std::move(*o);
}

Result<LivepatchSources> Write(const std::string& pair, const KernelSymbols& symbols) {
  ComparedObject c{pair + ".o", ReadObject(pair + ".ORIG.o"), ReadObject(pair + ".PATCHED.o"), {}};
  auto d = CompareObjects(c.orig, c.patched);
  EXPECT_THAT(d, IsOk());
  c.diff = std::move(*d);
  std::vector<ComparedObject> objects;
  objects.push_back(std::move(c));
  return WriteLivepatchSources("hvp_test", objects, symbols);
}

const KernelSymbols kSymbols = KernelSymbols::Parse("0x1\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n"
                                                    "0x2\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n", "");

TEST(LivepatchWriter, KlpTablesAndRelocations) {
  auto s = Write("static_data", kSymbols);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(s->klp_c, HasSubstr("{ .old_name = \"scaled\", .new_func = __hvp_fn_0, .old_sympos = 0 },"));
  EXPECT_THAT(s->klp_c, HasSubstr("MODULE_INFO(livepatch, \"Y\");"));
  EXPECT_THAT(s->klp_c, HasSubstr("return klp_enable_patch(&hvp_patch);"));
  EXPECT_THAT(s->kbuild, HasSubstr("hvp_test-y := hvp_klp.o hvp_code.o"));
  // Exported: by name. The unchanged static clone: the running kernel's, through livepatch.
  EXPECT_THAT(s->code_s, HasSubstr("\t.reloc ., R_X86_64_PLT32, \"__fentry__\"-4\n"));
  // (a tail call: jmp, R_X86_64_PC32)
  EXPECT_THAT(s->code_s, HasSubstr("\t.reloc ., R_X86_64_PC32, \".klp.sym.vmlinux.scale.constprop.0,0\"-4\n"));
  // The new static is carried: a local label, the field's own addend (-5: an imm8 follows).
  EXPECT_THAT(s->code_s, HasSubstr("\t.reloc ., R_X86_64_PC32, .Lhvp_0_12-5\n"));
  // The existing static `calls` is not referred to by `scaled`; the new `rejected` is carried.
  EXPECT_THAT(s->code_s, HasSubstr("\t.section \".bss.rejected\", \"aw\", @nobits\n"));
  EXPECT_THAT(s->code_s, Not(HasSubstr("calls")));
  EXPECT_THAT(s->code_s, HasSubstr("\t.section \"__mcount_loc\", \"a\", @progbits\n"));
  EXPECT_THAT(s->code_s, HasSubstr("\t.section \".hvpatch.runpre\", \"\", @progbits\n"));
  ASSERT_EQ(s->run_pre.size(), 1u);
  EXPECT_EQ(s->run_pre[0].name, "scaled");
  ASSERT_FALSE(s->run_pre[0].holes.empty());
  EXPECT_EQ(s->run_pre[0].holes[0].target, "__fentry__");
  EXPECT_EQ(s->run_pre[0].holes[0].offset, 1u);
}

TEST(LivepatchWriter, NonExportedFunctionIsALivepatchSymbol) {
  // Without Module.symvers nothing is exported: every kernel symbol goes through livepatch.
  auto s = Write("reloc", KernelSymbols::Parse("", ""));
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(s->code_s, HasSubstr("\t.reloc ., R_X86_64_PLT32, \".klp.sym.vmlinux.helper_b,0\"-4\n"));
  EXPECT_THAT(s->code_s, HasSubstr("\t.reloc ., R_X86_64_PLT32, \".klp.sym.vmlinux.__fentry__,0\"-4\n"));
}

TEST(LivepatchWriter, SymposFromSystemMapNearestToTheFile) {
  // Two static helper_b in the kernel: the one near this file's caller is chosen.
  const KernelSymbols k = KernelSymbols::Parse(
      "0x1\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n", "ffffffff81000000 t helper_b\nffffffff81500000 T caller\nffffffff81500100 t helper_b\n"
          "ffffffff81500200 T helper_a\n");
  auto s = Write("reloc", k);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(s->code_s, HasSubstr("\".klp.sym.vmlinux.helper_b,2\"-4"));
}

TEST(LivepatchWriter, RefusesAPatchThatReplacesNothingAndBadNames) {
  ComparedObject c{"change.o", ReadObject("change.ORIG.o"), ReadObject("change.ORIG.o"), {}};
  std::vector<ComparedObject> objects;
  objects.push_back(std::move(c));
  EXPECT_THAT(WriteLivepatchSources("hvp_test", objects, kSymbols),
              StatusIs(Code::kInvalidArgument,
                       "writing livepatch module 'hvp_test': the fix changes no function of the running kernel"));
  EXPECT_THAT(WriteLivepatchSources("bad-name", objects, kSymbols),
              StatusIs(Code::kInvalidArgument, HasSubstr("'bad-name' is not a valid module name")));
}

}  // namespace
}  // namespace hv::builder
