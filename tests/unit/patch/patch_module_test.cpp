#include "patcher/patch_module.h"

#include "base/hex.h"

#include <elf.h>
#include <cstring>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "elf_editor.h"
#include "patch_files.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using testing::ElfEditor;
using testing::ReadPatchFile;

auto IsFunction(const std::string& old_name, const std::string& object, const std::string& sym) {
  return AllOf(Field(&KlpFunction::old_name, old_name), Field(&KlpFunction::object, object),
               Field(&KlpFunction::new_symbol, sym), Field(&KlpFunction::old_sympos, 0u));
}

class PatchModuleTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(ReadPatchFile("hvp_sample.ko", &sample_)); }
  Result<PatchModule> LoadSample() { return PatchModule::Load(sample_, "hvp_sample.ko"); }
  std::vector<std::uint8_t> sample_;
};

TEST_F(PatchModuleTest, SampleHasOneVmlinuxFunction) {
  auto m = LoadSample();
  ASSERT_THAT(m, IsOk());
  EXPECT_EQ(m->name(), "hvp_sample");
  EXPECT_FALSE(m->replace());
  ASSERT_THAT(m->functions(), ElementsAre(IsFunction("cmdline_proc_show", "vmlinux",
                                                     "hvp_sample_cmdline_show")));
  const KlpFunction& f = m->functions()[0];
  EXPECT_EQ(m->sections()[f.new_section].name, ".text");
  EXPECT_EQ(f.new_offset, 0x30u);  // readelf -s: hvp_sample_cmdline_show at .text+0x30, 31 bytes
  EXPECT_EQ(f.new_size, 31u);
}

TEST_F(PatchModuleTest, SampleMarksKlpTablesAndInitExitAsMetadata) {
  auto m = LoadSample();
  ASSERT_THAT(m, IsOk());
  std::vector<std::string> what;
  for (const auto& r : m->metadata()) what.push_back(r.what);
  EXPECT_THAT(what, ::testing::UnorderedElementsAre(
                        "klp_patch 'hvp_sample_patch'", "klp_func array 'hvp_sample_funcs'",
                        "klp_object array 'hvp_sample_objs'", "module init function 'hvp_sample_init'",
                        "module exit function 'hvp_sample_exit'"));
  const int data = ElfEditor(&sample_).SectionIndex(".data");
  const MetadataRange* funcs = m->FindMetadata(data, 0x240);
  ASSERT_NE(funcs, nullptr);
  EXPECT_EQ(funcs->size, 2 * 152u);  // one entry and the terminator
  EXPECT_EQ(m->FindMetadata(data, 0x370), nullptr);
}

