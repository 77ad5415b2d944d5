// Reads the kbuild-built test patches from $HVPATCH_IMAGES/patches (images/build.sh makes them).
// A missing file is a test failure, never a skip.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace hv::patcher::testing {

inline ::testing::AssertionResult ReadPatchFile(const std::string& name, std::vector<std::uint8_t>* out) {
  const char* dir = std::getenv("HVPATCH_IMAGES");
  if (dir == nullptr || *dir == '\0') {
    return ::testing::AssertionFailure() << "HVPATCH_IMAGES is not set (meson sets it for unit tests)";
  }
  const std::string path = std::string(dir) + "/patches/" + name;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return ::testing::AssertionFailure() << "cannot open " << path << " (run images/build.sh)";
  }
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return ::testing::AssertionSuccess();
}

}  // namespace hv::patcher::testing
