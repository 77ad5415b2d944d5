#include "bench/bench_support.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace hv::bench {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

bool ParseBenchArgs(int argc, char** argv, const char* program, int default_iterations,
                    int min_iterations, BenchArgs* out) {
  out->iterations = default_iterations;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      out->iterations = std::max(min_iterations, std::atoi(argv[++i]));
    } else if (std::strncmp(argv[i], "qmp:", 4) == 0) {
      out->qmp_path = argv[i] + 4;
    } else {
      std::fprintf(stderr, "usage: %s [--iterations N] [qmp:PATH]\n", program);
      return false;
    }
  }
  return true;
}

Result<std::unique_ptr<testing::TestVm>> StartGuestUnlessGiven(BenchArgs& args) {
  if (!args.qmp_path.empty()) return std::unique_ptr<testing::TestVm>();
  testing::TestVmOptions o;
  o.agent = false;
  HV_ASSIGN_OR_RETURN(std::unique_ptr<testing::TestVm> guest, testing::TestVm::Start(o));
  args.qmp_path = guest->qmp_path();
  return guest;
}

}  // namespace hv::bench
