#include "vmm/gdb_stub_client.h"

#include "base/unix_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/hex.h"

namespace hv::vmm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxRetransmits = 3;
constexpr std::size_t kMaxThreads = 4096;

int RemainingMs(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

Result<std::unique_ptr<GdbStubClient>> GdbStubClient::Connect(const std::string& path,
                                                              int timeout_ms, int attach_wait_ms) {
  auto connected = ConnectUnixSocket(path, timeout_ms);
  if (!connected.ok()) return connected.status().WithContext("connecting to gdbstub socket '" + path + "'");
  const int fd = *connected;
  std::unique_ptr<GdbStubClient> c(new GdbStubClient(fd, path, timeout_ms));
  // Wait for the attach stop reply before sending anything: a command sent first would get
  // its reply after the stop reply, and our two acks would then race the next `cont`.
  const auto deadline = Clock::now() + std::chrono::milliseconds(attach_wait_ms);
  while (c->unsolicited_stops_ == 0) {
    const int left = RemainingMs(deadline);
    if (left == 0) break;
    HV_ASSIGN_OR_RETURN(bool got, c->Fill(left));
    if (!got) break;
    HV_RETURN_IF_ERROR(c->DrainStopReplies().status());
  }
  return c;
}

GdbStubClient::GdbStubClient(int fd, std::string path, int timeout_ms)
    : fd_(fd), path_(std::move(path)), timeout_ms_(timeout_ms) {}

GdbStubClient::~GdbStubClient() {
  if (fd_ >= 0) close(fd_);
}

Status GdbStubClient::SendRaw(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      broken_ = ErrnoError("writing to gdbstub socket '" + path_ + "'", errno);
      return broken_;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return Status::Ok();
}

Result<bool> GdbStubClient::Fill(int wait_ms) {
  pollfd p{fd_, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, wait_ms);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return ErrnoError("polling gdbstub socket '" + path_ + "'", errno);
  if (r == 0) return false;
  char buf[65536];
  const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return true;
    broken_ = ErrnoError("reading gdbstub socket '" + path_ + "'", errno);
    return broken_;
  }
  if (n == 0) {
    broken_ = Unavailable("gdbstub socket '" + path_ + "' closed by QEMU");
    return broken_;
  }
  Status s = decoder_.Feed(std::string_view(buf, static_cast<std::size_t>(n)));
  if (!s.ok()) {
    broken_ = s.WithContext("gdbstub socket '" + path_ + "'");
    return broken_;
  }
  return true;
}

Result<std::string> GdbStubClient::NextPacket(int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  int nacks = 0, bad = 0;
  for (;;) {
    while (decoder_.HasEvent()) {
      RspEvent e = decoder_.Next();
      switch (e.kind) {
        case RspEvent::Kind::kAck:
          break;
        case RspEvent::Kind::kNack:
          if (last_sent_.empty()) break;
          if (++nacks > kMaxRetransmits) {
            broken_ = InvalidArgument("gdbstub rejected a packet " + std::to_string(nacks) + " times");
            return broken_;
          }
          HV_RETURN_IF_ERROR(SendRaw(last_sent_));
          break;
        case RspEvent::Kind::kBadPacket:
          if (++bad > kMaxRetransmits) {
            broken_ = InvalidArgument("gdbstub sent " + std::to_string(bad) + " corrupt packets");
            return broken_;
          }
          HV_RETURN_IF_ERROR(SendRaw(ack_pending_ ? "+-" : "-"));
          ack_pending_ = false;
          break;
        case RspEvent::Kind::kPacket:
          // Acked with the next packet we send, not now (see ack_pending_).
          ack_pending_ = true;
          return std::move(e.payload);
      }
    }
    const int left = RemainingMs(deadline);
    if (left == 0) return DeadlineExceeded("no gdbstub reply within " + std::to_string(timeout_ms) + " ms");
    HV_ASSIGN_OR_RETURN(bool got, Fill(left));
    (void)got;
  }
}

Result<std::string> GdbStubClient::Command(std::string_view payload) {
  if (!broken_.ok()) return broken_;
  last_sent_ = EncodeRspPacket(payload);
  HV_RETURN_IF_ERROR(SendRaw(ack_pending_ ? "+" + last_sent_ : last_sent_));
  ack_pending_ = false;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  for (;;) {
    Result<std::string> p = NextPacket(RemainingMs(deadline));
    if (!p.ok()) {
      return p.status().WithContext("gdbstub '" + std::string(payload.substr(0, 32)) + "'");
    }
    if (IsStopReply(*p)) {
      ++unsolicited_stops_;
      continue;
    }
    return p;
  }
}

