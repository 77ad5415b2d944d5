// Framing shared by hvpatch-agent and the host client (the layout is described in
// hvpatch_agent.proto). Pure byte handling, no I/O, so the fuzz target can drive it directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace hv::agent {

// A frame's length field is 4 bytes, big endian. Every limit below is far under 16 MiB, so the first
// byte of a valid frame is always 0x00 and kSyncDelimiter can never start one.
inline constexpr size_t kFrameHeaderSize = 4;
inline constexpr uint8_t kSyncDelimiter = 0xFF;
// Host -> agent. PublishState is the largest request.
inline constexpr size_t kMaxRequestPayload = 1u << 20;
// Agent -> host. Kallsyms chunks are cut well below this.
inline constexpr size_t kMaxResponsePayload = 4u << 20;
// A sync request or response is a few varints.
inline constexpr size_t kMaxSyncPayload = 64;
// Bumped only for incompatible wire changes.
inline constexpr uint32_t kProtocolVersion = 1;

// Returns the 4-byte header followed by `payload`. `payload` must be shorter than 16 MiB.
std::string EncodeFrame(std::string_view payload);
// Returns kSyncDelimiter followed by EncodeFrame(payload).
std::string EncodeDelimitedFrame(std::string_view payload);

// Splits a byte stream into frames. The buffer never holds more than one frame plus what the caller
// appended beyond it, so a caller that appends bounded reads keeps memory bounded.
class FrameDecoder {
 public:
  enum class Outcome {
    kNeedMore,   // no complete frame yet
    kFrame,      // *payload holds the next frame
    kMalformed,  // the stream is not at a frame boundary (see *why); call SkipToDelimiter()
  };

  explicit FrameDecoder(size_t max_payload) : max_payload_(max_payload) {}

  void Append(const void* data, size_t size);
  void Append(std::string_view data) { Append(data.data(), data.size()); }

  // Extracts the next frame. Leading sync delimiters are skipped: they only mark where a delimited
  // frame begins. A header whose length exceeds the limit (or whose first byte is neither 0x00 nor
  // the delimiter) is kMalformed; nothing is consumed then.
  Outcome Next(std::string* payload, std::string* why);

  // Drops the first buffered byte and everything up to (not including) the next sync delimiter.
  // Used to resynchronize after kMalformed, or after a partial frame went stale.
  void SkipToDelimiter();

  // The frame Next() just returned was garbage (not a message): rewinds to its first byte and skips to
  // the next delimiter after it, so a sync frame swallowed by a bogus length is still found. Only
  // valid right after Next() returned kFrame.
  void RejectLastFrame();

  // Scans for a delimited frame (0xFF, header, payload of at most `max_sync_payload` bytes) for which
  // `accept(payload)` is true. Everything before it and the frame itself are consumed; bytes after it
  // stay buffered. Returns false when the buffer holds no such frame yet (bytes that can no longer
  // start one are dropped).
  bool FindSync(size_t max_sync_payload, const std::function<bool(std::string_view)>& accept);

  size_t buffered() const { return buf_.size() - pos_; }
  void Clear();

 private:
  void Compact();
  const uint8_t* data() const { return reinterpret_cast<const uint8_t*>(buf_.data()) + pos_; }

  size_t max_payload_;
  std::string buf_;
  size_t pos_ = 0;  // consumed prefix of buf_
  size_t last_frame_start_ = 0;
};

}  // namespace hv::agent
