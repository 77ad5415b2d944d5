// Replay driver for fuzz targets under g++ (no libFuzzer): feeds every file in the seed directory
// given as argv[1], then random and byte-flipped variants of the seeds, to LLVMFuzzerTestOneInput.
// A crash, a sanitizer report or a hang (meson's test timeout) fails the test. Deterministic: the
// generator is seeded with a constant so a failure reproduces.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  std::vector<std::vector<std::uint8_t>> seeds;
  if (argc > 1 && std::filesystem::is_directory(argv[1])) {
    for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
      std::ifstream f(e.path(), std::ios::binary);
      seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
  }
  seeds.push_back({});
  std::mt19937_64 rng(0x68767061746368ull);  // "hvpatch"
  std::size_t runs = 0;
  for (const auto& s : seeds) {
    LLVMFuzzerTestOneInput(s.data(), s.size());
    ++runs;
  }
  const int kMutations = 3000;
  for (int i = 0; i < kMutations; ++i) {
    std::vector<std::uint8_t> in = seeds[rng() % seeds.size()];
    if (in.empty() || rng() % 4 == 0) {
      in.resize(rng() % 4096);
      for (auto& b : in) b = static_cast<std::uint8_t>(rng());
    } else {
      const int flips = 1 + static_cast<int>(rng() % 16);
      for (int k = 0; k < flips; ++k) in[rng() % in.size()] = static_cast<std::uint8_t>(rng());
      if (rng() % 3 == 0) in.resize(rng() % (in.size() + 1));  // truncate
    }
    LLVMFuzzerTestOneInput(in.data(), in.size());
    ++runs;
  }
  std::printf("replayed %zu inputs (%zu seeds)\n", runs, seeds.size());
  return 0;
}
