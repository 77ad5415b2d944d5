#include "qmp/qmp_client.h"

#include "base/unix_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace hv::qmp {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

Clock::time_point DeadlineAfter(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

int RemainingMs(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

Code CodeForQmpClass(std::string_view error_class) {
  if (error_class == "CommandNotFound" || error_class == "KVMMissingCap") return Code::kUnimplemented;
  if (error_class == "DeviceNotFound") return Code::kNotFound;
  return Code::kFailedPrecondition;
}

Result<std::unique_ptr<QmpClient>> QmpClient::Connect(const std::string& path,
                                                      const QmpOptions& options) {
  auto connected = ConnectUnixSocket(path, options.timeout_ms);
  if (!connected.ok()) return connected.status().WithContext("connecting to QMP socket '" + path + "'");
  const int fd = *connected;
  std::unique_ptr<QmpClient> c(new QmpClient(fd, path, options));
  const auto deadline = DeadlineAfter(options.timeout_ms);
  for (;;) {
    Result<QmpMessage> m = c->ReadMessage(deadline);
    if (!m.ok()) return m.status().WithContext("waiting for the QMP greeting on '" + path + "'");
    if (m->kind == QmpMessage::Kind::kGreeting) {
      c->greeting_ = std::move(m->value);
      break;
    }
    if (m->kind != QmpMessage::Kind::kEvent) {
      return InvalidArgument("QMP socket '" + path + "' sent a reply before its greeting");
    }
    c->QueueEvent(std::move(*m));
  }
  Result<json> caps = c->Execute("qmp_capabilities");
  if (!caps.ok()) return caps.status().WithContext("negotiating QMP capabilities on '" + path + "'");
  return c;
}

QmpClient::QmpClient(int fd, std::string path, const QmpOptions& options)
    : fd_(fd), path_(std::move(path)), options_(options), codec_(options.max_line) {}

QmpClient::~QmpClient() {
  if (fd_ >= 0) close(fd_);
}

Status QmpClient::SendAll(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("writing to QMP socket '" + path_ + "'", errno);
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return Status::Ok();
}

Result<QmpMessage> QmpClient::ReadMessage(Clock::time_point deadline) {
  char buf[65536];
  while (!codec_.HasMessage()) {
    pollfd p{fd_, POLLIN, 0};
    const int r = poll(&p, 1, RemainingMs(deadline));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("polling QMP socket '" + path_ + "'", errno);
    }
    if (r == 0) return DeadlineExceeded("no QMP message within the timeout");
    const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      broken_ = ErrnoError("reading QMP socket '" + path_ + "'", errno);
      return broken_;
    }
    if (n == 0) {
      broken_ = Unavailable("QMP socket '" + path_ + "' closed by QEMU");
      return broken_;
    }
    Status s = codec_.Feed(std::string_view(buf, static_cast<std::size_t>(n)));
    if (!s.ok()) {
      broken_ = s.WithContext("QMP socket '" + path_ + "'");
      return broken_;
    }
  }
  return codec_.Next();
}

void QmpClient::QueueEvent(QmpMessage m) {
  if (events_.size() >= options_.max_queued_events) events_.pop_front();
  events_.push_back(QmpEvent{std::move(m.event), std::move(m.value)});
}

Result<json> QmpClient::Execute(std::string_view command, const json& arguments) {
  if (!broken_.ok()) return broken_;
  const json id = "hv-" + std::to_string(next_id_++);
  HV_RETURN_IF_ERROR(SendAll(QmpCodec::EncodeCommand(command, arguments, id)));
  const auto deadline = DeadlineAfter(options_.timeout_ms);
  for (;;) {
    Result<QmpMessage> m = ReadMessage(deadline);
    if (!m.ok()) {
      return m.status().WithContext("QMP command '" + std::string(command) + "'");
    }
    switch (m->kind) {
      case QmpMessage::Kind::kEvent:
        QueueEvent(std::move(*m));
        continue;
      case QmpMessage::Kind::kGreeting:
        continue;  // a second greeting is meaningless; ignore it rather than take it as a reply
      case QmpMessage::Kind::kReturn:
        if (m->id != id) continue;  // the late reply to a command that timed out
        return std::move(m->value);
      case QmpMessage::Kind::kError:
        // QEMU answers input it could not parse with an id-less error: that is ours.
        if (!m->id.is_null() && m->id != id) continue;
        return Status(CodeForQmpClass(m->error_class),
                      "'" + std::string(command) + "': " + m->error_class + ": " + m->error_desc);
    }
  }
}

std::vector<Result<json>> QmpClient::ExecuteAll(const std::vector<QmpCall>& calls) {
  if (!broken_.ok()) return std::vector<Result<json>>(calls.size(), broken_);
  std::vector<json> ids;
  std::string bytes;
  for (const QmpCall& c : calls) {
    ids.push_back("hv-" + std::to_string(next_id_++));
    bytes += QmpCodec::EncodeCommand(c.command, c.arguments, ids.back());
  }
  std::vector<Result<json>> out(calls.size(), Internal("no reply read"));
  if (Status sent = SendAll(bytes); !sent.ok()) return std::vector<Result<json>>(calls.size(), sent);
  const auto deadline = DeadlineAfter(options_.timeout_ms);
  // The reply to calls[next] is the next one expected; an id matching none of ours (a late
  // reply to a command that timed out before) is skipped, as in Execute.
  std::size_t next = 0;
  auto index_of = [&](const json& id) -> std::size_t {
    for (std::size_t k = next; k < ids.size(); ++k)
      if (ids[k] == id) return k;
    return ids.size();
  };
  while (next < calls.size()) {
    Result<QmpMessage> m = ReadMessage(deadline);
    if (!m.ok()) {
      for (std::size_t k = next; k < calls.size(); ++k) {
        out[k] = m.status().WithContext("QMP command '" + calls[k].command + "'");
      }
      break;
    }
    std::size_t k = ids.size();
    switch (m->kind) {
      case QmpMessage::Kind::kEvent:
        QueueEvent(std::move(*m));
        continue;
      case QmpMessage::Kind::kGreeting:
        continue;
      case QmpMessage::Kind::kReturn:
        k = index_of(m->id);
        if (k == ids.size()) continue;
        out[k] = std::move(m->value);
        break;
      case QmpMessage::Kind::kError:
        // An id-less error answers input QEMU could not parse: the oldest command unanswered.
        k = m->id.is_null() ? next : index_of(m->id);
        if (k == ids.size()) continue;
        out[k] = Status(CodeForQmpClass(m->error_class), "'" + calls[k].command + "': " + m->error_class + ": " + m->error_desc);
        break;
    }
    // QEMU answers in order: anything before k got no reply of its own.
    for (std::size_t skipped = next; skipped < k; ++skipped) {
      out[skipped] = Internal("QMP command '" + calls[skipped].command + "' got no reply");
    }
    next = k + 1;
  }
  return out;
}

Result<std::string> QmpClient::Hmp(std::string_view command_line) {
  HV_ASSIGN_OR_RETURN(json r, Execute("human-monitor-command",
                                      json{{"command-line", std::string(command_line)}}));
  if (!r.is_string()) {
    return InvalidArgument("HMP '" + std::string(command_line) + "' returned a non-string");
  }
  return r.get<std::string>();
}

std::vector<QmpEvent> QmpClient::TakeEvents() {
  std::vector<QmpEvent> out(std::make_move_iterator(events_.begin()),
                            std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

}  // namespace hv::qmp
