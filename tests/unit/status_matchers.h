// gMock matchers for hv::Status and hv::Result, in the spirit of Abseil's StatusIs.
//   EXPECT_THAT(r, IsOk());
//   EXPECT_THAT(r, StatusIs(Code::kInvalidArgument, HasSubstr("R_X86_64_GOTPCREL")));
#pragma once

#include <gmock/gmock.h>

#include <string>

#include "base/status.h"

namespace hv {

inline const Status& GetStatus(const Status& s) { return s; }
template <typename T>
const Status& GetStatus(const Result<T>& r) { return r.status(); }

inline void PrintTo(const Status& s, std::ostream* os) {
  *os << CodeName(s.code()) << ": " << s.message();
}
template <typename T>
void PrintTo(const Result<T>& r, std::ostream* os) {
  if (r.ok()) *os << "ok result"; else PrintTo(r.status(), os);
}

MATCHER(IsOk, "is ok") {
  const Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "error " << CodeName(s.code()) << ": " << s.message();
  return s.ok();
}

MATCHER_P2(StatusIs, code, message_matcher,
           std::string("has code ") + std::string(CodeName(code))) {
  const Status& s = GetStatus(arg);
  *result_listener << "status " << CodeName(s.code()) << ": '" << s.message() << "'";
  return s.code() == code &&
         ::testing::ExplainMatchResult(::testing::SafeMatcherCast<const std::string&>(message_matcher),
                                       s.message(), result_listener);
}

}  // namespace hv
