// Average-pooling kernels, AVX-512 (F, BW, VL): 16 neighbouring outputs or dx cells per
// group, mask-register tails. Compiled for AVX-512 by the pragma below (not by the build
// flags); avgpool2d.cpp calls these only when the CPU has AVX-512.
#include <cstdint>

#include "pool/avgpool2d_impl.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

// Every function below is compiled for this ISA: gcc by its target pragma, clang (which
// ignores that pragma) by attaching the same target attribute to each function.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
#endif

namespace im2gemm::detail {
namespace {

struct Avx512 {
  static constexpr int N = 16;
  static constexpr int kOverreadS2 = 1;
  using F = __m512;
  using M = __mmask16;  // lanes [0, n)
  static M mask(int n) { return static_cast<M>((1u << n) - 1u); }
  static __m512i lanes(std::int32_t s) {
    return _mm512_mullo_epi32(_mm512_set1_epi32(s), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                      10, 11, 12, 13, 14, 15));
  }
  static F even(F lo, F hi) {  // lo[0], lo[2], ..., lo[14], hi[0], ..., hi[14]
    const __m512i idx =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, idx, hi);
  }
  template <int S>
  static F load(const float* p, std::int64_t s) {
    if constexpr (S == 1) {
      return _mm512_loadu_ps(p);
    } else if constexpr (S == 2) {
      return even(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16));
    } else {
      return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), static_cast<M>(0xFFFF),
                                      lanes(static_cast<std::int32_t>(s)), p, 4);
    }
  }
  template <int S>
  static F load_n(const float* p, std::int64_t s, int n, M m) {
    if constexpr (S == 1) {
      return _mm512_maskz_loadu_ps(m, p);
    } else if constexpr (S == 2) {
      const int c = 2 * n - 1;  // floats p[0 .. 2n-2]
      const F lo = _mm512_maskz_loadu_ps(mask(c < 16 ? c : 16), p);
      const F hi = _mm512_maskz_loadu_ps(mask(c > 16 ? c - 16 : 0), p + 16);
      return even(lo, hi);
    } else {
      return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, lanes(static_cast<std::int32_t>(s)),
                                      p, 4);
    }
  }
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, F v, int, M m) { _mm512_mask_storeu_ps(p, m, v); }
  static float hsum(F v) {  // once per plane: through memory (the reduce intrinsics trip
                            // -Wmaybe-uninitialized in GCC 12)
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float s = 0.0f;
    for (int i = 0; i < 16; ++i) s += t[i];
    return s;
  }
  static F dup2(const float* p, int odd) {
    const __m512i e = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i o = _mm512_setr_epi32(0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8);
    // the masked form: the plain one trips -Wmaybe-uninitialized in GCC 12
    return _mm512_maskz_permutexvar_ps(static_cast<M>(0xFFFF), odd ? o : e, _mm512_loadu_ps(p));
  }
  static F keep_even(F v, int odd) {
    return _mm512_maskz_mov_ps(static_cast<M>(odd ? 0xAAAA : 0x5555), v);
  }
};

#include "pool/avgpool2d_kernels.inc"

}  // namespace

void avgpool2d_forward_rows_avx512(AvgKernel k, const AvgGeom& g, const float* x, float* y,
                                   std::int64_t oh_begin, std::int64_t oh_end) {
  // Short rows of whole quads take the AVX2 kernel's two-quad vectors, forward and backward
  // (as max pooling does: 16 lanes over rows of fewer than 16 outputs are masked groups).
  if (k == AvgKernel::k2x2_s2_p0 && quads_apply(g.h, g.w, g.ow, oh_begin, oh_end)) {
    avgpool2d_forward_rows_avx2(k, g, x, y, oh_begin, oh_end);
    return;
  }
  avg_forward_rows<Avx512>(k, g, x, y, oh_begin, oh_end);
}

void avgpool2d_backward_plane_avx512(AvgKernel k, const AvgGeom& g, const float* dy, float* dx,
                                     float* buf) {
  if (k == AvgKernel::k2x2_s2_p0 && quads_apply(g.h, g.w, g.ow, 0, g.oh)) {
    avgpool2d_backward_plane_avx2(k, g, dy, dx, buf);
    return;
  }
  avg_backward_plane<Avx512>(k, g, dy, dx, buf);
}

}  // namespace im2gemm::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64 GCC/Clang: never selected (pool_isa_supported() is scalar)

namespace im2gemm::detail {
void avgpool2d_forward_rows_avx512(AvgKernel k, const AvgGeom& g, const float* x, float* y,
                                   std::int64_t oh_begin, std::int64_t oh_end) {
  avgpool2d_forward_rows_scalar(k, g, x, y, oh_begin, oh_end);
}
void avgpool2d_backward_plane_avx512(AvgKernel k, const AvgGeom& g, const float* dy, float* dx,
                                     float* buf) {
  avgpool2d_backward_plane_scalar(k, g, dy, dx, buf);
}
}  // namespace im2gemm::detail

#endif
