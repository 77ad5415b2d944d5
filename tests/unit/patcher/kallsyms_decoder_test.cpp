#include "patcher/kallsyms_decoder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "status_matchers.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;

// Tables with one token per printable character plus token 0x80 = "_sym" and 0x81 = "per".
struct Tables {
  std::vector<std::uint8_t> names, token_table, token_index, offsets;
  std::uint64_t base = 0xffffffff81000000ull;
  std::uint32_t count = 0;

  Tables() {
    token_index.resize(512);
    for (int i = 0; i < 256; ++i) {
      const std::uint16_t off = static_cast<std::uint16_t>(token_table.size());
      std::memcpy(&token_index[2 * i], &off, 2);
      std::string t = i == 0x80 ? "_sym" : i == 0x81 ? "per" : std::string(1, static_cast<char>(i >= 0x20 && i < 0x7f ? i : '?'));
      token_table.insert(token_table.end(), t.begin(), t.end());
      token_table.push_back(0);
    }
  }
  void Add(const std::vector<std::uint8_t>& tokens, std::int32_t offset) {
    if (tokens.size() >= 0x80) {
      names.push_back(static_cast<std::uint8_t>(0x80 | (tokens.size() & 0x7f)));
      names.push_back(static_cast<std::uint8_t>(tokens.size() >> 7));
    } else {
      names.push_back(static_cast<std::uint8_t>(tokens.size()));
    }
    names.insert(names.end(), tokens.begin(), tokens.end());
    offsets.resize(offsets.size() + 4);
    std::memcpy(&offsets[offsets.size() - 4], &offset, 4);
    ++count;
  }
  void AddText(const std::string& text, std::int32_t offset) {
    Add(std::vector<std::uint8_t>(text.begin(), text.end()), offset);
  }
  KallsymsTables View() const {
    KallsymsTables t;
    t.num_syms = count;
    t.names = names;
    t.token_table = token_table;
    t.token_index = token_index;
    t.offsets = offsets;
    t.relative_base = base;
    return t;
  }
};

TEST(KallsymsDecoderTest, ExpandsTokensAndAbsolutePercpuOffsets) {
  Tables t;
  t.Add({'A', 'c', 'u', 'r', 'r', 'e', 'n', 't', '_', 't', 'a', 's', 'k'}, 0x1fb80);
  t.Add({'T', 0x80}, -1);                 // "T_sym" at base
  t.Add({'t', 0x81, 0x80, '2'}, -0x101);  // "tper_sym2" at base + 0x100
  auto syms = KallsymsDecoder::Decode(t.View());
  ASSERT_THAT(syms, IsOk());
  ASSERT_EQ(syms->size(), 3u);
  EXPECT_EQ((*syms)[0].name, "current_task");
  EXPECT_EQ((*syms)[0].type, 'A');
  EXPECT_EQ((*syms)[0].address, 0x1fb80u);
  EXPECT_EQ((*syms)[1].name, "_sym");
  EXPECT_EQ((*syms)[1].address, t.base);
  EXPECT_EQ((*syms)[2].name, "per_sym2");
  EXPECT_EQ((*syms)[2].type, 't');
  EXPECT_EQ((*syms)[2].address, t.base + 0x100);
}

TEST(KallsymsDecoderTest, UnsignedOffsetsWithoutAbsolutePercpu) {
  Tables t;
  t.AddText("Tfirst", 0);
  t.AddText("Tsecond", 0x40);
  auto syms = KallsymsDecoder::Decode(t.View());
  ASSERT_THAT(syms, IsOk());
  EXPECT_EQ((*syms)[1].address, t.base + 0x40);
}

TEST(KallsymsDecoderTest, DecodesBigSymbolLengths) {
  Tables t;
  const std::string longname = "T" + std::string(300, 'x');  // ULEB128 length, two bytes
  t.AddText(longname, -1);
  t.AddText("Tafter", -0x11);
  auto syms = KallsymsDecoder::Decode(t.View());
  ASSERT_THAT(syms, IsOk());
  ASSERT_EQ(syms->size(), 2u);
  EXPECT_EQ((*syms)[0].name.size(), 300u);
  EXPECT_EQ((*syms)[1].name, "after");
}

TEST(KallsymsDecoderTest, RejectsTruncatedNames) {
  Tables t;
  t.AddText("Tone", -1);
  t.AddText("Ttwo", -2);
  t.names.resize(t.names.size() - 2);
  EXPECT_THAT(KallsymsDecoder::Decode(t.View()),
              StatusIs(Code::kInvalidArgument, HasSubstr("kallsyms_names truncated at symbol 1 of 2")));
}

TEST(KallsymsDecoderTest, RejectsShortOffsetsAndAbsurdCounts) {
  Tables t;
  t.AddText("Tone", -1);
  KallsymsTables v = t.View();
  v.num_syms = 2;
  EXPECT_THAT(KallsymsDecoder::Decode(v),
              StatusIs(Code::kInvalidArgument, HasSubstr("kallsyms_offsets holds 1 entries for 2 symbols")));
  v.num_syms = KallsymsDecoder::kMaxSymbols + 1;
  EXPECT_THAT(KallsymsDecoder::Decode(v), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds the limit")));
}

TEST(KallsymsDecoderTest, RejectsBadTokenTables) {
  Tables t;
  t.AddText("Tone", -1);
  KallsymsTables v = t.View();
  std::vector<std::uint8_t> index = t.token_index;
  const std::uint16_t bad = 60000;
  std::memcpy(&index[2 * 7], &bad, 2);
  v.token_index = index;
  EXPECT_THAT(KallsymsDecoder::Decode(v),
              StatusIs(Code::kInvalidArgument, HasSubstr("kallsyms token 7 offset 60000 is outside")));
  std::vector<std::uint8_t> table(t.token_table.begin(), t.token_table.end() - 1);  // last NUL cut
  v = t.View();
  v.token_table = table;
  EXPECT_THAT(KallsymsDecoder::Decode(v), StatusIs(Code::kInvalidArgument, HasSubstr("token 255 has no NUL")));
  v = t.View();
  v.token_index = std::span(t.token_index).first(100);
  EXPECT_THAT(KallsymsDecoder::Decode(v), StatusIs(Code::kInvalidArgument, HasSubstr("not 512")));
}

TEST(KallsymsDecoderTest, RejectsOverlongNames) {
  Tables t;
  std::vector<std::uint8_t> tokens(200, 0x80);  // 200 x "_sym" = 800 characters
  tokens[0] = 'T';
  t.Add(tokens, -1);
  EXPECT_THAT(KallsymsDecoder::Decode(t.View()),
              StatusIs(Code::kInvalidArgument, HasSubstr("longer than 512 characters")));
}

TEST(KallsymsDecoderTest, LocateNamesTheMissingSymbol) {
  auto v = Vmcoreinfo::Parse("OSRELEASE=6.1\nSYMBOL(kallsyms_num_syms)=ffffffff81000000\n");
  ASSERT_THAT(v, IsOk());
  EXPECT_THAT(KallsymsDecoder::Locate(*v),
              StatusIs(Code::kNotFound, HasSubstr("SYMBOL(kallsyms_names)")));
}

}  // namespace
}  // namespace hv::patcher
