#include "patcher/relocator.h"

#include <elf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "elf_editor.h"
#include "fake_resolver.h"
#include "patch_files.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using testing::ElfEditor;
using testing::FakeResolver;
using testing::GuestSymbols;
using testing::ReadPatchFile;

constexpr std::uint64_t kCode = 0xffffffff86001000;
constexpr std::uint64_t kRodata = 0xffffffff86002000;
constexpr std::uint64_t kData = 0xffffffff86003000;
constexpr std::array<std::uint64_t, kMemoryClasses> kBases = {kCode, kRodata, kData};

Result<PatchModule> Load(const std::string& name, std::vector<std::uint8_t>* bytes = nullptr) {
  std::vector<std::uint8_t> local;
  if (bytes == nullptr) bytes = &local;
  if (bytes->empty() && !ReadPatchFile(name + ".ko", bytes)) return NotFound("missing " + name);
  return PatchModule::Load(*bytes, name + ".ko");
}

std::vector<std::string> SectionNames(const PatchModule& m, const PatchImage& image) {
  std::vector<std::string> out;
  for (const auto& p : image.sections) {
    out.push_back(m.sections()[p.section].name + ":" + std::string(MemoryClassName(p.memory)) + "@" +
                  std::to_string(p.offset));
  }
  return out;
}

TEST(SelectImage, SampleTakesItsCodeAndStringsButNoKlpData) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  // .data holds only the klp tables (plumbing), so no data area at all.
  EXPECT_THAT(SectionNames(*m, *image),
              ElementsAre(".text:code@0", ".rodata.str1.8:rodata@0", ".rodata.str1.1:rodata@38"));
  EXPECT_EQ(image->size[0], 0x4fu);
  EXPECT_EQ(image->size[1], 0x26u + 0x16u);
  EXPECT_EQ(image->size[2], 0u);
  EXPECT_EQ(image->Pages(MemoryClass::kCode), 1u);
  EXPECT_EQ(image->Pages(MemoryClass::kData), 0u);
}

TEST(Link, SampleBytesAreRelocatedExactly) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  auto linked = Link(*m, *image, guest, kBases);
  ASSERT_THAT(linked, IsOk());
  ASSERT_EQ(linked->functions.size(), 1u);
  EXPECT_EQ(linked->functions[0].new_va, kCode + 0x30);
  EXPECT_EQ(linked->fentry_nops, 1u);  // only the copied function's; init/exit are blanked
  const auto& code = linked->bytes[0];
  ASSERT_EQ(code.size(), 0x4fu);
  const std::vector<std::uint8_t> fn(code.begin() + 0x30, code.begin() + 0x4f);
  EXPECT_THAT(fn, ElementsAreArray({
                      0x0f, 0x1f, 0x44, 0x00, 0x00,              // call __fentry__ -> nop
                      0x48, 0xc7, 0xc2, 0x00, 0x20, 0x00, 0x86,  // mov $kRodata (str1.8), %rdx
                      0x48, 0xc7, 0xc6, 0x26, 0x20, 0x00, 0x86,  // mov $kRodata+0x26 ("%s\n"), %rsi
                      0xe8, 0x18, 0x35, 0x23, 0xfb,              // call seq_printf (0xffffffff81234560)
                      0x31, 0xc0,                                // xor %eax, %eax
                      0xe9, 0xe5, 0x01, 0x00, 0xfc,              // jmp __x86_return_thunk
                  }));
  // hvp_sample_exit (0x0, 10 bytes) and hvp_sample_init (0x10, 17 bytes) are int3 now.
  EXPECT_EQ(std::vector<std::uint8_t>(code.begin(), code.begin() + 10), std::vector<std::uint8_t>(10, 0xcc));
  EXPECT_EQ(std::vector<std::uint8_t>(code.begin() + 0x10, code.begin() + 0x21), std::vector<std::uint8_t>(17, 0xcc));
  const auto& ro = linked->bytes[1];
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ro.data())), "hvpatch: this kernel was live-patched");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ro.data() + 0x26)), "%s\n");
  EXPECT_TRUE(linked->bytes[2].empty());
}

TEST(Link, TwoFunctionsGetTheirOwnAddresses) {
  auto m = Load("hvp_two");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  auto linked = Link(*m, *image, guest, kBases);
  ASSERT_THAT(linked, IsOk());
  ASSERT_EQ(linked->functions.size(), 2u);
  EXPECT_EQ(linked->functions[0].klp.old_name, "cmdline_proc_show");
  EXPECT_EQ(linked->functions[1].klp.old_name, "version_proc_show");
  EXPECT_EQ(linked->functions[0].new_va, kCode + m->functions()[0].new_offset);
  EXPECT_EQ(linked->functions[1].new_va, kCode + m->functions()[1].new_offset);
  EXPECT_NE(linked->functions[0].new_va, linked->functions[1].new_va);
  EXPECT_EQ(linked->fentry_nops, 2u);
}

