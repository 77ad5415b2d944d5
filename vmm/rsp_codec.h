// The gdb remote serial protocol (RSP) wire format, apart from any socket: packet framing,
// checksums, '}' escapes, '*' run-length encoding, acks, and the packets hvpatch sends.
// Pure, so unit tests and fuzz targets drive it with recorded bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::vmm {

// QEMU 7.2's gdbstub reads a packet body into a 4096-byte line buffer (gdbstub.c,
// MAX_PACKET_LENGTH, one byte kept for the NUL) and silently drops anything longer: no reply,
// no nack. An `M` carrying 0x7f0 bytes (4064 hex digits plus "M<addr>,<len>:") stays under
// it with a 16-digit address.
inline constexpr std::size_t kQemuMaxPacketPayload = 4094;
inline constexpr std::size_t kQemuMaxWriteBytes = 0x7f0;
// `m` replies up to 0x800 bytes fit QEMU's reply buffer (PacketSize=1000 hex).
inline constexpr std::size_t kQemuMaxReadBytes = 0x800;

// Sum of the bytes modulo 256.
std::uint8_t RspChecksum(std::string_view raw);

// Escapes '$', '#', '}' and '*' as '}' followed by the byte XOR 0x20.
std::string RspEscape(std::string_view binary);

// "$" + RspEscape(payload) + "#" + two hex digits of the checksum.
std::string EncodeRspPacket(std::string_view payload);

// Undoes escapes and run-length encoding of a packet body. Errors: kInvalidArgument for a
// dangling '}', a '*' with nothing to repeat or without a count, an invalid count, or an
// expansion beyond `max_size`.
Result<std::string> RspUnescape(std::string_view raw, std::size_t max_size);

// One thing the peer sent.
struct RspEvent {
  enum class Kind {
    kAck,        // '+'
    kNack,       // '-': resend the last packet
    kPacket,     // a well-formed packet; `payload` is decoded
    kBadPacket,  // checksum mismatch or malformed body: answer '-'
  };
  Kind kind = Kind::kPacket;
  std::string payload;
};

// Turns the byte stream from a gdbstub into events. Bytes outside packets other than acks are
// ignored, as gdb does. A packet body over `max_raw` bytes poisons the decoder (the peer is
// broken or hostile), so every later Feed() fails the same way.
class RspDecoder {
 public:
  static constexpr std::size_t kDefaultMaxRaw = 1u << 20;

  explicit RspDecoder(std::size_t max_raw = kDefaultMaxRaw) : max_raw_(max_raw) {}

  // Errors: kInvalidArgument for an oversize packet (sticky).
  Status Feed(std::string_view bytes);
  bool HasEvent() const { return !events_.empty(); }
  RspEvent Next();

 private:
  enum class State { kIdle, kBody, kSum1, kSum2 };
  std::size_t max_raw_;
  State state_ = State::kIdle;
  std::string raw_;
  char sum_hi_ = 0;
  std::deque<RspEvent> events_;
  Status poisoned_;
};

// True for a stop reply ('T', 'S') or an exit/termination notice ('W', 'X'): the packets QEMU
// sends when the VM stops, including unsolicited ones (gdb attach, QMP `stop`).
bool IsStopReply(std::string_view payload);

// "m<addr>,<len>" with len <= kQemuMaxReadBytes (the caller splits larger reads).
std::string MemoryReadPacket(std::uint64_t addr, std::size_t len);

// Splits a write into `M<addr>,<len>:<hex>` payloads of at most `max_bytes` data bytes each
// (and never over kQemuMaxPacketPayload characters).
std::vector<std::string> MemoryWritePackets(std::uint64_t addr, std::span<const std::uint8_t> data,
                                            std::size_t max_bytes = kQemuMaxWriteBytes);

// Decodes an even-length hex string. Errors: kInvalidArgument naming the bad character.
Result<std::vector<std::uint8_t>> DecodeHexBytes(std::string_view hex);

// Maps an error reply ("E01", "E14") or an empty reply (unsupported) to a Status; Ok for
// anything else. `what` names the request in the message.
Status CheckRspReply(std::string_view what, std::string_view reply);

}  // namespace hv::vmm
