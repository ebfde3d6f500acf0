// Average-pooling kernels, AVX2: 8 neighbouring outputs or dx cells per group. Compiled for
// AVX2 by the pragma below (not by the build flags); avgpool2d.cpp calls these only when the
// CPU has AVX2.
#include <cstdint>

#include "pool/avgpool2d_impl.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

// Every function below is compiled for this ISA: gcc by its target pragma, clang (which
// ignores that pragma) by attaching the same target attribute to each function.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "pool/pool_quads_avx2.hpp"

namespace im2gemm::detail {
namespace {

struct Avx2 {
  static constexpr int N = 8;
  static constexpr int kOverreadS2 = 1;
  using F = __m256;
  using M = __m256i;  // lanes [0, n): all ones
  static M mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static __m256i lanes(std::int32_t s) {
    return _mm256_mullo_epi32(_mm256_set1_epi32(s), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // Stride-2 loads in shuffle order (pool/pool_quads_avx2.hpp, HasS2Order).
  static F load_s2(const float* p) { return load_s2_avx2(p); }
  static F load_s2_odd(const float* p) { return load_s2_odd_avx2(p); }
  static F load_n_s2(const float* p, int n) { return load_n_s2_avx2(p, n); }
  static F s2_order(F v) { return s2_order_avx2(v); }
  template <int S>
  static F load(const float* p, std::int64_t s) {
    if constexpr (S == 1) {
      return _mm256_loadu_ps(p);
    } else if constexpr (S == 2) {
      return s2_order(load_s2(p));
    } else {
      return _mm256_i32gather_ps(p, lanes(static_cast<std::int32_t>(s)), 4);
    }
  }
  template <int S>
  static F load_n(const float* p, std::int64_t s, int n, M m) {
    if constexpr (S == 1) {
      return _mm256_maskload_ps(p, m);
    } else if constexpr (S == 2) {
      return s2_order(load_n_s2(p, n));
    } else {
      return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, lanes(static_cast<std::int32_t>(s)),
                                      _mm256_castsi256_ps(m), 4);
    }
  }
  static void quads(const float* pa, const float* pb, F& even, F& odd) {
    load_quads_avx2(pa, pb, even, odd);
  }
  // Lanes 0-3 of v, each twice, into qa; lanes 4-7 into qb (a quad's 8 cells of one row).
  static void spread_quads(F v, F& qa, F& qb) {
    const F lo = _mm256_unpacklo_ps(v, v), hi = _mm256_unpackhi_ps(v, v);  // 0 0 1 1 | 4 4 5 5
    qa = _mm256_permute2f128_ps(lo, hi, 0x20);
    qb = _mm256_permute2f128_ps(lo, hi, 0x31);
  }
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, F v, int, M m) { _mm256_maskstore_ps(p, m, v); }
  static float hsum(F v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
  static F dup2(const float* p, int odd) {
    const __m256i e = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m256i o = _mm256_setr_epi32(0, 1, 1, 2, 2, 3, 3, 4);
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), odd ? o : e);
  }
  static F keep_even(F v, int odd) {
    const __m256i e = _mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0);
    const __m256i o = _mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1);
    return _mm256_and_ps(v, _mm256_castsi256_ps(odd ? o : e));
  }
};

#include "pool/avgpool2d_kernels.inc"

}  // namespace

void avgpool2d_forward_rows_avx2(AvgKernel k, const AvgGeom& g, const float* x, float* y,
                                 std::int64_t oh_begin, std::int64_t oh_end) {
  avg_forward_rows<Avx2>(k, g, x, y, oh_begin, oh_end);
}

void avgpool2d_backward_plane_avx2(AvgKernel k, const AvgGeom& g, const float* dy, float* dx,
                                   float* buf) {
  avg_backward_plane<Avx2>(k, g, dy, dx, buf);
}

}  // namespace im2gemm::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64 GCC/Clang: never selected (pool_isa_supported() is scalar)

namespace im2gemm::detail {
void avgpool2d_forward_rows_avx2(AvgKernel k, const AvgGeom& g, const float* x, float* y,
                                 std::int64_t oh_begin, std::int64_t oh_end) {
  avgpool2d_forward_rows_scalar(k, g, x, y, oh_begin, oh_end);
}
void avgpool2d_backward_plane_avx2(AvgKernel k, const AvgGeom& g, const float* dy, float* dx,
                                   float* buf) {
  avgpool2d_backward_plane_scalar(k, g, dy, dx, buf);
}
}  // namespace im2gemm::detail

#endif