TEST(Link, NonExportedSymbolsResolveThroughKallsyms) {
  auto m = Load("hvp_nonexported");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  auto linked = Link(*m, *image, guest, kBases);
  ASSERT_THAT(linked, IsOk());
  // .text+0x3a: call nr_processes (PLT32), .text+0x40: mov nr_threads(%rip) (PC32); readelf -r.
  const auto& code = linked->bytes[0];
  std::int32_t call, load;
  std::memcpy(&call, code.data() + 0x3a, 4);
  std::memcpy(&load, code.data() + 0x40, 4);
  EXPECT_EQ(kCode + 0x3a + 4 + static_cast<std::int64_t>(call), 0xffffffff81080000u);
  EXPECT_EQ(kCode + 0x40 + 4 + static_cast<std::int64_t>(load), 0xffffffff82a00010u);
}

TEST(Link, PerCpuSymbolsUseTheirOffsetAndDataGoesToTheDataArea) {
  auto m = Load("hvp_sleep");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  std::vector<std::string> names = SectionNames(*m, *image);
  EXPECT_THAT(names, ElementsAre(".text:code@0", ".bss:data@0"));  // hvp_sleep_calls
  FakeResolver guest = GuestSymbols();
  auto linked = Link(*m, *image, guest, kBases);
  ASSERT_THAT(linked, IsOk());
  const auto& code = linked->bytes[0];
  // .text+0x4c: mov %gs:current_task, R_X86_64_32S: the per-cpu offset itself.
  std::int32_t v;
  std::memcpy(&v, code.data() + 0x4c, 4);
  EXPECT_EQ(v, 0x1fdc0);
  // .text+0x65: the counter in .bss, PC32 with addend -4.
  std::memcpy(&v, code.data() + 0x65, 4);
  EXPECT_EQ(kCode + 0x65 + 4 + static_cast<std::int64_t>(v), kData);
  // .text+0xef: the retpoline call goes to the guest's own thunk.
  std::memcpy(&v, code.data() + 0xef, 4);
  EXPECT_EQ(kCode + 0xef + 4 + static_cast<std::int64_t>(v), 0xffffffff82001000u);
}

TEST(Link, ModuleFunctionPatchLinks) {
  auto m = Load("hvp_virtio");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  EXPECT_THAT(Link(*m, *image, guest, kBases), IsOk());
}

TEST(SelectImage, UserAccessIsRefusedNamingFunctionAndSections) {
  auto m = Load("hvp_uaccess");
  ASSERT_THAT(m, IsOk());
  EXPECT_THAT(SelectImage(*m),
              StatusIs(Code::kUnimplemented,
                       "linking patch 'hvp_uaccess': function 'hvp_uaccess_cmdline_show' needs section "
                       "'.altinstructions' (alternatives): not supported; function "
                       "'hvp_uaccess_cmdline_show' needs section '__ex_table' (exception table): not "
                       "supported"));
}

TEST(Link, UnknownSymbolNamesTheFunction) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest;
  guest.Add("__x86_return_thunk", 0xffffffff82001234);
  EXPECT_THAT(Link(*m, *image, guest, kBases),
              StatusIs(Code::kNotFound,
                       "linking patch 'hvp_sample': section '.rela.text' entry 8: function "
                       "'hvp_sample_cmdline_show' refers to 'seq_printf': symbol 'seq_printf' not found "
                       "in any object"));
}

TEST(Link, OutOfReachIsAnOverflow) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  // Code 4 GiB below the kernel: neither the PLT32 calls nor the 32S string addresses fit.
  EXPECT_THAT(Link(*m, *image, guest, {0xfffffffe00000000, kRodata, kData}),
              StatusIs(Code::kInvalidArgument,
                       HasSubstr("entry 8: R_X86_64_PLT32 to 'seq_printf' in function "
                                 "'hvp_sample_cmdline_show' overflows")));
  EXPECT_THAT(Link(*m, *image, guest, {kCode, 0xfffffffe00000000, kData}),
              StatusIs(Code::kInvalidArgument,
                       HasSubstr("R_X86_64_32S to '.rodata.str1.8' in function 'hvp_sample_cmdline_show' "
                                 "overflows (value 0xfffffffe00000000")));
}

TEST(Link, PerCpuSymbolWithPcRelativeRelocationIsRefused) {
  auto m = Load("hvp_nonexported");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  guest = FakeResolver();
  guest.Add("nr_processes", 0xffffffff81080000).Add("nr_threads", 0x2000, 4, "vmlinux", true)
      .Add("seq_printf", 0xffffffff81234560).Add("__x86_return_thunk", 0xffffffff82001234);
  EXPECT_THAT(Link(*m, *image, guest, kBases),
              StatusIs(Code::kInvalidArgument,
                       HasSubstr("function 'hvp_nonexported_cmdline_show' refers to per-cpu symbol "
                                 "'nr_threads' with a PC-relative R_X86_64_PC32 relocation")));
}

