// Average-pooling kernels, portable C++ (one output or dx cell at a time); the fallback on
// any x86-64 or other CPU.
#include <cstdint>

#include "pool/avgpool2d_impl.hpp"

namespace im2gemm::detail {
namespace {

struct Scalar {
  static constexpr int N = 1;
  static constexpr int kOverreadS2 = 0;
  using F = float;
  using M = int;
  static M mask(int n) { return n; }
  template <int S>
  static F load(const float* p, std::int64_t) {
    return *p;
  }
  template <int S>
  static F load_n(const float* p, std::int64_t, int, M) {
    return *p;
  }
  static F zero() { return 0.0f; }
  static F set1(float v) { return v; }
  static F add(F a, F b) { return a + b; }
  static F mul(F a, F b) { return a * b; }
  static F div(F a, F b) { return a / b; }
  static F loadu(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  static void store_n(float* p, F v, int, M) { *p = v; }
  static float hsum(F v) { return v; }
  static F dup2(const float* p, int) { return *p; }  // lane 0: p[(0 + odd) / 2]
  static F keep_even(F v, int odd) { return odd ? 0.0f : v; }
};

#include "pool/avgpool2d_kernels.inc"

}  // namespace

void avgpool2d_forward_rows_scalar(AvgKernel k, const AvgGeom& g, const float* x, float* y,
                                   std::int64_t oh_begin, std::int64_t oh_end) {
  avg_forward_rows<Scalar>(k, g, x, y, oh_begin, oh_end);
}

void avgpool2d_backward_plane_scalar(AvgKernel k, const AvgGeom& g, const float* dy, float* dx,
                                     float* buf) {
  avg_backward_plane<Scalar>(k, g, dy, dx, buf);
}

}  // namespace im2gemm::detail