Result<int> GdbStubClient::DrainStopReplies() {
  if (!broken_.ok()) return broken_;
  int n = 0;
  // Bounded: a stub that keeps talking must not keep us here.
  for (int round = 0; round < 64; ++round) {
    HV_ASSIGN_OR_RETURN(bool got, Fill(0));
    bool had_event = decoder_.HasEvent();
    while (decoder_.HasEvent()) {
      Result<std::string> p = NextPacket(0);
      if (!p.ok()) {
        if (p.status().code() == Code::kDeadlineExceeded) break;
        return p.status();
      }
      if (IsStopReply(*p)) {
        ++n;
        ++unsolicited_stops_;
      }
    }
    if (!got && !had_event) return n;
  }
  return n;
}

Result<std::vector<std::string>> GdbStubClient::CommandBatch(std::span<const std::string> payloads) {
  if (!broken_.ok()) return broken_;
  if (payloads.size() > kMaxBatch) {
    return InvalidArgument("gdbstub batch of " + std::to_string(payloads.size()) + " packets exceeds " +
                           std::to_string(kMaxBatch));
  }
  std::string wire = ack_pending_ ? "+" : "";
  for (const std::string& p : payloads) wire += EncodeRspPacket(p);
  last_sent_.clear();  // nothing to retransmit: see the header
  HV_RETURN_IF_ERROR(SendRaw(wire));
  ack_pending_ = false;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  std::vector<std::string> replies;
  while (replies.size() < payloads.size()) {
    Result<std::string> p = NextPacket(RemainingMs(deadline));
    if (!p.ok()) {
      return p.status().WithContext("gdbstub '" + payloads[replies.size()].substr(0, 32) + "' (in a batch of " +
                                    std::to_string(payloads.size()) + ")");
    }
    if (IsStopReply(*p)) {
      ++unsolicited_stops_;
      continue;
    }
    replies.push_back(std::move(*p));
  }
  return replies;
}

Result<bool> GdbStubClient::StopIfRunning() {
  std::vector<std::vector<std::uint8_t>> none;
  return StopIfRunning({}, none);
}

namespace {

std::vector<std::string> RegisterReads(std::span<const std::string> threads) {
  std::vector<std::string> batch;
  for (const std::string& t : threads) {
    batch.push_back("Hg" + t);
    batch.push_back("g");
  }
  return batch;
}

// The replies to RegisterReads(threads), decoded.
Status DecodeRegisterReplies(std::span<const std::string> threads, std::span<const std::string> batch,
                             std::span<const std::string> replies, std::vector<std::vector<std::uint8_t>>& out) {
  for (std::size_t k = 0; k < threads.size(); ++k) {
    const std::string& hg = batch[2 * k];
    HV_RETURN_IF_ERROR(CheckRspReply(hg, replies[2 * k]));
    if (replies[2 * k] != "OK") {
      return InvalidArgument("gdbstub answered '" + replies[2 * k].substr(0, 16) + "' to '" + hg + "'");
    }
    HV_RETURN_IF_ERROR(CheckRspReply("g", replies[2 * k + 1]));
    Result<std::vector<std::uint8_t>> bytes = DecodeHexBytes(replies[2 * k + 1]);
    if (!bytes.ok()) return bytes.status().WithContext("gdbstub 'g' reply for thread " + threads[k]);
    out.push_back(std::move(*bytes));
  }
  return Status::Ok();
}

}  // namespace

