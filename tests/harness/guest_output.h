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

// A guest shell command that sleeps 2 s and prints the time it took in centiseconds, from
// /proc/uptime. (`date +%s` counts second marks, and a 2 s sleep can span 3 of them: that
// made three suites flaky, one at a time.)
inline constexpr const char* kSleep2sCentiseconds =
    "a=$(cut -d' ' -f1 /proc/uptime); sleep 2; b=$(cut -d' ' -f1 /proc/uptime); "
    "echo $(( ${b%.*}${b#*.} - ${a%.*}${a#*.} ))";

}  // namespace hv::testing