// A tracepoint call reads cpu_number (per-cpu) with `mov %gs:cpu_number(%rip), %eax` and bumps
// __preempt_count with `incl %gs:__preempt_count(%rip)`: PC32 relocations to per-cpu offsets
// inside %gs operands, which the CPU turns into per-cpu addresses. They are linked.
TEST(Link, PerCpuSymbolInAGsOperandIsLinked) {
  auto m = Load("hvp_static_call");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m, {.shadow_module = true});
  ASSERT_THAT(image, IsOk());
  FakeResolver guest;
  guest.Add("cpu_number", 0x1b02c, 4, "vmlinux", true)
      .Add("__preempt_count", 0x1b030, 4, "vmlinux", true)
      .Add("__cpu_online_mask", 0xffffffff82c1e000)
      .Add("__tracepoint_cpu_frequency", 0xffffffff82b00000)
      .Add("__SCT__tp_func_cpu_frequency", 0xffffffff81f00000)
      .Add("__SCT__preempt_schedule_notrace", 0xffffffff81f00008)
      .Add("seq_printf", 0xffffffff81234560)
      .Add("__x86_return_thunk", 0xffffffff82001234);
  auto linked = Link(*m, *image, guest, kBases);
  ASSERT_THAT(linked, IsOk());
  // hvp_static_call_cmdline_show+0x22: 65 8b 05 <disp32>: disp = cpu_number - the next rip.
  const std::uint64_t at = linked->functions.at(0).new_va + 0x22;
  const auto& code = linked->bytes[0];
  const std::uint8_t* insn = code.data() + (at - linked->base[0]);
  ASSERT_EQ(insn[0], 0x65);
  ASSERT_EQ(insn[1], 0x8b);
  std::int32_t disp;
  std::memcpy(&disp, insn + 3, 4);
  EXPECT_EQ(at + 7 + static_cast<std::uint64_t>(static_cast<std::int64_t>(disp)), 0x1b02cu);
}

TEST(Link, UnsupportedRelocationTypeIsNamed) {
  std::vector<std::uint8_t> bytes;
  ASSERT_TRUE(ReadPatchFile("hvp_sample.ko", &bytes));
  ElfEditor e(&bytes);
  Elf64_Rela r = e.Rela(".rela.text", 8);  // the seq_printf call
  r.r_info = ELF64_R_INFO(ELF64_R_SYM(r.r_info), R_X86_64_GOTPCREL);
  e.SetRela(".rela.text", 8, r);
  auto m = Load("hvp_sample", &bytes);
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  EXPECT_THAT(Link(*m, *image, guest, kBases),
              StatusIs(Code::kInvalidArgument,
                       "linking patch 'hvp_sample': section '.rela.text' entry 8: unsupported relocation "
                       "type R_X86_64_GOTPCREL in function 'hvp_sample_cmdline_show'"));
}

TEST(SelectImage, CodeThatReferencesKlpTablesIsRefused) {
  std::vector<std::uint8_t> bytes;
  ASSERT_TRUE(ReadPatchFile("hvp_sample.ko", &bytes));
  ElfEditor e(&bytes);
  // Make the new function's string load point at hvp_sample_patch (.data+0) instead.
  Elf64_Rela r = e.Rela(".rela.text", 6);
  r.r_info = ELF64_R_INFO(e.SectionSymbolIndex(".data"), R_X86_64_32S);
  r.r_addend = 0;
  e.SetRela(".rela.text", 6, r);
  auto m = Load("hvp_sample", &bytes);
  ASSERT_THAT(m, IsOk());
  EXPECT_THAT(SelectImage(*m),
              StatusIs(Code::kUnimplemented,
                       "linking patch 'hvp_sample': function 'hvp_sample_cmdline_show' refers to klp_patch "
                       "'hvp_sample_patch' (livepatch module plumbing): not supported"));
}

TEST(SelectImage, CodeThatReferencesThisModuleIsRefused) {
  std::vector<std::uint8_t> bytes;
  ASSERT_TRUE(ReadPatchFile("hvp_sample.ko", &bytes));
  ElfEditor e(&bytes);
  Elf64_Rela r = e.Rela(".rela.text", 6);
  r.r_info = ELF64_R_INFO(e.SymbolIndex("__this_module"), R_X86_64_32S);
  r.r_addend = 0;
  e.SetRela(".rela.text", 6, r);
  auto m = Load("hvp_sample", &bytes);
  ASSERT_THAT(m, IsOk());
  EXPECT_THAT(SelectImage(*m),
              StatusIs(Code::kUnimplemented,
                       HasSubstr("function 'hvp_sample_cmdline_show' refers to section "
                                 "'.gnu.linkonce.this_module' (the patch's own struct module "
                                 "(THIS_MODULE)): not supported")));
}

