// Forward kernels and the one-pass 2x2 backward, AVX-512 (F, BW, VL): 16 neighbouring outputs
// per group, mask-register tails. Compiled for AVX-512 by the pragma below (not by the build
// flags), so the library still runs on any x86-64; maxpool2d.cpp calls these only when the CPU
// has AVX-512.
#include <cstdint>

#include "pool/maxpool2d_impl.hpp"

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
  using I = __m512i;
  using M = __mmask16;  // lanes [0, n)
  static M mask(int n) { return static_cast<M>((1u << n) - 1u); }
  static F even(F lo, F hi) {  // lo[0], lo[2], ..., lo[14], hi[0], ..., hi[14]
    const I idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, idx, hi);
  }
  template <int S>
  static F load(const float* p, std::int64_t s) {
    if constexpr (S == 1) {
      return _mm512_loadu_ps(p);
    } else if constexpr (S == 2) {
      return even(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16));
    } else {
      // the masked form with a zero source: the plain one trips -Wmaybe-uninitialized in GCC 12
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
  static I lanes(std::int32_t s) {
    return _mm512_mullo_epi32(_mm512_set1_epi32(s), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                      10, 11, 12, 13, 14, 15));
  }
  static I splat(std::uint32_t v) { return _mm512_set1_epi32(static_cast<std::int32_t>(v)); }
  static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  static void update(F& best, I& off, F v, I o) {
    const M ordered = _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q);
    const M m = _mm512_mask_cmp_ps_mask(ordered, v, best, _CMP_NLE_UQ);
    best = _mm512_mask_mov_ps(best, m, v);
    off = _mm512_mask_mov_epi32(off, m, o);
  }
  static void store(float* y, std::int32_t* a, F v, I i) {
    _mm512_storeu_ps(y, v);
    _mm512_storeu_si512(a, i);
  }
  static void store_n(float* y, std::int32_t* a, F v, I i, M m) {
    _mm512_mask_storeu_ps(y, m, v);
    _mm512_mask_storeu_epi32(a, m, i);
  }
  static void stream(float* dst, const float* src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
  }
  // One-pass 2x2 backward of N windows (or the first n): see maxpool2d_kernels.inc.
  template <bool Full>
  static bool bwd2x2(const std::int32_t* a, const float* g, std::uint32_t cell, std::int32_t w,
                     int n, M m, float* top, float* bot) {
    const I av = Full ? _mm512_loadu_si512(a) : _mm512_maskz_loadu_epi32(m, a);
    const F gv =
        _mm512_add_ps(_mm512_setzero_ps(), Full ? _mm512_loadu_ps(g) : _mm512_maskz_loadu_ps(m, g));
    // offset of each argmax from its window's top-left cell: 0, 1, w or w + 1 if in the window
    const I d =
        _mm512_sub_epi32(av, _mm512_add_epi32(splat(cell),
                                              _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18,
                                                                20, 22, 24, 26, 28, 30)));
    const M tl = _mm512_mask_cmpeq_epi32_mask(m, d, _mm512_setzero_si512());
    const M tr = _mm512_mask_cmpeq_epi32_mask(m, d, _mm512_set1_epi32(1));
    const M bl = _mm512_mask_cmpeq_epi32_mask(m, d, _mm512_set1_epi32(w));
    const M br = _mm512_mask_cmpeq_epi32_mask(m, d, _mm512_set1_epi32(w + 1));
    if (static_cast<M>(tl | tr | bl | br) != m) return false;
    // interleave the left and right cells of windows 0-7 (lo) and 8-15 (hi)
    const I lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const I hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const F t0 = _mm512_maskz_mov_ps(tl, gv), t1 = _mm512_maskz_mov_ps(tr, gv);
    const F b0 = _mm512_maskz_mov_ps(bl, gv), b1 = _mm512_maskz_mov_ps(br, gv);
    if constexpr (Full) {
      _mm512_storeu_ps(top, _mm512_permutex2var_ps(t0, lo, t1));
      _mm512_storeu_ps(top + 16, _mm512_permutex2var_ps(t0, hi, t1));
      _mm512_storeu_ps(bot, _mm512_permutex2var_ps(b0, lo, b1));
      _mm512_storeu_ps(bot + 16, _mm512_permutex2var_ps(b0, hi, b1));
    } else {
      const M m_lo = mask(n < 8 ? 2 * n : 16), m_hi = mask(n > 8 ? 2 * n - 16 : 0);
      _mm512_mask_storeu_ps(top, m_lo, _mm512_permutex2var_ps(t0, lo, t1));
      _mm512_mask_storeu_ps(top + 16, m_hi, _mm512_permutex2var_ps(t0, hi, t1));
      _mm512_mask_storeu_ps(bot, m_lo, _mm512_permutex2var_ps(b0, lo, b1));
      _mm512_mask_storeu_ps(bot + 16, m_hi, _mm512_permutex2var_ps(b0, hi, b1));
    }
    return true;
  }
};

#include "pool/maxpool2d_kernels.inc"

}  // namespace

void maxpool2d_forward_rows_avx512(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                   std::int32_t* argmax, std::int64_t oh_begin,
                                   std::int64_t oh_end) {
  // Short rows of whole quads take the AVX2 kernel's two-quad vectors: 16 lanes over rows of
  // fewer than 16 outputs would be masked groups, slow on AMD Zen (which splits a 512-bit
  // operation in two 256-bit ones anyway; README, "Tuning constants").
  if (k == PoolKernel::k2x2_s2_p0 && quads_apply(g.h, g.w, g.ow, oh_begin, oh_end)) {
    maxpool2d_forward_rows_avx2(k, g, x, y, argmax, oh_begin, oh_end);
    return;
  }
  pool_forward_rows<Avx512>(k, g, x, y, argmax, oh_begin, oh_end);
}

bool maxpool2d_backward_2x2_s2_p0_rows_avx512(const PoolGeom& g, const float* dy,
                                              const std::int32_t* argmax, float* dx,
                                              std::int64_t oh_begin, std::int64_t oh_end,
                                              float* stream_buf) {
  return pool_backward_2x2_s2_p0_rows<Avx512>(g, dy, argmax, dx, oh_begin, oh_end, stream_buf);
}

}  // namespace im2gemm::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64 GCC/Clang: never selected (pool_isa_supported() is scalar)

namespace im2gemm::detail {
void maxpool2d_forward_rows_avx512(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                   std::int32_t* argmax, std::int64_t oh_begin,
                                   std::int64_t oh_end) {
  maxpool2d_forward_rows_scalar(k, g, x, y, argmax, oh_begin, oh_end);
}
bool maxpool2d_backward_2x2_s2_p0_rows_avx512(const PoolGeom&, const float*, const std::int32_t*,
                                              float*, std::int64_t, std::int64_t, float*) {
  return false;  // the caller zeroes and scatters
}
}  // namespace im2gemm::detail

#endif
