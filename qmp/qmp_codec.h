// The QMP wire format, apart from any socket: bytes in, typed messages out, and commands out.
// Pure, so unit tests feed it recorded transcripts and fuzz targets feed it anything.
#pragma once

#include <cstddef>
#include <deque>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace hv::qmp {

// One message from the QEMU side of a QMP connection.
struct QmpMessage {
  enum class Kind { kGreeting, kReturn, kError, kEvent };
  Kind kind = Kind::kReturn;
  nlohmann::json id;           // the command's id (null when the message carries none)
  nlohmann::json value;        // greeting's "QMP", "return" value, or the event's "data"
  std::string event;           // kEvent: its name ("STOP", "RESUME", ...)
  std::string error_class;     // kError: "GenericError", "CommandNotFound", ...
  std::string error_desc;      // kError: QEMU's human-readable description
};

// Splits the byte stream into lines (QEMU ends each JSON object with "\n" or "\r\n") and
// classifies them. A line longer than `max_line` bytes, or one that is not a JSON object of a
// known shape, poisons the codec: the peer is broken or hostile and the stream cannot be
// resynchronised safely, so every later Feed() returns the same error.
class QmpCodec {
 public:
  static constexpr std::size_t kDefaultMaxLine = 4u << 20;

  explicit QmpCodec(std::size_t max_line = kDefaultMaxLine) : max_line_(max_line) {}

  // Consumes `bytes`; complete messages become available through Next(). Errors:
  //   kInvalidArgument  a line over the size limit, invalid JSON, or an unknown message shape
  //                     (the codec stays in that error)
  Status Feed(std::string_view bytes);

  // The oldest complete message, if any.
  bool HasMessage() const { return !messages_.empty(); }
  QmpMessage Next();

  // Serialises a command: {"execute": name, "arguments": args, "id": id} plus "\n".
  // `arguments` is left out when `args` is null or an empty object.
  static std::string EncodeCommand(std::string_view name, const nlohmann::json& args,
                                   const nlohmann::json& id);

  // Classifies one parsed line (exposed for tests). Errors: kInvalidArgument.
  static Result<QmpMessage> Classify(const nlohmann::json& j);

 private:
  Status ParseLine(std::string_view line);

  std::size_t max_line_;
  std::string partial_;
  std::deque<QmpMessage> messages_;
  Status poisoned_;
};

}  // namespace hv::qmp
