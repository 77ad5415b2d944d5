// A gdb remote-protocol client for QEMU's gdbstub over a unix socket. The wire format is in
// rsp_codec.h; this class owns the socket, acks, retransmits and stop-reply bookkeeping.
//
// QEMU sends a stop reply ("T02thread:01;") whenever the VM stops while a debugger is
// attached: on attach (the attach itself stops the VM), and on every QMP `stop`. Those
// replies answer nothing we asked, so Command() skips them and counts them.
//
// QEMU's gdbstub stops a running VM on any byte it receives (gdbstub.c gdb_read_byte), so
// callers must use this client only while the VM is paused.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "vmm/rsp_codec.h"

namespace hv::vmm {

class GdbStubClient {
 public:
  // Connects to a gdbstub listening on the unix socket `path` and drains the stop reply QEMU
  // sends on attach (waiting up to `attach_wait_ms` for it). Errors: kUnavailable when the
  // socket cannot be connected.
  static Result<std::unique_ptr<GdbStubClient>> Connect(const std::string& path, int timeout_ms,
                                                        int attach_wait_ms = 1000);
  ~GdbStubClient();
  GdbStubClient(const GdbStubClient&) = delete;
  GdbStubClient& operator=(const GdbStubClient&) = delete;

  // Sends `payload` and returns the first reply that is not a stop reply. Errors:
  //   kDeadlineExceeded  no reply within the timeout (QEMU drops oversize packets silently)
  //   kIo / kUnavailable the socket failed or closed
  //   kInvalidArgument   the stub sent garbage (oversize packet, repeated bad checksums)
  Result<std::string> Command(std::string_view payload);

  // Sends every payload at once and returns their replies in order (stop replies skipped):
  // one round trip instead of one per packet. QEMU's gdbstub handles the packets in the order
  // it reads them and answers each, and it abandons waiting for the ack of a reply when the
  // next packet starts (gdb_read_byte), so no ack is needed in between. At most kMaxBatch
  // payloads. A nack cannot say which packet it refuses, so there is no retransmission here
  // (a unix socket does not corrupt bytes): the batch then times out. Errors as Command().
  static constexpr std::size_t kMaxBatch = 64;
  Result<std::vector<std::string>> CommandBatch(std::span<const std::string> payloads);

  // Reads and acks whatever stop replies are already waiting, without blocking. Returns how
  // many there were. Errors as Command().
  Result<int> DrainStopReplies();

  // Stops the VM if it is running, in one round trip, and says whether it was. QEMU's gdbstub
  // calls vm_stop(RUN_STATE_PAUSED) when it reads a byte while the VM runs (gdb_read_byte): the
  // same call as QMP `stop`, so the VM is paused for QMP, libvirt and query-status alike, with
  // every vCPU out of guest code before QEMU writes its stop reply. The client drains the stop
  // replies already waiting, then sends '+' (QEMU swallows other bytes while it waits for the
  // ack of its last packet), an interrupt (0x03), and `qC`: a stop reply before the qC answer
  // means this call stopped the VM. Errors as Command(); kInvalidArgument when the answer to qC
  // is not a thread id.
  Result<bool> StopIfRunning();
  // The same, with the registers of `threads` (as ReadRegistersOf) read in the same round
  // trip: their Hg/g packets follow qC on the wire, and QEMU handles them after the stop, in
  // order. At most kMaxBatch / 2 - 1 threads (kInvalidArgument beyond). `registers` receives
  // one decoded `g` reply per thread, or nothing when a reply is not one (the result still
  // says whether this call stopped the VM).
  Result<bool> StopIfRunning(std::span<const std::string> threads, std::vector<std::vector<std::uint8_t>>& registers);

  // Qqemu.PhyMemMode:1 / :0: m and M then address guest-physical memory.
  Status SetPhysicalMode(bool physical);
  // Thread ids from qfThreadInfo/qsThreadInfo: one per vCPU in vCPU order (bounded to 4096).
  Result<std::vector<std::string>> Threads();
  // Hg<thread>: the thread whose registers `g` reads.
  Status SelectThread(std::string_view thread);
  // The decoded `g` reply of the selected thread.
  Result<std::vector<std::uint8_t>> ReadRegisters();
  // Hg<thread> then `g` for each thread, pipelined (CommandBatch): the decoded registers of
  // each, in order. Errors as SelectThread and ReadRegisters.
  Result<std::vector<std::vector<std::uint8_t>>> ReadRegistersOf(std::span<const std::string> threads);
  // qXfer:<object>:read:<annex>, bounded to `max_bytes`.
  Result<std::string> ReadXfer(std::string_view object, std::string_view annex,
                               std::size_t max_bytes = 1u << 20);
  // m, split into QEMU-sized requests. Errors: kFailedPrecondition when the stub refuses
  // (unmapped address), naming the address.
  Status ReadMemory(std::uint64_t addr, std::span<std::uint8_t> out);
  // `bytes` (at most kQemuMaxReadBytes) at each of `addrs`, pipelined (CommandBatch): one round
  // trip for up to kMaxBatch reads. Errors as ReadMemory, naming the first address refused.
  Result<std::vector<std::vector<std::uint8_t>>> ReadMemoryAt(std::span<const std::uint64_t> addrs,
                                                              std::size_t bytes);
  // M, split so no packet exceeds what QEMU 7.2 accepts (see kQemuMaxWriteBytes).
  Status WriteMemory(std::uint64_t addr, std::span<const std::uint8_t> data);

  int unsolicited_stops() const { return unsolicited_stops_; }

 private:
  GdbStubClient(int fd, std::string path, int timeout_ms);
  Status SendRaw(std::string_view bytes);
  // Reads into the decoder; `wait_ms` 0 means only what is already there. Returns false
  // when nothing arrived in time.
  Result<bool> Fill(int wait_ms);
  // Handles decoder events until a packet arrives (returned) or the deadline passes.
  Result<std::string> NextPacket(int timeout_ms);

  int fd_ = -1;
  std::string path_;
  int timeout_ms_;
  RspDecoder decoder_;
  std::string last_sent_;
  // The ack for the packets received since we last sent one, not sent yet. QEMU's gdbstub
  // remembers only its last packet: the first '+' clears it, and any further byte that arrives
  // while the VM runs stops the VM (gdb_read_byte). QEMU reads the gdbstub and QMP sockets in
  // no fixed order, so acking two stop replies with two '+' right before QMP `cont` could stop
  // the guest again just after it resumed. So acks are coalesced into one '+' that travels in
  // front of the next packet, which is only ever sent while the VM is paused. QEMU in system
  // mode never waits for acks (put_packet_binary loops for one only in user mode): a late ack
  // costs nothing.
  bool ack_pending_ = false;
  int unsolicited_stops_ = 0;
  Status broken_;
};

}  // namespace hv::vmm
