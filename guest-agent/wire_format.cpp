#include "guest-agent/wire_format.h"

#include <cstring>

namespace hv::agent {

namespace {

uint32_t ReadBigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

std::string EncodeFrame(std::string_view payload) {
  const uint32_t n = static_cast<uint32_t>(payload.size());
  std::string out;
  out.reserve(kFrameHeaderSize + payload.size());
  out.push_back(static_cast<char>((n >> 24) & 0xff));
  out.push_back(static_cast<char>((n >> 16) & 0xff));
  out.push_back(static_cast<char>((n >> 8) & 0xff));
  out.push_back(static_cast<char>(n & 0xff));
  out.append(payload);
  return out;
}

std::string EncodeDelimitedFrame(std::string_view payload) {
  std::string out(1, static_cast<char>(kSyncDelimiter));
  out += EncodeFrame(payload);
  return out;
}

void FrameDecoder::Append(const void* data, size_t size) {
  Compact();
  buf_.append(static_cast<const char*>(data), size);
}

void FrameDecoder::Compact() {
  // Erase the consumed prefix only once it dominates, so a run of small frames stays linear.
  if (pos_ > 0 && (pos_ == buf_.size() || pos_ >= 4096 || pos_ * 2 >= buf_.size())) {
    buf_.erase(0, pos_);
    pos_ = 0;
    last_frame_start_ = 0;
  }
}

void FrameDecoder::Clear() {
  buf_.clear();
  pos_ = 0;
  last_frame_start_ = 0;
}

FrameDecoder::Outcome FrameDecoder::Next(std::string* payload, std::string* why) {
  while (buffered() > 0 && data()[0] == kSyncDelimiter) ++pos_;
  if (buffered() < kFrameHeaderSize) return Outcome::kNeedMore;
  const uint8_t* p = data();
  const uint32_t length = ReadBigEndian32(p);
  if (p[0] != 0 || length > max_payload_) {
    if (why) {
      *why = "frame length " + std::to_string(length) + " exceeds the limit of " +
             std::to_string(max_payload_) + " bytes";
    }
    return Outcome::kMalformed;
  }
  if (buffered() < kFrameHeaderSize + length) return Outcome::kNeedMore;
  payload->assign(reinterpret_cast<const char*>(p) + kFrameHeaderSize, length);
  last_frame_start_ = pos_;
  pos_ += kFrameHeaderSize + length;
  return Outcome::kFrame;
}

void FrameDecoder::SkipToDelimiter() {
  if (buffered() == 0) return;
  ++pos_;
  const void* hit = std::memchr(data(), kSyncDelimiter, buffered());
  pos_ = hit ? pos_ + static_cast<size_t>(static_cast<const uint8_t*>(hit) - data()) : buf_.size();
  Compact();
}

void FrameDecoder::RejectLastFrame() {
  if (last_frame_start_ >= pos_) return;
  pos_ = last_frame_start_;
  SkipToDelimiter();
}

bool FrameDecoder::FindSync(size_t max_sync_payload,
                            const std::function<bool(std::string_view)>& accept) {
  for (;;) {
    const void* hit = std::memchr(data(), kSyncDelimiter, buffered());
    if (!hit) {
      pos_ = buf_.size();
      Compact();
      return false;
    }
    pos_ += static_cast<size_t>(static_cast<const uint8_t*>(hit) - data());
    // data()[0] is now a delimiter.
    if (buffered() < 1 + kFrameHeaderSize) {
      Compact();
      return false;
    }
    const uint8_t* p = data() + 1;
    const uint32_t length = ReadBigEndian32(p);
    if (length <= max_sync_payload) {
      if (buffered() < 1 + kFrameHeaderSize + length) {
        Compact();
        return false;
      }
      std::string_view candidate(reinterpret_cast<const char*>(p) + kFrameHeaderSize, length);
      if (accept(candidate)) {
        pos_ += 1 + kFrameHeaderSize + length;
        Compact();
        return true;
      }
    }
    ++pos_;  // not ours: look for the next delimiter
  }
}

}  // namespace hv::agent
