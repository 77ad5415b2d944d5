#include "patcher/kernel_tables.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "patch/fake_resolver.h"
#include "patch/patch_files.h"
#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::hv::StatusIs;
using ::testing::HasSubstr;

constexpr std::uint32_t kSmap = 9 * 32 + 20;  // X86_FEATURE_SMAP

class KernelTablesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::uint8_t> ko;
    ASSERT_TRUE(testing::ReadPatchFile("hvp_user_read.ko", &ko));
    auto m = PatchModule::Load(ko, "hvp_user_read.ko");
    ASSERT_TRUE(m.ok()) << m.status().message();
    module_.emplace(std::move(*m));
    auto image = SelectImage(*module_, {.shadow_module = true});
    ASSERT_TRUE(image.ok()) << image.status().message();
    image_ = *image;
    resolver_.Add("__x86_return_thunk", 0xffffffff81e00000ull);
  }

  LinkedPatch Linked() {
    auto linked = Link(*module_, image_, resolver_, base_);
    EXPECT_TRUE(linked.ok()) << linked.status().message();
    return linked.ok() ? *linked : LinkedPatch{};
  }

  // The code bytes of the new function.
  std::vector<std::uint8_t> Function(const LinkedPatch& l) {
    const std::uint64_t va = l.functions.at(0).new_va;
    const auto& code = l.bytes[0];
    const std::uint64_t off = va - l.base[0];
    return {code.begin() + static_cast<long>(off), code.begin() + static_cast<long>(off + l.functions[0].klp.new_size)};
  }

  static bool Contains(const std::vector<std::uint8_t>& hay, std::vector<std::uint8_t> needle) {
    return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
  }

  std::optional<PatchModule> module_;
  PatchImage image_;
  testing::FakeResolver resolver_;
  std::array<std::uint64_t, kMemoryClasses> base_ = {0xffffffff86201000ull, 0xffffffff86202000ull, 0xffffffff86203000ull};
};

TEST_F(KernelTablesTest, TheTablesArePlacedWithAShadowModuleOnly) {
  auto placed = [&](std::string_view name) {
    for (const auto& p : image_.sections) {
      if (module_->sections()[p.section].name == name) return true;
    }
    return false;
  };
  EXPECT_TRUE(placed("__ex_table"));
  EXPECT_TRUE(placed(".altinstructions"));
  EXPECT_TRUE(placed(".altinstr_replacement"));
  EXPECT_THAT(SelectImage(*module_), StatusIs(Code::kUnimplemented, HasSubstr("needs section '__ex_table'")));
}

TEST_F(KernelTablesTest, StacIsPatchedInOnASmapCpuAndLeftOutOtherwise) {
  const std::vector<std::uint8_t> stac = {0x0f, 0x01, 0xcb}, clac = {0x0f, 0x01, 0xca};
  CpuFeatures none;
  none.words.assign(21, 0);
  LinkedPatch plain = Linked();
  auto t = FinishKernelTables(*module_, image_, plain, none);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->alternatives, 5u);
  EXPECT_EQ(t->alternatives_applied, 0u);
  EXPECT_FALSE(Contains(Function(plain), stac));

  CpuFeatures smap = none;
  smap.words[kSmap / 32] |= 1u << (kSmap % 32);
  LinkedPatch patched = Linked();
  t = FinishKernelTables(*module_, image_, patched, smap);
  ASSERT_TRUE(t.ok()) << t.status().message();
  // The five entries: TASK_SIZE_MAX for LA57, STAC, LFENCE (LFENCE_RDTSC), CLAC on the success
  // and on the fault path. With SMAP alone, the three SMAP ones apply.
  EXPECT_EQ(t->alternatives_applied, 3u);
  EXPECT_TRUE(Contains(Function(patched), stac));
  EXPECT_TRUE(Contains(Function(patched), clac));
  // Everything but the patched sites is unchanged.
  const auto a = Function(plain), b = Function(patched);
  ASSERT_EQ(a.size(), b.size());
  std::size_t differing = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differing += a[i] != b[i];
  EXPECT_LE(differing, 12u);
}

TEST_F(KernelTablesTest, ExceptionTableNamesTheUserReadAndIsSorted) {
  CpuFeatures none;
  none.words.assign(21, 0);
  LinkedPatch l = Linked();
  auto t = FinishKernelTables(*module_, image_, l, none);
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->num_exentries, 1u);
  // The entry's instruction is the load from the user pointer: 8b 06 (mov (%rsi),%eax).
  const std::uint64_t off = t->extable_va - l.base[1];
  std::int32_t insn;
  std::memcpy(&insn, l.bytes[1].data() + off, 4);
  const std::uint64_t insn_va = t->extable_va + static_cast<std::uint64_t>(static_cast<std::int64_t>(insn));
  ASSERT_GE(insn_va, l.base[0]);
  EXPECT_EQ(l.bytes[0][insn_va - l.base[0]], 0x8b);
  EXPECT_EQ(l.bytes[0][insn_va - l.base[0] + 1], 0x06);
}

TEST_F(KernelTablesTest, AFeatureBeyondTheGuestsWordsIsRefused) {
  CpuFeatures tiny;
  tiny.words.assign(2, 0);
  LinkedPatch l = Linked();
  EXPECT_THAT(FinishKernelTables(*module_, image_, l, tiny),
              StatusIs(Code::kUnimplemented, HasSubstr("beyond the guest's 2 capability words")));
}

}  // namespace
}  // namespace hv::patcher
