// Reads the layer suite (../shared/suite/layers.txt, pools.txt) shared by every benchmark,
// and makes their deterministic inputs.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <im2gemm/im2gemm.hpp>

namespace im2gemm::bench {

/// n uniform floats in [-1, 1), the same for the same seed.
inline std::vector<float> random_vec(std::int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::string suite_dir() {
  if (const char* env = std::getenv("IM2GEMM_SUITE_DIR")) return env;
#ifdef IM2GEMM_SUITE_DIR
  return IM2GEMM_SUITE_DIR;
#else
  return "../shared/suite";
#endif
}

struct NamedConv {
  std::string name;
  Conv2dShape shape;
};
struct NamedPool {
  std::string name;
  MaxPool2dShape shape;
};

inline std::vector<std::vector<std::string>> read_rows(const std::string& file) {
  std::ifstream in(suite_dir() + "/" + file);
  if (!in)
    throw std::runtime_error("cannot open " + suite_dir() + "/" + file +
                             " (set IM2GEMM_SUITE_DIR)");
  std::vector<std::vector<std::string>> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::vector<std::string> row;
    std::string tok;
    while (ss >> tok) row.push_back(tok);
    if (!row.empty()) rows.push_back(row);
  }
  return rows;
}

// name N C H W F KH KW SH SW PH PW [G]: layers.txt has 12 columns, grouped.txt (grouped and
// depthwise layers) a 13th, the groups.
inline std::vector<NamedConv> conv_layers(const std::string& file = "layers.txt") {
  std::vector<NamedConv> out;
  const bool grouped = file != "layers.txt";
  for (const auto& r : read_rows(file)) {
    if (r.size() != (grouped ? 13u : 12u)) throw std::runtime_error(file + ": bad row for " + r[0]);
    auto v = [&](int i) { return std::stoll(r[i]); };
    Conv2dShape s;
    s.batch = v(1);
    s.in_channels = v(2);
    s.in_height = v(3);
    s.in_width = v(4);
    s.out_channels = v(5);
    s.kernel_height = v(6);
    s.kernel_width = v(7);
    s.stride_height = v(8);
    s.stride_width = v(9);
    s.pad_height = v(10);
    s.pad_width = v(11);
    if (grouped) s.groups = v(12);
    s.validate();
    out.push_back({r[0], s});
  }
  return out;
}

// name N C H W KH KW SH SW PH PW
inline std::vector<NamedPool> pool_layers() {
  std::vector<NamedPool> out;
  for (const auto& r : read_rows("pools.txt")) {
    if (r.size() != 11) throw std::runtime_error("pools.txt: bad row for " + r[0]);
    auto v = [&](int i) { return std::stoll(r[i]); };
    MaxPool2dShape s;
    s.batch = v(1);
    s.channels = v(2);
    s.in_height = v(3);
    s.in_width = v(4);
    s.kernel_height = v(5);
    s.kernel_width = v(6);
    s.stride_height = v(7);
    s.stride_width = v(8);
    s.pad_height = v(9);
    s.pad_width = v(10);
    s.validate();
    out.push_back({r[0], s});
  }
  return out;
}

}  // namespace im2gemm::bench
