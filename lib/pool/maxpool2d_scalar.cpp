// Forward kernels, portable C++ (one output at a time); the fallback on any x86-64 or other CPU.
#include <cstdint>

#include "pool/maxpool2d_impl.hpp"

namespace im2gemm::detail {
namespace {

struct Scalar {
  static constexpr int N = 1;
  static constexpr int kOverreadS2 = 0;
  using F = float;
  using I = std::uint32_t;
  using M = int;
  static M mask(int n) { return n; }
  template <int S>
  static F load(const float* p, std::int64_t) { return *p; }
  template <int S>
  static F load_n(const float* p, std::int64_t, int, M) { return *p; }
  static I lanes(std::int32_t) { return 0; }
  static I splat(std::uint32_t v) { return v; }
  static I add(I a, I b) { return a + b; }
  static void update(F& best, I& off, F v, std::uint32_t o) {
    if (!(best != best) && !(v <= best)) {
      best = v;
      off = o;
    }
  }
  static void store(float* y, std::int32_t* a, F v, I i) {
    *y = v;
    *a = static_cast<std::int32_t>(i);
  }
  static void store_n(float* y, std::int32_t* a, F v, I i, M) { store(y, a, v, i); }
};

#include "pool/maxpool2d_kernels.inc"

}  // namespace

void maxpool2d_forward_rows_scalar(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                   std::int32_t* argmax, std::int64_t oh_begin,
                                   std::int64_t oh_end) {
  pool_forward_rows<Scalar>(k, g, x, y, argmax, oh_begin, oh_end);
}

}  // namespace im2gemm::detail
