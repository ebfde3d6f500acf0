// Shared helpers of the doctest suites: deterministic fills, tolerant and exact comparison.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include <im2gemm/im2gemm.hpp>

#include "common/isa.hpp"

namespace testutil {

inline constexpr float kSentinel = 12345.678f;

/// The message of the std::invalid_argument that f() throws, or "(no exception)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no exception)";
}

/// A fresh folder under the system's temporary directory, removed with its contents at the
/// end of the scope; `tag` names the suite that made it.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    path = std::filesystem::temp_directory_path() /
           ("im2gemm_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
            std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

/// The ISAs this CPU runs, scalar first.
inline std::vector<im2gemm::detail::Isa> cpu_isas() {
  using im2gemm::detail::Isa;
  std::vector<Isa> v;
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (static_cast<int>(i) <= static_cast<int>(im2gemm::detail::isa_supported())) v.push_back(i);
  }
  return v;
}

/// Uniform floats in [lo, hi).
inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

/// Small integers in [lo, hi]: fp32 sums of their products are exact, so any difference
/// between two implementations is a bug, not rounding.
inline std::vector<float> random_ints(std::size_t n, std::uint32_t seed, int lo = -3, int hi = 3) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng));
  return v;
}

/// First index where |got - want| > max(atol, rtol*|want|), or -1. NaN must match NaN.
inline std::int64_t first_mismatch(std::span<const float> got, std::span<const float> want,
                                   float atol, float rtol) {
  if (got.size() != want.size()) return 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const float g = got[i], w = want[i];
    if (std::isnan(w) || std::isnan(g)) {
      if (std::isnan(w) != std::isnan(g)) return static_cast<std::int64_t>(i);
      continue;
    }
    if (std::isinf(w) || std::isinf(g)) {
      if (g != w) return static_cast<std::int64_t>(i);
      continue;
    }
    const float tol = std::max(atol, rtol * std::fabs(w));
    if (!(std::fabs(g - w) <= tol)) return static_cast<std::int64_t>(i);
  }
  return -1;
}

#define CHECK_CLOSE_SPANS(got, want, atol, rtol)                                              \
  do {                                                                                        \
    const auto mm_ = testutil::first_mismatch((got), (want), (atol), (rtol));                 \
    if (mm_ >= 0 && static_cast<std::size_t>(mm_) < (got).size()) {                           \
      INFO("first mismatch at " << mm_ << ": got " << (got)[mm_] << " want " << (want)[mm_]); \
    }                                                                                         \
    CHECK(mm_ == -1);                                                                         \
  } while (0)

/// Bitwise equality of two float buffers (NaN payloads included).
inline bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    std::uint32_t x, y;
    std::memcpy(&x, &a[i], 4);
    std::memcpy(&y, &b[i], 4);
    if (x != y) return false;
  }
  return true;
}

inline std::string describe(const im2gemm::Conv2dShape& s) {
  std::ostringstream o;
  o << "N" << s.batch << " C" << s.in_channels << " " << s.in_height << "x" << s.in_width << " F"
    << s.out_channels << " k" << s.kernel_height << "x" << s.kernel_width << " s" << s.stride_height
    << "x" << s.stride_width << " p" << s.pad_height << "x" << s.pad_width << " d"
    << s.dilation_height << "x" << s.dilation_width << " g" << s.groups;
  return o.str();
}

inline std::string describe(const im2gemm::MaxPool2dShape& s) {
  std::ostringstream o;
  o << "N" << s.batch << " C" << s.channels << " " << s.in_height << "x" << s.in_width << " k"
    << s.kernel_height << "x" << s.kernel_width << " s" << s.stride_height << "x" << s.stride_width
    << " p" << s.pad_height << "x" << s.pad_width;
  return o.str();
}

}  // namespace testutil
