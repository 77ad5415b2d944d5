// GdbStubClient against a scripted stub on a temp-dir unix socket that behaves like QEMU 7.2:
// a stop reply on attach, acks, stop replies nobody asked for, a corrupted packet, a nack,
// and silence for an oversize M.
#include "vmm/gdb_stub_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "status_matchers.h"
#include "vmm/rsp_codec.h"

namespace hv::vmm {
namespace {

using ::testing::HasSubstr;

class FakeStub {
 public:
  // `reply` gets each decoded packet and returns the raw bytes to send back.
  using Reply = std::function<std::string(const std::string& packet)>;

  FakeStub(std::string on_attach, Reply reply) : on_attach_(std::move(on_attach)), reply_(std::move(reply)) {
    char tmpl[] = "/tmp/hv-gdb-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/gdb.sock";
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path_.c_str());
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(listen_fd_, 1), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeStub() {
    if (thread_.joinable()) thread_.join();
    close(listen_fd_);
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }
  // Waits until the client has closed the connection.
  void WaitClosed() { thread_.join(); }
  int acks() const { return acks_; }
  // For each packet received, how many acks had arrived before it.
  const std::vector<int>& acks_before() const { return acks_before_; }
  std::vector<std::string> received() const { return received_; }

 private:
  void Send(int fd, const std::string& s) { (void)!send(fd, s.data(), s.size(), MSG_NOSIGNAL); }
  void Serve() {
    const int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;
    Send(fd, on_attach_);
    RspDecoder d;
    char buf[8192];
    for (;;) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      (void)d.Feed(std::string_view(buf, static_cast<std::size_t>(n)));
      while (d.HasEvent()) {
        RspEvent e = d.Next();
        if (e.kind == RspEvent::Kind::kAck) ++acks_;
        // A retransmission: the script decides what arrives this time (intact, normally).
        if (e.kind == RspEvent::Kind::kNack && !received_.empty()) Send(fd, reply_(received_.back()));
        if (e.kind != RspEvent::Kind::kPacket) continue;
        received_.push_back(e.payload);
        acks_before_.push_back(acks_);
        Send(fd, "+" + reply_(e.payload));
      }
    }
    close(fd);
  }

