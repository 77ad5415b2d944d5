// What every bench program shares: the median, the `[--iterations N] [qmp:PATH]` arguments, and
// a test guest booted when no QEMU is given.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "tests/harness/test_vm.h"

namespace hv::bench {

// The median (the mean of the middle two for an even count); 0 for no samples.
double Median(std::vector<double> v);

struct BenchArgs {
  int iterations = 0;
  std::string qmp_path;  // empty: boot a test guest
};

// Parses `[--iterations N] [qmp:PATH]`; N is raised to `min_iterations`. Returns false (after
// printing the usage of `program`) on anything else.
bool ParseBenchArgs(int argc, char** argv, const char* program, int default_iterations,
                    int min_iterations, BenchArgs* out);

// Boots the test guest (images/) when `args.qmp_path` is empty and points it there; the guest
// lives as long as the returned pointer (null when an existing QEMU was given).
Result<std::unique_ptr<testing::TestVm>> StartGuestUnlessGiven(BenchArgs& args);

}  // namespace hv::bench