Result<bool> GdbStubClient::StopIfRunning(std::span<const std::string> threads,
                                          std::vector<std::vector<std::uint8_t>>& registers) {
  if (2 * threads.size() + 1 > kMaxBatch) {
    return InvalidArgument("registers of " + std::to_string(threads.size()) + " threads do not fit in one batch");
  }
  HV_RETURN_IF_ERROR(DrainStopReplies().status());
  const std::vector<std::string> reads = RegisterReads(threads);
  last_sent_ = EncodeRspPacket("qC");
  std::string wire = "+\x03" + last_sent_;
  for (const std::string& p : reads) wire += EncodeRspPacket(p);
  if (!reads.empty()) last_sent_.clear();  // a batch: nothing to retransmit (see CommandBatch)
  HV_RETURN_IF_ERROR(SendRaw(wire));
  ack_pending_ = false;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  bool stopped = false;
  bool answered_qc = false;
  std::vector<std::string> replies;
  while (replies.size() < reads.size() || !answered_qc) {
    Result<std::string> p = NextPacket(RemainingMs(deadline));
    if (!p.ok()) return p.status().WithContext("gdbstub interrupt");
    if (IsStopReply(*p)) {
      stopped = stopped || !answered_qc;  // only a stop before the qC answer is ours
      ++unsolicited_stops_;
      continue;
    }
    if (!answered_qc) {
      HV_RETURN_IF_ERROR(CheckRspReply("qC", *p));
      if (p->rfind("QC", 0) != 0) return InvalidArgument("gdbstub answered '" + p->substr(0, 16) + "' to 'qC'");
      answered_qc = true;
      continue;
    }
    replies.push_back(std::move(*p));
  }
  // A bad register reply is not this call's error: it must still say whether it stopped the
  // VM, so that the VM is resumed. The caller reads the registers again and reports it.
  registers.clear();
  if (!DecodeRegisterReplies(threads, reads, replies, registers).ok()) registers.clear();
  return stopped;
}

Status GdbStubClient::SetPhysicalMode(bool physical) {
  const std::string cmd = physical ? "Qqemu.PhyMemMode:1" : "Qqemu.PhyMemMode:0";
  HV_ASSIGN_OR_RETURN(std::string r, Command(cmd));
  HV_RETURN_IF_ERROR(CheckRspReply(cmd, r));
  if (r != "OK") return InvalidArgument("gdbstub answered '" + r + "' to '" + cmd + "'");
  return Status::Ok();
}

Result<std::vector<std::string>> GdbStubClient::Threads() {
  std::vector<std::string> out;
  HV_ASSIGN_OR_RETURN(std::string r, Command("qfThreadInfo"));
  // Bounded in rounds too: a stub answering "m" with no ids forever must not hold us.
  for (std::size_t round = 0; !r.empty() && r[0] == 'm'; ++round) {
    if (round >= kMaxThreads) return InvalidArgument("gdbstub thread list does not end");
    std::size_t start = 1;
    while (start <= r.size()) {
      const std::size_t comma = r.find(',', start);
      const std::string id = r.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!id.empty()) out.push_back(id);
      if (out.size() > kMaxThreads) return InvalidArgument("gdbstub lists more than 4096 threads");
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    HV_ASSIGN_OR_RETURN(r, Command("qsThreadInfo"));
  }
  if (r != "l") {
    HV_RETURN_IF_ERROR(CheckRspReply("qfThreadInfo", r));
    return InvalidArgument("gdbstub thread list ended with '" + r.substr(0, 16) + "'");
  }
  if (out.empty()) return InvalidArgument("gdbstub lists no threads");
  return out;
}

Status GdbStubClient::SelectThread(std::string_view thread) {
  const std::string cmd = "Hg" + std::string(thread);
  HV_ASSIGN_OR_RETURN(std::string r, Command(cmd));
  HV_RETURN_IF_ERROR(CheckRspReply(cmd, r));
  if (r != "OK") return InvalidArgument("gdbstub answered '" + r + "' to '" + cmd + "'");
  return Status::Ok();
}

Result<std::vector<std::uint8_t>> GdbStubClient::ReadRegisters() {
  HV_ASSIGN_OR_RETURN(std::string r, Command("g"));
  HV_RETURN_IF_ERROR(CheckRspReply("g", r));
  Result<std::vector<std::uint8_t>> bytes = DecodeHexBytes(r);
  if (!bytes.ok()) return bytes.status().WithContext("gdbstub 'g' reply");
  return bytes;
}

Result<std::vector<std::vector<std::uint8_t>>> GdbStubClient::ReadRegistersOf(
    std::span<const std::string> threads) {
  std::vector<std::vector<std::uint8_t>> out;
  for (std::size_t first = 0; first < threads.size(); first += kMaxBatch / 2) {
    const std::size_t n = std::min(kMaxBatch / 2, threads.size() - first);
    const std::span<const std::string> some = threads.subspan(first, n);
    const std::vector<std::string> batch = RegisterReads(some);
    HV_ASSIGN_OR_RETURN(std::vector<std::string> replies, CommandBatch(batch));
    HV_RETURN_IF_ERROR(DecodeRegisterReplies(some, batch, replies, out));
  }
  return out;
}

