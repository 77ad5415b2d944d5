// A guest shell command's output for a test's comparisons: a failed command is recorded as a
// test failure and yields a marker string, so one EXPECT_EQ on the output says both things.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "base/status.h"

namespace hv::testing {

inline std::string OutputOrFailure(const Result<std::string>& r) {
  if (!r.ok()) {
    ADD_FAILURE() << "guest command failed: " << r.status().message();
    return "<guest command failed>";
  }
  return *r;
}

}  // namespace hv::testing
