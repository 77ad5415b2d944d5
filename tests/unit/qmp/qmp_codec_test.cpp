#include "qmp/qmp_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"

namespace hv::qmp {
namespace {

using ::testing::HasSubstr;
using Kind = QmpMessage::Kind;

// Recorded from QEMU 7.2 (qemu-system-x86_64 -qmp unix:...): greeting, capabilities, a stop
// with its STOP event arriving before the reply, then an error reply.
constexpr char kTranscript[] =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
    "\"package\": \"Debian 1:7.2+dfsg-7+deb12u18\"}, \"capabilities\": [\"oob\"]}}\r\n"
    "{\"return\": {}, \"id\": \"hv-1\"}\r\n"
    "{\"timestamp\": {\"seconds\": 1732262400, \"microseconds\": 12345}, \"event\": \"STOP\"}\r\n"
    "{\"return\": {}, \"id\": \"hv-2\"}\r\n"
    "{\"id\": \"hv-3\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command "
    "nosuch has not been found\"}}\r\n";

std::vector<QmpMessage> Drain(QmpCodec& c) {
  std::vector<QmpMessage> out;
  while (c.HasMessage()) out.push_back(c.Next());
  return out;
}

TEST(QmpCodecTest, ClassifiesRecordedTranscript) {
  QmpCodec c;
  ASSERT_THAT(c.Feed(kTranscript), IsOk());
  auto m = Drain(c);
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0].kind, Kind::kGreeting);
  EXPECT_EQ(m[0].value["version"]["qemu"]["major"], 7);
  EXPECT_EQ(m[1].kind, Kind::kReturn);
  EXPECT_EQ(m[1].id, "hv-1");
  EXPECT_EQ(m[2].kind, Kind::kEvent);
  EXPECT_EQ(m[2].event, "STOP");
  EXPECT_TRUE(m[2].id.is_null());
  EXPECT_EQ(m[3].kind, Kind::kReturn);
  EXPECT_EQ(m[3].id, "hv-2");
  EXPECT_EQ(m[4].kind, Kind::kError);
  EXPECT_EQ(m[4].id, "hv-3");
  EXPECT_EQ(m[4].error_class, "CommandNotFound");
  EXPECT_EQ(m[4].error_desc, "The command nosuch has not been found");
}

TEST(QmpCodecTest, ReassemblesLinesSplitAtEveryByte) {
  QmpCodec c;
  const std::string t = kTranscript;
  for (char ch : t) ASSERT_THAT(c.Feed(std::string_view(&ch, 1)), IsOk());
  EXPECT_EQ(Drain(c).size(), 5u);
}

TEST(QmpCodecTest, EventDataIsKept) {
  QmpCodec c;
  ASSERT_THAT(c.Feed("{\"event\": \"RESUME\", \"data\": {\"reason\": \"x\"}}\n"), IsOk());
  QmpMessage m = c.Next();
  EXPECT_EQ(m.kind, Kind::kEvent);
  EXPECT_EQ(m.value["reason"], "x");
}

TEST(QmpCodecTest, OversizeLineIsRefusedAndPoisons) {
  QmpCodec c(64);
  EXPECT_THAT(c.Feed("{\"return\": {}}\n"), IsOk());
  const std::string big(100, 'x');
  EXPECT_THAT(c.Feed(big), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds 64 bytes")));
  // Even a valid line afterwards is refused: the stream is out of sync.
  EXPECT_THAT(c.Feed("{\"return\": {}}\n"), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds")));
  EXPECT_EQ(Drain(c).size(), 1u);
}

TEST(QmpCodecTest, OversizeLineAcrossChunksIsRefused) {
  QmpCodec c(64);
  const std::string part(40, 'x');
  EXPECT_THAT(c.Feed(part), IsOk());
  EXPECT_THAT(c.Feed(part), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds 64 bytes")));
}

TEST(QmpCodecTest, InvalidJsonIsRefused) {
  QmpCodec c;
  EXPECT_THAT(c.Feed("{\"return\": \n"), StatusIs(Code::kInvalidArgument, HasSubstr("not valid JSON")));
}

TEST(QmpCodecTest, UnknownShapesAreRefused) {
  QmpCodec c1;
  EXPECT_THAT(c1.Feed("[1,2]\n"), StatusIs(Code::kInvalidArgument, HasSubstr("not a JSON object")));
  QmpCodec c2;
  EXPECT_THAT(c2.Feed("{\"foo\": 1}\n"), StatusIs(Code::kInvalidArgument, HasSubstr("none of")));
  QmpCodec c3;
  EXPECT_THAT(c3.Feed("{\"error\": {\"class\": 3}}\n"),
              StatusIs(Code::kInvalidArgument, HasSubstr("'class' or 'desc'")));
  QmpCodec c4;
  EXPECT_THAT(c4.Feed("{\"event\": 7}\n"), StatusIs(Code::kInvalidArgument, HasSubstr("event name")));
}

TEST(QmpCodecTest, BlankLinesAreSkipped) {
  QmpCodec c;
  ASSERT_THAT(c.Feed("\r\n\n  \n{\"return\": 5}\n"), IsOk());
  ASSERT_TRUE(c.HasMessage());
  EXPECT_EQ(c.Next().value, 5);
  EXPECT_FALSE(c.HasMessage());
}

TEST(QmpCodecTest, EncodesCommands) {
  EXPECT_EQ(QmpCodec::EncodeCommand("stop", nlohmann::json::object(), "hv-1"),
            "{\"execute\":\"stop\",\"id\":\"hv-1\"}\n");
  EXPECT_EQ(QmpCodec::EncodeCommand("human-monitor-command",
                                    nlohmann::json{{"command-line", "info mtree -f"}}, "hv-2"),
            "{\"arguments\":{\"command-line\":\"info mtree -f\"},\"execute\":\"human-monitor-command\","
            "\"id\":\"hv-2\"}\n");
  // Invalid UTF-8 is replaced, never thrown.
  EXPECT_THAT(QmpCodec::EncodeCommand("x", nlohmann::json{{"a", std::string("\xff")}}, nullptr),
              HasSubstr("\"a\""));
}

}  // namespace
}  // namespace hv::qmp