TEST(Link, KlpSymbolsResolveInTheirObjectAndPosition) {
  std::vector<std::uint8_t> bytes;
  ASSERT_TRUE(ReadPatchFile("hvp_sample.ko", &bytes));
  ElfEditor e(&bytes);
  // Turn the call to seq_printf into a call to livepatch's ".klp.sym.vmlinux.xy,2": reuse the
  // string of a .modinfo symbol for the name, and mark the symbol SHN_LIVEPATCH.
  const int donor_index = e.SymbolIndex("__UNIQUE_ID_description283");
  e.RenameSymbol(donor_index, ".klp.sym.vmlinux.xy,2");
  const Elf64_Sym donor = e.Symbol(donor_index);
  const int i = e.SymbolIndex("seq_printf");
  Elf64_Sym s = e.Symbol(i);
  s.st_name = donor.st_name;
  s.st_shndx = 0xff20;
  e.SetSymbol(i, s);
  auto m = Load("hvp_sample", &bytes);
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  guest.Add("xy", 0xffffffff81500000).Add("xy", 0xffffffff81600000).Add("xy", 0xffffffffc0001000, 8, "virtio_console");
  auto linked = Link(*m, *image, guest, kBases);
  ASSERT_THAT(linked, IsOk());
  std::int32_t v;
  std::memcpy(&v, linked->bytes[0].data() + 0x44, 4);
  EXPECT_EQ(kCode + 0x44 + 4 + static_cast<std::int64_t>(v), 0xffffffff81600000u);
}

TEST(Link, AmbiguousSymbolIsReported) {
  auto m = Load("hvp_sample");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  guest.Add("seq_printf", 0xffffffff81600000);
  EXPECT_THAT(Link(*m, *image, guest, kBases),
              StatusIs(Code::kInvalidArgument,
                       HasSubstr("function 'hvp_sample_cmdline_show' refers to 'seq_printf': symbol "
                                 "'seq_printf' is ambiguous in any object")));
}

}  // namespace
}  // namespace hv::patcher

namespace hv::patcher {
namespace {

// Hostile sizes must cost linear time: 200k extra symbols and 500k relocations (all patching the
// seq_printf call of the sample) load, select and link in well under the test timeout.
TEST(Link, HugeTablesStayLinear) {
  std::vector<std::uint8_t> bytes;
  ASSERT_TRUE(ReadPatchFile("hvp_sample.ko", &bytes));
  ElfEditor e(&bytes);
  const int symtab = e.SectionIndex(".symtab");
  const int rela = e.SectionIndex(".rela.text");
  Elf64_Shdr st = e.Shdr(symtab);
  Elf64_Shdr rt = e.Shdr(rela);
  const Elf64_Rela call = e.Rela(".rela.text", 8);
  const Elf64_Sym fn = e.Symbol(e.SymbolIndex("hvp_sample_cmdline_show"));

  auto align8 = [&] { bytes.resize((bytes.size() + 7) & ~std::size_t{7}); };
  align8();
  const std::uint64_t new_symtab = bytes.size();
  bytes.insert(bytes.end(), bytes.begin() + st.sh_offset, bytes.begin() + st.sh_offset + st.sh_size);
  for (int i = 0; i < 200000; ++i) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&fn);
    bytes.insert(bytes.end(), p, p + sizeof(fn));
  }
  const std::uint64_t new_rela = bytes.size();
  bytes.insert(bytes.end(), bytes.begin() + rt.sh_offset, bytes.begin() + rt.sh_offset + rt.sh_size);
  for (int i = 0; i < 500000; ++i) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&call);
    bytes.insert(bytes.end(), p, p + sizeof(call));
  }
  st.sh_offset = new_symtab;
  st.sh_size += 200000 * sizeof(Elf64_Sym);
  rt.sh_offset = new_rela;
  rt.sh_size += 500000 * sizeof(Elf64_Rela);
  e.SetShdr(symtab, st);
  e.SetShdr(rela, rt);

  auto m = PatchModule::Load(bytes, "huge.ko");
  ASSERT_THAT(m, IsOk());
  auto image = SelectImage(*m);
  ASSERT_THAT(image, IsOk());
  FakeResolver guest = GuestSymbols();
  auto linked = Link(*m, *image, guest, kBases);
  ASSERT_THAT(linked, IsOk());
  EXPECT_LE(guest.lookups, 3);  // seq_printf, __x86_return_thunk: cached after the first
}

}  // namespace
}  // namespace hv::patcher