TEST(PatchModuleFiles, EveryTestPatchLoads) {
  struct Case {
    std::string file;
    std::vector<std::tuple<std::string, std::string, std::string>> funcs;
  };
  const std::vector<Case> cases = {
      {"hvp_two", {{"cmdline_proc_show", "vmlinux", "hvp_two_cmdline_show"},
                   {"version_proc_show", "vmlinux", "hvp_two_version_show"}}},
      {"hvp_nonexported", {{"cmdline_proc_show", "vmlinux", "hvp_nonexported_cmdline_show"}}},
      {"hvp_uaccess", {{"cmdline_proc_show", "vmlinux", "hvp_uaccess_cmdline_show"}}},
      {"hvp_virtio", {{"port_debugfs_show", "virtio_console", "hvp_virtio_port_debugfs_show"}}},
      {"hvp_stack_a", {{"cmdline_proc_show", "vmlinux", "hvp_stack_a_cmdline_show"}}},
      {"hvp_stack_b", {{"cmdline_proc_show", "vmlinux", "hvp_stack_b_cmdline_show"}}},
      {"hvp_sleep", {{"do_nanosleep", "vmlinux", "hvp_sleep_do_nanosleep"}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file);
    std::vector<std::uint8_t> bytes;
    ASSERT_TRUE(ReadPatchFile(c.file + ".ko", &bytes));
    auto m = PatchModule::Load(bytes, c.file + ".ko");
    ASSERT_THAT(m, IsOk());
    EXPECT_EQ(m->name(), c.file);
    ASSERT_EQ(m->functions().size(), c.funcs.size());
    for (std::size_t i = 0; i < c.funcs.size(); ++i) {
      EXPECT_THAT(m->functions()[i], IsFunction(std::get<0>(c.funcs[i]), std::get<1>(c.funcs[i]),
                                                std::get<2>(c.funcs[i])));
    }
  }
}

TEST_F(PatchModuleTest, NameFallsBackToTheFileName) {
  ElfEditor(&sample_).ReplaceString("name=hvp_sample", "xame=hvp_sample");
  auto m = PatchModule::Load(sample_, "/tmp/my-fix.ko");
  ASSERT_THAT(m, IsOk());
  EXPECT_EQ(m->name(), "my_fix");
}

TEST_F(PatchModuleTest, RefusesAModuleWithoutTheLivepatchTag) {
  ElfEditor(&sample_).ReplaceString("livepatch=Y", "livepatch=N");
  EXPECT_THAT(LoadSample(),
              StatusIs(Code::kInvalidArgument,
                       "loading patch 'hvp_sample.ko': not a livepatch module: .modinfo has no "
                       "'livepatch=Y' tag (MODULE_INFO(livepatch, \"Y\"))"));
}

// --- malformed files ---------------------------------------------------------------------

TEST_F(PatchModuleTest, RefusesEmptyAndTinyFiles) {
  EXPECT_THAT(PatchModule::Load({}, "empty.ko"),
              StatusIs(Code::kInvalidArgument,
                       "loading patch 'empty.ko': file is too short for an ELF header (0 bytes)"));
  std::vector<std::uint8_t> head(sample_.begin(), sample_.begin() + 63);
  EXPECT_THAT(PatchModule::Load(head, "t.ko"),
              StatusIs(Code::kInvalidArgument, HasSubstr("too short for an ELF header (63 bytes)")));
}

TEST_F(PatchModuleTest, RefusesRandomBytes) {
  std::mt19937 rng(7);
  std::vector<std::uint8_t> junk(4096);
  for (auto& b : junk) b = static_cast<std::uint8_t>(rng());
  EXPECT_THAT(PatchModule::Load(junk, "junk.ko"),
              StatusIs(Code::kInvalidArgument, "loading patch 'junk.ko': not an ELF file (bad magic)"));
}

TEST_F(PatchModuleTest, RefusesATruncatedFile) {
  // The section table sits at the end of the file: cutting the file cuts it.
  std::vector<std::uint8_t> cut(sample_.begin(), sample_.begin() + sample_.size() / 2);
  // The table's offset depends on the build (kbuild embeds paths), so read it from the header:
  // e_shoff at 0x28, e_shnum at 0x3c.
  std::uint64_t shoff = 0;
  std::uint16_t shnum = 0;
  std::memcpy(&shoff, sample_.data() + 0x28, 8);
  std::memcpy(&shnum, sample_.data() + 0x3c, 2);
  EXPECT_THAT(PatchModule::Load(cut, "cut.ko"),
              StatusIs(Code::kInvalidArgument,
                       AllOf(HasSubstr("section header table at " + Hex(shoff) + " (" +
                                       std::to_string(shnum) + " entries) runs past the end"),
                             HasSubstr(std::to_string(cut.size()) + "-byte file"))));
}

TEST_F(PatchModuleTest, RefusesWhatIsNotARelocatableX86Object) {
  ElfEditor e(&sample_);
  Elf64_Ehdr h = e.Header();
  h.e_type = ET_EXEC;
  e.SetHeader(h);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("ELF type 2 is not ET_REL (a kernel module is a "
                                               "relocatable object)")));
  h.e_type = ET_REL;
  h.e_machine = EM_AARCH64;
  e.SetHeader(h);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument, HasSubstr("ELF machine 183 is not x86-64")));
  h.e_machine = EM_X86_64;
  h.e_ident[EI_CLASS] = ELFCLASS32;
  e.SetHeader(h);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument, HasSubstr("not a 64-bit ELF file")));
}

TEST_F(PatchModuleTest, RefusesACorruptSectionTable) {
  ElfEditor e(&sample_);
  Elf64_Ehdr h = e.Header();
  const Elf64_Ehdr good = h;
  h.e_shoff = 0xffffffffffff0000ull;
  e.SetHeader(h);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("section header table at 0xffffffffffff0000")));
  h = good;
  h.e_shentsize = 40;
  e.SetHeader(h);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument, HasSubstr("section header size 40 is not 64")));
  h = good;
  h.e_shstrndx = 500;
  e.SetHeader(h);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("section name table index 500 is out of range")));
  h = good;
  h.e_shnum = 0;
  e.SetHeader(h);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument, HasSubstr("no section header table")));
}