  std::string on_attach_;
  Reply reply_;
  std::string dir_, path_;
  int listen_fd_ = -1;
  std::atomic<int> acks_{0};
  std::vector<std::string> received_;
  std::vector<int> acks_before_;
  std::thread thread_;
};

TEST(GdbStubClientTest, DrainsAttachStopAndSkipsUnsolicitedOnes) {
  FakeStub stub(EncodeRspPacket("T02thread:01;"), [](const std::string& p) -> std::string {
    if (p == "qfThreadInfo") return EncodeRspPacket("m01,02");
    if (p == "qsThreadInfo") return EncodeRspPacket("l");
    // A QMP `stop` elsewhere: QEMU's stop reply lands before the answer.
    if (p == "Hg02") return EncodeRspPacket("T02thread:02;") + EncodeRspPacket("OK");
    if (p == "g") return EncodeRspPacket("00112233");
    return EncodeRspPacket("");
  });
  auto c = GdbStubClient::Connect(stub.path(), 1000);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ((*c)->unsolicited_stops(), 1);
  auto threads = (*c)->Threads();
  ASSERT_THAT(threads, IsOk());
  EXPECT_EQ(*threads, (std::vector<std::string>{"01", "02"}));
  ASSERT_THAT((*c)->SelectThread("02"), IsOk());
  EXPECT_EQ((*c)->unsolicited_stops(), 2);
  auto g = (*c)->ReadRegisters();
  ASSERT_THAT(g, IsOk());
  EXPECT_EQ(*g, (std::vector<std::uint8_t>{0x00, 0x11, 0x22, 0x33}));
  EXPECT_THAT((*c)->Command("QStartNoAckMode"), IsOk());
  EXPECT_THAT((*c)->SetPhysicalMode(true), StatusIs(Code::kUnimplemented, HasSubstr("Qqemu.PhyMemMode:1")));
}

TEST(GdbStubClientTest, AcksTravelInFrontOfTheNextPacketNeverAlone) {
  // QEMU stops a running VM on any byte: an ack sent alone right before QMP `cont` may be read
  // after it. So each ack goes out with the next request, and the last reply stays unacked.
  FakeStub stub(EncodeRspPacket("T02thread:01;"), [](const std::string& p) -> std::string {
    if (p == "qC") return EncodeRspPacket("QC01");
    return EncodeRspPacket("OK");
  });
  {
    auto c = GdbStubClient::Connect(stub.path(), 1000);
    ASSERT_THAT(c, IsOk());
    ASSERT_THAT((*c)->Command("qC"), IsOk());
    ASSERT_THAT((*c)->Command("Hg01"), IsOk());
    EXPECT_THAT((*c)->DrainStopReplies(), IsOk());
  }
  stub.WaitClosed();
  EXPECT_EQ(stub.received(), (std::vector<std::string>{"qC", "Hg01"}));
  // The attach stop reply's ack came with qC, qC's reply's with Hg01; Hg01's reply: never.
  EXPECT_EQ(stub.acks_before(), (std::vector<int>{1, 2}));
  EXPECT_EQ(stub.acks(), 2);
}

TEST(GdbStubClientTest, StopIfRunningTellsAStopItCausedFromAVmAlreadyPaused) {
  // Like QEMU: the interrupt stops a running VM, whose stop reply then precedes the qC answer.
  bool running = true;
  FakeStub stub(EncodeRspPacket("T02thread:01;"), [&running](const std::string& p) -> std::string {
    if (p == "qC" && running) {
      running = false;
      return EncodeRspPacket("T02thread:01;") + EncodeRspPacket("QC01");
    }
    if (p == "qC") return EncodeRspPacket("QC01");
    // A reply followed by a stop reply from an earlier stop nobody asked for.
    if (p == "Hg01") return EncodeRspPacket("OK") + EncodeRspPacket("T02thread:01;");
    return EncodeRspPacket("E01");
  });
  {
    auto c = GdbStubClient::Connect(stub.path(), 1000);
    ASSERT_THAT(c, IsOk());
    auto first = (*c)->StopIfRunning();
    ASSERT_THAT(first, IsOk());
    EXPECT_TRUE(*first);
    auto second = (*c)->StopIfRunning();
    ASSERT_THAT(second, IsOk());
    EXPECT_FALSE(*second);
    ASSERT_THAT((*c)->SelectThread("01"), IsOk());
    // The stale stop reply is drained first: it does not count as a stop this call caused.
    auto third = (*c)->StopIfRunning();
    ASSERT_THAT(third, IsOk());
    EXPECT_FALSE(*third);
    EXPECT_EQ((*c)->unsolicited_stops(), 3);
  }
  stub.WaitClosed();
  EXPECT_EQ(stub.received(), (std::vector<std::string>{"qC", "qC", "Hg01", "qC"}));
}

TEST(GdbStubClientTest, StopIfRunningReadsRegistersInTheSameRoundTrip) {
  bool running = true;
  std::string selected;
  FakeStub stub("", [&](const std::string& p) -> std::string {
    if (p == "qC" && running) {
      running = false;
      return EncodeRspPacket("T02thread:01;") + EncodeRspPacket("QC01");
    }
    if (p == "qC") return EncodeRspPacket("QC01");
    if (p.rfind("Hg", 0) == 0) {
      if (p == "Hg03") return EncodeRspPacket("E22");
      selected = p.substr(2);
      return EncodeRspPacket("OK");
    }
    if (p == "g") return EncodeRspPacket(selected == "01" ? "aa01" : "bb02");
    return EncodeRspPacket("");
  });
  {
    auto c = GdbStubClient::Connect(stub.path(), 1000, 0);
    ASSERT_THAT(c, IsOk());
    const std::vector<std::string> threads = {"01", "02"};
    std::vector<std::vector<std::uint8_t>> regs;
    auto first = (*c)->StopIfRunning(threads, regs);
    ASSERT_THAT(first, IsOk());
    EXPECT_TRUE(*first);
    EXPECT_EQ(regs, (std::vector<std::vector<std::uint8_t>>{{0xaa, 0x01}, {0xbb, 0x02}}));
    // A bad register reply leaves no registers, and still says whether the VM was stopped.
    const std::vector<std::string> bad = {"01", "03"};
    auto second = (*c)->StopIfRunning(bad, regs);
    ASSERT_THAT(second, IsOk());
    EXPECT_FALSE(*second);
    EXPECT_TRUE(regs.empty());
    const std::vector<std::string> too_many(GdbStubClient::kMaxBatch / 2, "01");
    EXPECT_THAT((*c)->StopIfRunning(too_many, regs), StatusIs(Code::kInvalidArgument, HasSubstr("one batch")));
  }
  stub.WaitClosed();
  EXPECT_EQ(stub.received(), (std::vector<std::string>{"qC", "Hg01", "g", "Hg02", "g", "qC", "Hg01", "g", "Hg03", "g"}));
}

TEST(GdbStubClientTest, StopIfRunningRefusesAnAnswerThatIsNotAThreadId) {
  FakeStub stub("", [](const std::string&) { return EncodeRspPacket("OK"); });
  auto c = GdbStubClient::Connect(stub.path(), 1000, 0);
  ASSERT_THAT(c, IsOk());
  EXPECT_THAT((*c)->StopIfRunning(), StatusIs(Code::kInvalidArgument, HasSubstr("'OK' to 'qC'")));
}

TEST(GdbStubClientTest, ReadsEveryThreadsRegistersInOneBatch) {
  std::string selected;
  FakeStub stub("", [&selected](const std::string& p) -> std::string {
    if (p.rfind("Hg", 0) == 0) {
      if (p == "Hg03") return EncodeRspPacket("E22");
      selected = p.substr(2);
      // A stop reply nobody asked for, in the middle of the batch.
      return selected == "02" ? EncodeRspPacket("T02thread:02;") + EncodeRspPacket("OK") : EncodeRspPacket("OK");
    }
    if (p == "g") return EncodeRspPacket(selected == "01" ? "aa01" : "bb02");
    return EncodeRspPacket("");
  });
  {
    auto c = GdbStubClient::Connect(stub.path(), 1000, 0);
    ASSERT_THAT(c, IsOk());
    const std::vector<std::string> threads = {"01", "02"};
    auto regs = (*c)->ReadRegistersOf(threads);
    ASSERT_THAT(regs, IsOk());
    EXPECT_EQ(*regs, (std::vector<std::vector<std::uint8_t>>{{0xaa, 0x01}, {0xbb, 0x02}}));
    EXPECT_EQ((*c)->unsolicited_stops(), 1);
    const std::vector<std::string> bad = {"01", "03"};
    EXPECT_THAT((*c)->ReadRegistersOf(bad), StatusIs(Code::kFailedPrecondition, HasSubstr("Hg03")));
    const std::vector<std::string> too_many(GdbStubClient::kMaxBatch + 1, "g");
    EXPECT_THAT((*c)->CommandBatch(too_many), StatusIs(Code::kInvalidArgument, HasSubstr("exceeds 64")));
  }
  stub.WaitClosed();
  EXPECT_EQ(stub.received(), (std::vector<std::string>{"Hg01", "g", "Hg02", "g", "Hg01", "g", "Hg03", "g"}));
  // Pipelined: no ack between the packets of a batch, one in front of the next batch.
  EXPECT_EQ(stub.acks_before(), (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
}

TEST(GdbStubClientTest, RetransmitsOnNackAndNacksCorruptPackets) {
  int calls = 0;
  FakeStub stub("", [&calls](const std::string& p) -> std::string {
    if (p == "m1000,4" && calls++ == 0) return "$deadbeef#00";  // wrong checksum: the client nacks
    if (p == "m1000,4") return EncodeRspPacket("deadbeef");
    return EncodeRspPacket("E14");
  });
  auto c = GdbStubClient::Connect(stub.path(), 1000, 50);
  ASSERT_THAT(c, IsOk());
  std::vector<std::uint8_t> out(4);
  ASSERT_THAT((*c)->ReadMemory(0x1000, out), IsOk());
  EXPECT_EQ(out, (std::vector<std::uint8_t>{0xde, 0xad, 0xbe, 0xef}));
  EXPECT_THAT((*c)->ReadMemory(0x2000, out), StatusIs(Code::kFailedPrecondition, HasSubstr("reading 0x2000")));
}

TEST(GdbStubClientTest, ReadsXferInPieces) {
  FakeStub stub("", [](const std::string& p) -> std::string {
    if (p == "qXfer:features:read:target.xml:0,f00") return EncodeRspPacket("m<target>");
    if (p == "qXfer:features:read:target.xml:8,f00") return EncodeRspPacket("l</target>");
    return EncodeRspPacket("E01");
  });
  auto c = GdbStubClient::Connect(stub.path(), 1000, 50);
  ASSERT_THAT(c, IsOk());
  auto x = (*c)->ReadXfer("features", "target.xml");
  ASSERT_THAT(x, IsOk());
  EXPECT_EQ(*x, "<target></target>");
}

TEST(GdbStubClientTest, WritesSplitAndSilenceTimesOut) {
  FakeStub stub("", [](const std::string& p) -> std::string {
    // Like QEMU 7.2, answer nothing for a packet over its line buffer.
    if (p.size() > kQemuMaxPacketPayload) return "";
    if (p[0] == 'M') return EncodeRspPacket("OK");
    return "";
  });
  auto c = GdbStubClient::Connect(stub.path(), 300, 50);
  ASSERT_THAT(c, IsOk());
  std::vector<std::uint8_t> data(3 * kQemuMaxWriteBytes + 5, 0x90);
  EXPECT_THAT((*c)->WriteMemory(0xffffffff81000000ull, data), IsOk());
  EXPECT_THAT((*c)->Command("vMustReply"), StatusIs(Code::kDeadlineExceeded, HasSubstr("'vMustReply'")));
}

}  // namespace
}  // namespace hv::vmm
