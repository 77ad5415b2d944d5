#include "guest-agent/wire_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hv::agent {
namespace {

using ::testing::HasSubstr;
using Outcome = FrameDecoder::Outcome;

TEST(WireFormatTest, EncodesABigEndianLength) {
  EXPECT_EQ(EncodeFrame("abc"), std::string("\x00\x00\x00\x03" "abc", 7));
  EXPECT_EQ(EncodeDelimitedFrame(""), std::string("\xff\x00\x00\x00\x00", 5));
}

TEST(WireFormatTest, ReassemblesFramesFromShortReads) {
  const std::string stream = EncodeFrame("first") + EncodeFrame("") + EncodeFrame("third");
  FrameDecoder d(1024);
  std::vector<std::string> frames;
  std::string payload;
  for (char c : stream) {
    d.Append(&c, 1);
    while (d.Next(&payload, nullptr) == Outcome::kFrame) frames.push_back(payload);
  }
  EXPECT_THAT(frames, ::testing::ElementsAre("first", "", "third"));
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(WireFormatTest, SkipsLeadingDelimiters) {
  FrameDecoder d(1024);
  d.Append("\xff\xff" + EncodeFrame("x"));
  std::string payload;
  ASSERT_EQ(d.Next(&payload, nullptr), Outcome::kFrame);
  EXPECT_EQ(payload, "x");
}

TEST(WireFormatTest, RefusesAnOversizedLengthWithoutWaitingForIt) {
  FrameDecoder d(100);
  d.Append(std::string("\x00\x00\x00\x65", 4));  // 101
  std::string payload, why;
  EXPECT_EQ(d.Next(&payload, &why), Outcome::kMalformed);
  EXPECT_THAT(why, HasSubstr("frame length 101 exceeds the limit of 100 bytes"));
  // A header starting with a byte other than 0x00 is not a frame either.
  FrameDecoder g(1u << 20);
  g.Append(std::string("\x41\x00\x00\x01", 4));
  EXPECT_EQ(g.Next(&payload, &why), Outcome::kMalformed);
}

TEST(WireFormatTest, SkipToDelimiterResynchronizes) {
  FrameDecoder d(100);
  d.Append(std::string("garbage\x00\x01") + EncodeDelimitedFrame("ok"));
  std::string payload;
  ASSERT_EQ(d.Next(&payload, nullptr), Outcome::kMalformed);
  d.SkipToDelimiter();
  ASSERT_EQ(d.Next(&payload, nullptr), Outcome::kFrame);
  EXPECT_EQ(payload, "ok");
}

TEST(WireFormatTest, RejectLastFrameFindsASyncSwallowedByABogusLength) {
  FrameDecoder d(100);
  // A 12-byte frame whose payload swallows a delimited frame.
  d.Append(std::string("\x00\x00\x00\x0c" "ab", 6) + EncodeDelimitedFrame("sync") + "z");
  std::string payload;
  ASSERT_EQ(d.Next(&payload, nullptr), Outcome::kFrame);
  EXPECT_EQ(payload.size(), 12u);
  d.RejectLastFrame();
  ASSERT_EQ(d.Next(&payload, nullptr), Outcome::kFrame);
  EXPECT_EQ(payload, "sync");
}

TEST(WireFormatTest, FindSyncDiscardsEverythingBeforeTheMatchingReply) {
  FrameDecoder d(1024);
  const auto is_ours = [](std::string_view p) { return p == "nonce-2"; };
  // A stale response, garbage with delimiters in it, an old sync reply, then ours.
  d.Append(EncodeFrame("stale \xff response") + "\xff\xff\x00" + EncodeDelimitedFrame("nonce-1"));
  EXPECT_FALSE(d.FindSync(64, is_ours));
  d.Append(EncodeDelimitedFrame("nonce-2").substr(0, 3));
  EXPECT_FALSE(d.FindSync(64, is_ours));  // partial candidate kept
  d.Append(EncodeDelimitedFrame("nonce-2").substr(3) + EncodeFrame("next"));
  EXPECT_TRUE(d.FindSync(64, is_ours));
  std::string payload;
  ASSERT_EQ(d.Next(&payload, nullptr), Outcome::kFrame);
  EXPECT_EQ(payload, "next");
}

TEST(WireFormatTest, FindSyncIgnoresCandidatesOverTheSyncLimit) {
  FrameDecoder d(1024);
  d.Append(EncodeDelimitedFrame(std::string(65, 'n')));
  EXPECT_FALSE(d.FindSync(64, [](std::string_view) { return true; }));
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(WireFormatTest, FindSyncKeepsMemoryBoundedUnderGarbage) {
  FrameDecoder d(1024);
  const std::string junk(64 * 1024, 'j');
  for (int i = 0; i < 100; ++i) {
    d.Append(junk);
    EXPECT_FALSE(d.FindSync(64, [](std::string_view) { return true; }));
    EXPECT_EQ(d.buffered(), 0u);
  }
}

}  // namespace
}  // namespace hv::agent
