// A synchronous QMP client over a unix socket: greeting, capabilities negotiation, commands
// matched to replies by id, asynchronous events queued apart, HMP passthrough, timeouts.
// The wire format lives in QmpCodec; this class only owns the socket and the bookkeeping.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "qmp/qmp_channel.h"
#include "qmp/qmp_codec.h"

namespace hv::qmp {

struct QmpOptions {
  int timeout_ms = 10000;  // per command (and for the greeting)
  std::size_t max_line = QmpCodec::kDefaultMaxLine;
  std::size_t max_queued_events = 1024;  // older events are dropped beyond this
};

class QmpClient final : public QmpChannel {
 public:
  // Connects to the QMP unix socket at `path`, reads the greeting and negotiates
  // capabilities. Errors:
  //   kUnavailable        the socket cannot be connected (QEMU gone, wrong path)
  //   kDeadlineExceeded   no greeting within the timeout
  //   kInvalidArgument    the peer does not speak QMP
  static Result<std::unique_ptr<QmpClient>> Connect(const std::string& path,
                                                    const QmpOptions& options = {});
  ~QmpClient() override;
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Runs `command` and returns its "return" value. Events that arrive meanwhile are queued.
  // Errors:
  //   the QMP error class mapped to a code (CommandNotFound -> kUnimplemented,
  //   DeviceNotFound -> kNotFound, others -> kFailedPrecondition), message
  //   "'command': Class: desc"
  //   kDeadlineExceeded   no reply within the timeout (a late reply is discarded)
  //   kIo / kUnavailable  the socket failed or closed
  //   kInvalidArgument    the peer sent something that is not QMP (connection unusable)
  Result<nlohmann::json> Execute(std::string_view command,
                                 const nlohmann::json& arguments = nlohmann::json::object()) override;

  // Pipelined: every command is sent, then the replies are read (QEMU answers in order).
  std::vector<Result<nlohmann::json>> ExecuteAll(const std::vector<QmpCall>& calls) override;

  // Runs an HMP command through "human-monitor-command" and returns its text output. HMP
  // reports many failures only in that text: callers check it.
  Result<std::string> Hmp(std::string_view command_line) override;

  // Events received so far (oldest first); the queue is emptied.
  std::vector<QmpEvent> TakeEvents() override;

  const nlohmann::json& greeting() const override { return greeting_; }
  const std::string& path() const { return path_; }

 private:
  QmpClient(int fd, std::string path, const QmpOptions& options);
  // Reads until the codec holds a message or the deadline passes.
  Result<QmpMessage> ReadMessage(std::chrono::steady_clock::time_point deadline);
  Status SendAll(std::string_view bytes);
  void QueueEvent(QmpMessage m);

  int fd_ = -1;
  std::string path_;
  QmpOptions options_;
  QmpCodec codec_;
  nlohmann::json greeting_;
  std::deque<QmpEvent> events_;
  std::uint64_t next_id_ = 1;
  Status broken_;  // once the stream is unusable, every call fails with this
};

}  // namespace hv::qmp