Result<std::string> GdbStubClient::ReadXfer(std::string_view object, std::string_view annex,
                                            std::size_t max_bytes) {
  std::string out;
  for (;;) {
    char range[48];
    std::snprintf(range, sizeof(range), ":%zx,%x", out.size(), 0xf00);
    const std::string cmd = "qXfer:" + std::string(object) + ":read:" + std::string(annex) + range;
    HV_ASSIGN_OR_RETURN(std::string r, Command(cmd));
    HV_RETURN_IF_ERROR(CheckRspReply(cmd, r));
    if (r[0] != 'm' && r[0] != 'l') {
      return InvalidArgument("gdbstub answered '" + r.substr(0, 16) + "' to '" + cmd + "'");
    }
    out.append(r, 1);
    if (out.size() > max_bytes) {
      return InvalidArgument("qXfer '" + std::string(annex) + "' exceeds " + std::to_string(max_bytes) + " bytes");
    }
    if (r[0] == 'l') return out;
    if (r.size() == 1) return InvalidArgument("qXfer '" + std::string(annex) + "' made no progress");
  }
}

Status GdbStubClient::ReadMemory(std::uint64_t addr, std::span<std::uint8_t> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    const std::size_t n = std::min(kQemuMaxReadBytes, out.size() - done);
    HV_ASSIGN_OR_RETURN(std::string r, Command(MemoryReadPacket(addr + done, n)));
    Status s = CheckRspReply("m", r);
    if (!s.ok()) return s.WithContext("reading " + Hex(addr + done));
    HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> bytes, DecodeHexBytes(r));
    if (bytes.size() != n) {
      return InvalidArgument("gdbstub returned " + std::to_string(bytes.size()) + " bytes for " +
                             std::to_string(n) + " at " + Hex(addr + done));
    }
    std::memcpy(out.data() + done, bytes.data(), n);
    done += n;
  }
  return Status::Ok();
}

Result<std::vector<std::vector<std::uint8_t>>> GdbStubClient::ReadMemoryAt(std::span<const std::uint64_t> addrs,
                                                                           std::size_t bytes) {
  if (bytes == 0 || bytes > kQemuMaxReadBytes) {
    return InvalidArgument("a pipelined read of " + std::to_string(bytes) + " bytes (1.." +
                           std::to_string(kQemuMaxReadBytes) + ")");
  }
  std::vector<std::vector<std::uint8_t>> out;
  for (std::size_t first = 0; first < addrs.size(); first += kMaxBatch) {
    const std::size_t n = std::min(kMaxBatch, addrs.size() - first);
    std::vector<std::string> packets;
    for (std::size_t i = 0; i < n; ++i) packets.push_back(MemoryReadPacket(addrs[first + i], bytes));
    HV_ASSIGN_OR_RETURN(std::vector<std::string> replies, CommandBatch(packets));
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t addr = addrs[first + i];
      Status s = CheckRspReply("m", replies[i]);
      if (!s.ok()) return s.WithContext("reading " + Hex(addr));
      HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> got, DecodeHexBytes(replies[i]));
      if (got.size() != bytes) {
        return InvalidArgument("gdbstub returned " + std::to_string(got.size()) + " bytes for " +
                               std::to_string(bytes) + " at " + Hex(addr));
      }
      out.push_back(std::move(got));
    }
  }
  return out;
}

Status GdbStubClient::WriteMemory(std::uint64_t addr, std::span<const std::uint8_t> data) {
  const std::vector<std::string> packets = MemoryWritePackets(addr, data);
  // Pipelined: a 4 KiB page is two packets, one round trip.
  for (std::size_t first = 0; first < packets.size(); first += kMaxBatch) {
    const std::span<const std::string> batch(packets.data() + first, std::min(kMaxBatch, packets.size() - first));
    HV_ASSIGN_OR_RETURN(std::vector<std::string> replies, CommandBatch(batch));
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const std::string& p = batch[i];
      Status s = CheckRspReply("M", replies[i]);
      if (!s.ok()) return s.WithContext("writing at " + p.substr(1, p.find(',') - 1));
      if (replies[i] != "OK") return InvalidArgument("gdbstub answered '" + replies[i].substr(0, 16) + "' to M");
    }
  }
  return Status::Ok();
}

}  // namespace hv::vmm
