#include "qmp/qmp_codec.h"

#include <utility>

namespace hv::qmp {

using nlohmann::json;

Status QmpCodec::Feed(std::string_view bytes) {
  if (!poisoned_.ok()) return poisoned_;
  while (!bytes.empty()) {
    const std::size_t nl = bytes.find('\n');
    const std::string_view chunk = bytes.substr(0, nl);
    if (partial_.size() + chunk.size() > max_line_) {
      poisoned_ = InvalidArgument("QMP line exceeds " + std::to_string(max_line_) + " bytes");
      partial_.clear();
      return poisoned_;
    }
    partial_.append(chunk);
    if (nl == std::string_view::npos) break;
    bytes.remove_prefix(nl + 1);
    std::string line = std::move(partial_);
    partial_.clear();
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    Status s = ParseLine(line);
    if (!s.ok()) {
      poisoned_ = s;
      return s;
    }
  }
  return Status::Ok();
}

QmpMessage QmpCodec::Next() {
  QmpMessage m = std::move(messages_.front());
  messages_.pop_front();
  return m;
}

Status QmpCodec::ParseLine(std::string_view line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    const std::string head(line.substr(0, 40));
    return InvalidArgument("QMP line '" + head + "' is not valid JSON");
  }
  HV_ASSIGN_OR_RETURN(QmpMessage m, Classify(j));
  messages_.push_back(std::move(m));
  return Status::Ok();
}

Result<QmpMessage> QmpCodec::Classify(const json& j) {
  if (!j.is_object()) return InvalidArgument("QMP message is not a JSON object");
  QmpMessage m;
  if (auto it = j.find("id"); it != j.end()) m.id = *it;
  if (auto it = j.find("return"); it != j.end()) {
    m.kind = QmpMessage::Kind::kReturn;
    m.value = *it;
    return m;
  }
  if (auto it = j.find("error"); it != j.end()) {
    m.kind = QmpMessage::Kind::kError;
    if (!it->is_object()) return InvalidArgument("QMP error member is not an object");
    auto cls = it->find("class");
    auto desc = it->find("desc");
    if (cls == it->end() || !cls->is_string() || desc == it->end() || !desc->is_string()) {
      return InvalidArgument("QMP error lacks a string 'class' or 'desc'");
    }
    m.error_class = cls->get<std::string>();
    m.error_desc = desc->get<std::string>();
    return m;
  }
  if (auto it = j.find("event"); it != j.end()) {
    if (!it->is_string()) return InvalidArgument("QMP event name is not a string");
    m.kind = QmpMessage::Kind::kEvent;
    m.event = it->get<std::string>();
    if (auto d = j.find("data"); d != j.end()) m.value = *d;
    return m;
  }
  if (auto it = j.find("QMP"); it != j.end()) {
    m.kind = QmpMessage::Kind::kGreeting;
    m.value = *it;
    return m;
  }
  return InvalidArgument("QMP message has none of 'return', 'error', 'event', 'QMP'");
}

std::string QmpCodec::EncodeCommand(std::string_view name, const json& args, const json& id) {
  json cmd = json::object();
  cmd["execute"] = std::string(name);
  if (!args.is_null() && !(args.is_object() && args.empty())) cmd["arguments"] = args;
  if (!id.is_null()) cmd["id"] = id;
  // Invalid UTF-8 in a caller's string must not throw: replace it.
  return cmd.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace hv::qmp
