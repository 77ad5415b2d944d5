#include "base/status.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "status_matchers.h"

namespace hv {
namespace {

using ::testing::HasSubstr;

Result<int> Half(int v) {
  if (v % 2) return InvalidArgument("odd value '" + std::to_string(v) + "'");
  return v / 2;
}

Result<int> Quarter(int v) {
  HV_ASSIGN_OR_RETURN(int h, Half(v));
  HV_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusTest, ContextIsPrependedAndHintKept) {
  Status s = InvalidArgument("unsupported relocation type R_X86_64_GOTPCREL").WithHint("rebuild");
  s = s.WithContext("section '.rela.text' entry 12").WithContext("loading patch 'fix.ko'");
  EXPECT_EQ(s.message(),
            "loading patch 'fix.ko': section '.rela.text' entry 12: unsupported relocation type "
            "R_X86_64_GOTPCREL");
  EXPECT_EQ(s.hint(), "rebuild");
  EXPECT_EQ(s.ToString(), s.message() + "\nhint: rebuild");
  EXPECT_TRUE(Status::Ok().WithContext("x").ok());
}

TEST(StatusTest, AssignOrReturnPropagates) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_THAT(Quarter(6), StatusIs(Code::kInvalidArgument, HasSubstr("odd value '3'")));
}

TEST(StatusTest, ResultFromOkStatusIsAnError) {
  Result<int> r = Status::Ok();
  EXPECT_THAT(r, StatusIs(Code::kInternal, HasSubstr("Ok status")));
}

TEST(StatusTest, ErrnoErrorNamesTheOsError) {
  EXPECT_THAT(ErrnoError("open '/x'", ENOENT),
              StatusIs(Code::kIo, "open '/x': No such file or directory"));
}

}  // namespace
}  // namespace hv
