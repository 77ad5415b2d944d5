#include "vmm/rsp_codec.h"

#include <algorithm>
#include <cstdio>

namespace hv::vmm {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string HexU64(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

std::uint8_t RspChecksum(std::string_view raw) {
  unsigned sum = 0;
  for (unsigned char c : raw) sum += c;
  return static_cast<std::uint8_t>(sum & 0xff);
}

std::string RspEscape(std::string_view binary) {
  std::string out;
  out.reserve(binary.size());
  for (char c : binary) {
    if (c == '$' || c == '#' || c == '}' || c == '*') {
      out.push_back('}');
      out.push_back(static_cast<char>(c ^ 0x20));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string EncodeRspPacket(std::string_view payload) {
  const std::string body = RspEscape(payload);
  const std::uint8_t sum = RspChecksum(body);
  std::string out;
  out.reserve(body.size() + 4);
  out.push_back('$');
  out += body;
  out.push_back('#');
  out.push_back(kHexDigits[sum >> 4]);
  out.push_back(kHexDigits[sum & 15]);
  return out;
}

Result<std::string> RspUnescape(std::string_view raw, std::size_t max_size) {
  std::string out;
  out.reserve(std::min(raw.size(), max_size));
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    if (c == '}') {
      if (i + 1 >= raw.size()) return InvalidArgument("RSP packet ends inside an escape");
      out.push_back(static_cast<char>(raw[++i] ^ 0x20));
    } else if (c == '*') {
      if (out.empty()) return InvalidArgument("RSP run-length marker with nothing to repeat");
      if (i + 1 >= raw.size()) return InvalidArgument("RSP run-length marker without a count");
      const int count = static_cast<unsigned char>(raw[++i]) - 29;
      // gdb's encoder never emits counts that would make '#' or '$' the count character, and
      // printable counts stop at '~' (97 repeats).
      if (count < 3 || count > 97) {
        return InvalidArgument("RSP run-length count " + std::to_string(count) + " is invalid");
      }
      if (out.size() + static_cast<std::size_t>(count) > max_size) {
        return InvalidArgument("RSP packet expands beyond " + std::to_string(max_size) + " bytes");
      }
      out.append(static_cast<std::size_t>(count), out.back());
      continue;
    } else {
      out.push_back(c);
    }
    if (out.size() > max_size) {
      return InvalidArgument("RSP packet expands beyond " + std::to_string(max_size) + " bytes");
    }
  }
  return out;
}

Status RspDecoder::Feed(std::string_view bytes) {
  if (!poisoned_.ok()) return poisoned_;
  for (char c : bytes) {
    switch (state_) {
      case State::kIdle:
        if (c == '+') {
          events_.push_back({RspEvent::Kind::kAck, {}});
        } else if (c == '-') {
          events_.push_back({RspEvent::Kind::kNack, {}});
        } else if (c == '$') {
          raw_.clear();
          state_ = State::kBody;
        }
        break;
      case State::kBody:
        if (c == '#') {
          state_ = State::kSum1;
        } else if (c == '$') {
          raw_.clear();  // a new packet start abandons a truncated one, as gdb does
        } else {
          if (raw_.size() >= max_raw_) {
            poisoned_ = InvalidArgument("RSP packet exceeds " + std::to_string(max_raw_) + " bytes");
            return poisoned_;
          }
          raw_.push_back(c);
        }
        break;
      case State::kSum1:
        sum_hi_ = c;
        state_ = State::kSum2;
        break;
      case State::kSum2: {
        state_ = State::kIdle;
        const int hi = HexValue(sum_hi_), lo = HexValue(c);
        if (hi < 0 || lo < 0 || RspChecksum(raw_) != static_cast<std::uint8_t>(hi * 16 + lo)) {
          events_.push_back({RspEvent::Kind::kBadPacket, {}});
          break;
        }
        Result<std::string> payload = RspUnescape(raw_, max_raw_);
        if (!payload.ok()) {
          events_.push_back({RspEvent::Kind::kBadPacket, {}});
          break;
        }
        events_.push_back({RspEvent::Kind::kPacket, std::move(*payload)});
        break;
      }
    }
  }
  return Status::Ok();
}

RspEvent RspDecoder::Next() {
  RspEvent e = std::move(events_.front());
  events_.pop_front();
  return e;
}

bool IsStopReply(std::string_view payload) {
  if (payload.empty()) return false;
  const char c = payload[0];
  return c == 'T' || c == 'S' || c == 'W' || c == 'X';
}

std::string MemoryReadPacket(std::uint64_t addr, std::size_t len) {
  return "m" + HexU64(addr) + "," + HexU64(len);
}

std::vector<std::string> MemoryWritePackets(std::uint64_t addr, std::span<const std::uint8_t> data,
                                            std::size_t max_bytes) {
  // "M" + 16 address digits + "," + 4 length digits + ":" leaves the rest for hex.
  const std::size_t by_limit = (kQemuMaxPacketPayload - 23) / 2;
  const std::size_t chunk = std::max<std::size_t>(1, std::min(max_bytes, by_limit));
  std::vector<std::string> out;
  for (std::size_t off = 0; off < data.size(); off += chunk) {
    const std::size_t n = std::min(chunk, data.size() - off);
    std::string p = "M" + HexU64(addr + off) + "," + HexU64(n) + ":";
    p.reserve(p.size() + 2 * n);
    for (std::size_t i = 0; i < n; ++i) {
      p.push_back(kHexDigits[data[off + i] >> 4]);
      p.push_back(kHexDigits[data[off + i] & 15]);
    }
    out.push_back(std::move(p));
  }
  return out;
}

Result<std::vector<std::uint8_t>> DecodeHexBytes(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return InvalidArgument("hex string of odd length " + std::to_string(hex.size()));
  }
  std::vector<std::uint8_t> out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      const char bad = hi < 0 ? hex[2 * i] : hex[2 * i + 1];
      return InvalidArgument("bad hex character '" + std::string(1, bad) + "' at offset " +
                             std::to_string(hi < 0 ? 2 * i : 2 * i + 1));
    }
    out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return out;
}

Status CheckRspReply(std::string_view what, std::string_view reply) {
  if (reply.empty()) {
    return Unimplemented("gdbstub does not support '" + std::string(what) + "'");
  }
  if (reply.size() == 3 && reply[0] == 'E' && HexValue(reply[1]) >= 0 && HexValue(reply[2]) >= 0) {
    return Status(Code::kFailedPrecondition,
                  "gdbstub refused '" + std::string(what) + "' with " + std::string(reply));
  }
  return Status::Ok();
}

}  // namespace hv::vmm