TEST_F(PatchModuleTest, RefusesASectionOutsideTheFile) {
  ElfEditor e(&sample_);
  const int text = e.SectionIndex(".text");
  Elf64_Shdr s = e.Shdr(text);
  s.sh_size = 0x7fffffffffffffffull;
  e.SetShdr(text, s);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("section 3 (offset 0xb0, size 0x7fffffffffffffff) runs "
                                               "past the end of the file")));
}

TEST_F(PatchModuleTest, RefusesASymbolNameOutsideTheStringTable) {
  ElfEditor e(&sample_);
  const int i = e.SymbolIndex("seq_printf");
  Elf64_Sym s = e.Symbol(i);
  s.st_name = 0x100000;
  e.SetSymbol(i, s);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("symbol 53 name offset 0x100000 is outside its 518-byte table")));
}

TEST_F(PatchModuleTest, RefusesARelocationWithABadSymbolIndex) {
  ElfEditor e(&sample_);
  Elf64_Rela r = e.Rela(".rela.text", 2);
  r.r_info = ELF64_R_INFO(9999, ELF64_R_TYPE(r.r_info));
  e.SetRela(".rela.text", 2, r);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     "loading patch 'hvp_sample.ko': relocation section '.rela.text' "
                                     "entry 2: symbol index 9999 is out of range"));
}

TEST_F(PatchModuleTest, RefusesARelocationOutsideItsSection) {
  ElfEditor e(&sample_);
  Elf64_Rela r = e.Rela(".rela.text", 0);
  r.r_offset = 0x4f;
  e.SetRela(".rela.text", 0, r);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("entry 0: offset 0x4f is outside section '.text'")));
}

// --- malformed klp tables ----------------------------------------------------------------

TEST_F(PatchModuleTest, RefusesNewFuncThatIsNotAFunctionStart) {
  ElfEditor e(&sample_);
  const int k = e.RelaAt(".rela.data", 0x248);  // hvp_sample_funcs[0].new_func
  Elf64_Rela r = e.Rela(".rela.data", k);
  r.r_addend += 1;
  e.SetRela(".rela.data", k, r);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("new_func of 'cmdline_proc_show' points to section "
                                               "'.text' offset 0x31, which is not the start of a "
                                               "function symbol")));
}

TEST_F(PatchModuleTest, RefusesOldNameOutsideReadOnlyData) {
  ElfEditor e(&sample_);
  const int k = e.RelaAt(".rela.data", 0x240);  // hvp_sample_funcs[0].old_name
  Elf64_Rela r = e.Rela(".rela.data", k);
  r.r_info = ELF64_R_INFO(e.SectionSymbolIndex(".data"), R_X86_64_64);
  r.r_addend = 0x300;
  e.SetRela(".rela.data", k, r);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("object 'vmlinux' klp_func[0].old_name points into "
                                               "section '.data', which is not read-only data")));
}

TEST_F(PatchModuleTest, RefusesAnArraySizeOfAnotherLayout) {
  ElfEditor e(&sample_);
  const int i = e.SymbolIndex("hvp_sample_funcs");
  Elf64_Sym s = e.Symbol(i);
  s.st_size = 2 * 160;  // as if klp_func were 160 bytes
  e.SetSymbol(i, s);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("klp_func array 'hvp_sample_funcs' is 320 bytes, not a "
                                               "multiple of 152")));
}

TEST_F(PatchModuleTest, RefusesObjectCallbacks) {
  ElfEditor e(&sample_);
  // Point hvp_sample_objs[0].callbacks.post_patch (objs at .data+0xe0, callbacks at +16) to code
  // by moving the new_func relocation there; the callback is reported before the function.
  const int k = e.RelaAt(".rela.data", 0x248);
  Elf64_Rela r = e.Rela(".rela.data", k);
  r.r_offset = 0xe0 + 16 + 8;
  e.SetRela(".rela.data", k, r);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kUnimplemented,
                                     "loading patch 'hvp_sample.ko': object 'vmlinux' has a "
                                     "'post_patch' callback: not supported"));
}

TEST_F(PatchModuleTest, RefusesAModuleWithoutKlpPatch) {
  ElfEditor e(&sample_);
  const int k = e.RelaAt(".rela.data", 0);  // hvp_sample_patch.mod = THIS_MODULE
  Elf64_Rela r = e.Rela(".rela.data", k);
  r.r_info = ELF64_R_INFO(e.SymbolIndex("seq_printf"), R_X86_64_64);
  e.SetRela(".rela.data", k, r);
  EXPECT_THAT(LoadSample(), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("no struct klp_patch found")));
}

}  // namespace
}  // namespace hv::patcher
