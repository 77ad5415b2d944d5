// Error values that cross component boundaries (no exceptions do).
//
// Codes are chosen by what the caller should do next, as in Abseil's status.h:
//   kBusy / kUnavailable / kDeadlineExceeded  -> retry later
//   kFailedPrecondition                       -> fix the state first (build-id mismatch, ftrace owns it)
//   kInvalidArgument / kNotFound              -> bad input (malformed ELF, unknown symbol)
//   kUnimplemented                            -> valid input we do not support yet
//   kInternal / kIo                           -> a bug, or the host OS failed us
//
// Messages follow QEMU's error.h rules: one phrase, no trailing punctuation, quote the object and
// the bad value. Each layer prepends its context with WithContext(). A hint the user can act on
// is kept apart from the message.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace hv {

enum class Code {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kFailedPrecondition,
  kBusy,
  kUnavailable,
  kDeadlineExceeded,
  kUnimplemented,
  kInternal,
  kIo,
};

std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message, std::string hint = {})
      : code_(code), message_(std::move(message)), hint_(std::move(hint)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  const std::string& hint() const { return hint_; }

  // Returns a copy whose message is "context: message". Ok stays Ok.
  Status WithContext(std::string_view context) const;
  // Returns a copy carrying `hint` (replacing any earlier one).
  Status WithHint(std::string hint) const;

  // "message" plus "\nhint: ..." when there is a hint.
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
  std::string hint_;
};

Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status FailedPrecondition(std::string message);
Status Busy(std::string message);
Status Unavailable(std::string message);
Status DeadlineExceeded(std::string message);
Status Unimplemented(std::string message);
Status Internal(std::string message);
// An OS error: "what: strerror(err)". Code kIo.
Status ErrnoError(std::string_view what, int err);

// Either a T or a non-Ok Status. Compiles with g++ 12 and clang 14 (libstdc++'s std::expected
// does not build under clang 14).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) v_ = Status(Code::kInternal, "Result built from an Ok status");
  }
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U&&, T> &&
                                                    !std::is_same_v<std::decay_t<U>, Status> &&
                                                    !std::is_same_v<std::decay_t<U>, T>>>
  Result(U&& value) : v_(T(std::forward<U>(value))) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace hv

#define HV_CONCAT_INNER_(a, b) a##b
#define HV_CONCAT_(a, b) HV_CONCAT_INNER_(a, b)

// Returns the Status from the enclosing function if `expr` (a Status) is not Ok.
#define HV_RETURN_IF_ERROR(expr)                   \
  do {                                             \
    ::hv::Status hv_status_ = (expr);              \
    if (!hv_status_.ok()) return hv_status_;       \
  } while (0)

// `HV_ASSIGN_OR_RETURN(auto x, ResultExpr())`: declares/assigns on success, returns the Status otherwise.
#define HV_ASSIGN_OR_RETURN(lhs, expr) \
  HV_ASSIGN_OR_RETURN_IMPL_(HV_CONCAT_(hv_result_, __LINE__), lhs, expr)
#define HV_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
