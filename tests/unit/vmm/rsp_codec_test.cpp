#include "vmm/rsp_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"

namespace hv::vmm {
namespace {

using ::testing::HasSubstr;
using Kind = RspEvent::Kind;

std::vector<RspEvent> Drain(RspDecoder& d) {
  std::vector<RspEvent> out;
  while (d.HasEvent()) out.push_back(d.Next());
  return out;
}

TEST(RspCodecTest, Checksum) {
  EXPECT_EQ(RspChecksum("OK"), 0x9a);
  EXPECT_EQ(RspChecksum(""), 0);
  EXPECT_EQ(EncodeRspPacket("g"), "$g#67");
  EXPECT_EQ(EncodeRspPacket("qfThreadInfo"), "$qfThreadInfo#bb");
}

TEST(RspCodecTest, EscapesSpecialBytes) {
  EXPECT_EQ(RspEscape("a$b#c}d*e"), "a}\x04" "b}\x03" "c}]d}\x0a" "e");
  auto r = RspUnescape(RspEscape("a$b#c}d*e"), 100);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(*r, "a$b#c}d*e");
  // The checksum covers the escaped bytes as sent.
  const std::string p = EncodeRspPacket("}");
  EXPECT_EQ(p, "$}]#da");
}

TEST(RspCodecTest, RunLengthDecoding) {
  // "0* " is '0' followed by 3 more: ' ' is 32, 32 - 29 = 3.
  auto r = RspUnescape("0* ", 100);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(*r, "0000");
  auto r2 = RspUnescape("ab*\"c", 100);  // '"' is 34: 5 repeats
  ASSERT_THAT(r2, IsOk());
  EXPECT_EQ(*r2, "abbbbbbc");
  // RLE repeats the decoded (unescaped) byte.
  auto r3 = RspUnescape("}]* ", 100);
  ASSERT_THAT(r3, IsOk());
  EXPECT_EQ(*r3, "}}}}");
}

TEST(RspCodecTest, MalformedBodies) {
  EXPECT_THAT(RspUnescape("abc}", 100), StatusIs(Code::kInvalidArgument, HasSubstr("inside an escape")));
  EXPECT_THAT(RspUnescape("* ", 100), StatusIs(Code::kInvalidArgument, HasSubstr("nothing to repeat")));
  EXPECT_THAT(RspUnescape("a*", 100), StatusIs(Code::kInvalidArgument, HasSubstr("without a count")));
  EXPECT_THAT(RspUnescape("a*\x01", 100), StatusIs(Code::kInvalidArgument, HasSubstr("count")));
  // RLE cannot expand beyond the bound.
  EXPECT_THAT(RspUnescape("a*~*~*~", 200), StatusIs(Code::kInvalidArgument, HasSubstr("beyond 200 bytes")));
}

TEST(RspCodecTest, DecodesAcksPacketsAndBadChecksums) {
  RspDecoder d;
  ASSERT_THAT(d.Feed("+$OK#9a-$OK#00junk+"), IsOk());
  auto ev = Drain(d);
  ASSERT_EQ(ev.size(), 5u);
  EXPECT_EQ(ev[0].kind, Kind::kAck);
  EXPECT_EQ(ev[1].kind, Kind::kPacket);
  EXPECT_EQ(ev[1].payload, "OK");
  EXPECT_EQ(ev[2].kind, Kind::kNack);
  EXPECT_EQ(ev[3].kind, Kind::kBadPacket);
  EXPECT_EQ(ev[4].kind, Kind::kAck);
}

TEST(RspCodecTest, RecordedAttachStopReplyThenReply) {
  // Recorded from QEMU 7.2 on attach to a running VM, then the answer to qfThreadInfo:
  // the unsolicited stop reply arrives first and must be recognisable as such.
  RspDecoder d;
  const std::string wire = "$T02thread:01;#04+$m01#ce";
  for (char c : wire) ASSERT_THAT(d.Feed(std::string_view(&c, 1)), IsOk());
  auto ev = Drain(d);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].payload, "T02thread:01;");
  EXPECT_TRUE(IsStopReply(ev[0].payload));
  EXPECT_EQ(ev[1].kind, Kind::kAck);
  EXPECT_EQ(ev[2].payload, "m01");
  EXPECT_FALSE(IsStopReply(ev[2].payload));
  EXPECT_TRUE(IsStopReply("S05"));
  EXPECT_TRUE(IsStopReply("W00"));
  EXPECT_FALSE(IsStopReply("OK"));
  EXPECT_FALSE(IsStopReply(""));
}

TEST(RspCodecTest, EncodedPacketsRoundTrip) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  RspDecoder d;
  ASSERT_THAT(d.Feed(EncodeRspPacket(all)), IsOk());
  ASSERT_TRUE(d.HasEvent());
  RspEvent e = d.Next();
  EXPECT_EQ(e.kind, Kind::kPacket);
  EXPECT_EQ(e.payload, all);
}

TEST(RspCodecTest, OversizePacketPoisons) {
  RspDecoder d(16);
  EXPECT_THAT(d.Feed("$" + std::string(17, 'a')), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds 16 bytes")));
  EXPECT_THAT(d.Feed("+"), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds")));
}

TEST(RspCodecTest, RestartedPacketAbandonsTheTruncatedOne) {
  RspDecoder d;
  ASSERT_THAT(d.Feed("$abc$OK#9a"), IsOk());
  auto ev = Drain(d);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].payload, "OK");
}

TEST(RspCodecTest, MemoryWriteSplitAtTheQemuLimit) {
  std::vector<std::uint8_t> data(kQemuMaxWriteBytes, 0x5a);
  auto one = MemoryWritePackets(0xffffffff81000000ull, data);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].substr(0, 24), "Mffffffff81000000,7f0:5a");
  // Framed, the largest packet stays under QEMU 7.2's 4096-byte line buffer.
  EXPECT_LT(EncodeRspPacket(one[0]).size(), 4096u);

  data.push_back(0xa5);
  auto two = MemoryWritePackets(0xffffffff81000000ull, data);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1], "Mffffffff810007f0,1:a5");
  for (const auto& p : two) EXPECT_LE(p.size(), kQemuMaxPacketPayload);

  // A caller asking for bigger packets is still held under the limit.
  std::vector<std::uint8_t> big(0x3000, 1);
  for (const auto& p : MemoryWritePackets(0x1000, big, 0x2000)) EXPECT_LE(p.size(), kQemuMaxPacketPayload);
  EXPECT_TRUE(MemoryWritePackets(0x1000, {}).empty());
}

TEST(RspCodecTest, MemoryReadPacket) { EXPECT_EQ(MemoryReadPacket(0x1000000, 0x800), "m1000000,800"); }

TEST(RspCodecTest, HexAndReplies) {
  auto b = DecodeHexBytes("0f1F44");
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(*b, (std::vector<std::uint8_t>{0x0f, 0x1f, 0x44}));
  EXPECT_THAT(DecodeHexBytes("0g"), StatusIs(Code::kInvalidArgument, HasSubstr("bad hex character 'g'")));
  EXPECT_THAT(DecodeHexBytes("abc"), StatusIs(Code::kInvalidArgument, HasSubstr("odd length")));
  EXPECT_THAT(CheckRspReply("m1,1", "E14"), StatusIs(Code::kFailedPrecondition, HasSubstr("'m1,1' with E14")));
  EXPECT_THAT(CheckRspReply("QStartNoAckMode", ""), StatusIs(Code::kUnimplemented, HasSubstr("does not support")));
  EXPECT_THAT(CheckRspReply("g", "00ff"), IsOk());
}

}  // namespace
}  // namespace hv::vmm
