#include "base/status.h"

#include <cstring>

namespace hv {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid_argument";
    case Code::kNotFound: return "not_found";
    case Code::kFailedPrecondition: return "failed_precondition";
    case Code::kBusy: return "code_busy";
    case Code::kUnavailable: return "unavailable";
    case Code::kDeadlineExceeded: return "deadline_exceeded";
    case Code::kUnimplemented: return "unimplemented";
    case Code::kInternal: return "internal";
    case Code::kIo: return "io";
  }
  return "unknown";
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m), hint_);
}

Status Status::WithHint(std::string hint) const {
  Status s = *this;
  s.hint_ = std::move(hint);
  return s;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s = message_;
  if (!hint_.empty()) s += "\nhint: " + hint_;
  return s;
}

Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
Status FailedPrecondition(std::string m) { return Status(Code::kFailedPrecondition, std::move(m)); }
Status Busy(std::string m) { return Status(Code::kBusy, std::move(m)); }
Status Unavailable(std::string m) { return Status(Code::kUnavailable, std::move(m)); }
Status DeadlineExceeded(std::string m) { return Status(Code::kDeadlineExceeded, std::move(m)); }
Status Unimplemented(std::string m) { return Status(Code::kUnimplemented, std::move(m)); }
Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }

Status ErrnoError(std::string_view what, int err) {
  std::string m(what);
  m += ": ";
  m += std::strerror(err);
  return Status(Code::kIo, std::move(m));
}

}  // namespace hv
