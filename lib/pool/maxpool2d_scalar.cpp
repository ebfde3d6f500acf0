// Forward kernels, portable C++ (one output at a time); the fallback on any x86-64 or other CPU.
#include <cstdint>

#include "pool/maxpool2d_impl.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

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
  static F load(const float* p, std::int64_t) {
    return *p;
  }
  template <int S>
  static F load_n(const float* p, std::int64_t, int, M) {
    return *p;
  }
  static I lanes(std::int32_t) { return 0; }
  static I splat(std::uint32_t v) { return v; }
  static I add(I a, I b) { return a + b; }
  static void update(F& best, I& off, F v, I o) {
#if defined(__SSE2__)
    // Branch-free with SSE2 scalar compares (x86-64 baseline): on random data the outcome is
    // unpredictable and branches cost more than the whole update.
    const __m128 b = _mm_set_ss(best), x = _mm_set_ss(v);
    const __m128 take = _mm_andnot_ps(_mm_cmpunord_ss(b, b), _mm_cmpnle_ss(x, b));
    best = _mm_cvtss_f32(_mm_or_ps(_mm_and_ps(take, x), _mm_andnot_ps(take, b)));
    const __m128i t = _mm_castps_si128(take);
    const __m128i r = _mm_or_si128(_mm_and_si128(t, _mm_cvtsi32_si128(static_cast<int>(o))),
                                   _mm_andnot_si128(t, _mm_cvtsi32_si128(static_cast<int>(off))));
    off = static_cast<std::uint32_t>(_mm_cvtsi128_si32(r));
#else
    if (!(best != best) && !(v <= best)) {
      best = v;
      off = o;
    }
#endif
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
