// Forward kernels and the one-pass 2x2 backward, AVX2: 8 neighbouring outputs per group.
// Compiled for AVX2 by the pragma below (not by the build flags), so the library still runs on
// any x86-64; maxpool2d.cpp calls these only when the CPU has AVX2.
#include <cstdint>

#include "pool/maxpool2d_impl.hpp"

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
  using I = __m256i;
  using M = __m256i;  // lanes [0, n): all ones
  static M mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // Stride-2 loads in shuffle order (pool/pool_quads_avx2.hpp, HasS2Order).
  static F load_s2(const float* p) { return load_s2_avx2(p); }
  static F load_s2_odd(const float* p) { return load_s2_odd_avx2(p); }
  static F load_n_s2(const float* p, int n) { return load_n_s2_avx2(p, n); }
  static F s2_order(F v) { return s2_order_avx2(v); }
  static I s2_order(I v) { return s2_order_avx2(v); }
  static void quads(const float* pa, const float* pb, F& even, F& odd) {
    load_quads_avx2(pa, pb, even, odd);
  }
  // Input index of each lane's top-left cell: a + 2*(l % 4) for lanes 0-3, b + ... for 4-7.
  static I quad_index(std::uint32_t a, std::uint32_t b) {
    return _mm256_add_epi32(_mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6),
                            _mm256_set_m128i(_mm_set1_epi32(static_cast<std::int32_t>(b)),
                                             _mm_set1_epi32(static_cast<std::int32_t>(a))));
  }
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
  static I lanes(std::int32_t s) {
    return _mm256_mullo_epi32(_mm256_set1_epi32(s), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static I splat(std::uint32_t v) { return _mm256_set1_epi32(static_cast<std::int32_t>(v)); }
  static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  static void update(F& best, I& off, F v, I o) {
    const F m = _mm256_andnot_ps(_mm256_cmp_ps(best, best, _CMP_UNORD_Q),
                                 _mm256_cmp_ps(v, best, _CMP_NLE_UQ));
    best = _mm256_blendv_ps(best, v, m);
    off =
        _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(off), _mm256_castsi256_ps(o), m));
  }
  static void store(float* y, std::int32_t* a, F v, I i) {
    _mm256_storeu_ps(y, v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a), i);
  }
  static void store_n(float* y, std::int32_t* a, F v, I i, M m) {
    _mm256_maskstore_ps(y, m, v);
    _mm256_maskstore_epi32(reinterpret_cast<int*>(a), m, i);
  }
  static void stream(float* dst, const float* src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  }
  // One-pass 2x2 backward of N windows (or the first n): see maxpool2d_kernels.inc.
  template <bool Full>
  static bool bwd2x2(const std::int32_t* a, const float* g, std::uint32_t cell, std::int32_t w,
                     int n, M m, float* top, float* bot) {
    const I av = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))
                      : _mm256_maskload_epi32(reinterpret_cast<const int*>(a), m);
    const F gv =
        _mm256_add_ps(_mm256_setzero_ps(), Full ? _mm256_loadu_ps(g) : _mm256_maskload_ps(g, m));
    // offset of each argmax from its window's top-left cell: 0, 1, w or w + 1 if in the window
    const I d = _mm256_sub_epi32(av, _mm256_add_epi32(splat(cell), _mm256_setr_epi32(0, 2, 4, 6, 8,
                                                                                     10, 12, 14)));
    const I tl = _mm256_cmpeq_epi32(d, _mm256_setzero_si256());
    const I tr = _mm256_cmpeq_epi32(d, _mm256_set1_epi32(1));
    const I bl = _mm256_cmpeq_epi32(d, _mm256_set1_epi32(w));
    const I br = _mm256_cmpeq_epi32(d, _mm256_set1_epi32(w + 1));
    const int hit = _mm256_movemask_ps(
        _mm256_castsi256_ps(_mm256_or_si256(_mm256_or_si256(tl, tr), _mm256_or_si256(bl, br))));
    const int want = (1 << n) - 1;
    if ((hit & want) != want) return false;
    auto sel = [&](I c) { return _mm256_and_ps(_mm256_castsi256_ps(c), gv); };
    // unpack: windows 0 1 | 4 5 and 2 3 | 6 7 interleaved; the lane swap puts them in order
    const F tlo = _mm256_unpacklo_ps(sel(tl), sel(tr)), thi = _mm256_unpackhi_ps(sel(tl), sel(tr));
    const F blo = _mm256_unpacklo_ps(sel(bl), sel(br)), bhi = _mm256_unpackhi_ps(sel(bl), sel(br));
    const F t0 = _mm256_permute2f128_ps(tlo, thi, 0x20);
    const F t1 = _mm256_permute2f128_ps(tlo, thi, 0x31);
    const F b0 = _mm256_permute2f128_ps(blo, bhi, 0x20);
    const F b1 = _mm256_permute2f128_ps(blo, bhi, 0x31);
    if constexpr (Full) {
      _mm256_storeu_ps(top, t0);
      _mm256_storeu_ps(top + 8, t1);
      _mm256_storeu_ps(bot, b0);
      _mm256_storeu_ps(bot + 8, b1);
    } else {
      // Masked stores only where a vector is partly written, none where nothing is: on AMD Zen
      // a masked store costs several plain ones, even with an empty mask (lenet's 8x8 planes,
      // n = 4: two plain stores instead of four masked ones).
      if (n >= 4) {
        _mm256_storeu_ps(top, t0);
        _mm256_storeu_ps(bot, b0);
      } else {
        const M m0 = mask(2 * n);
        _mm256_maskstore_ps(top, m0, t0);
        _mm256_maskstore_ps(bot, m0, b0);
      }
      if (n > 4) {
        const M m1 = mask(2 * n - 8);
        _mm256_maskstore_ps(top + 8, m1, t1);
        _mm256_maskstore_ps(bot + 8, m1, b1);
      }
    }
    return true;
  }
};

#include "pool/maxpool2d_kernels.inc"

}  // namespace

void maxpool2d_forward_rows_avx2(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                 std::int32_t* argmax, std::int64_t oh_begin, std::int64_t oh_end) {
  pool_forward_rows<Avx2>(k, g, x, y, argmax, oh_begin, oh_end);
}

bool maxpool2d_backward_2x2_s2_p0_rows_avx2(const PoolGeom& g, const float* dy,
                                            const std::int32_t* argmax, float* dx,
                                            std::int64_t oh_begin, std::int64_t oh_end,
                                            float* stream_buf) {
  return pool_backward_2x2_s2_p0_rows<Avx2>(g, dy, argmax, dx, oh_begin, oh_end, stream_buf);
}

}  // namespace im2gemm::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64 GCC/Clang: never selected (pool_isa_supported() is scalar)

namespace im2gemm::detail {
void maxpool2d_forward_rows_avx2(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                 std::int32_t* argmax, std::int64_t oh_begin, std::int64_t oh_end) {
  maxpool2d_forward_rows_scalar(k, g, x, y, argmax, oh_begin, oh_end);
}
bool maxpool2d_backward_2x2_s2_p0_rows_avx2(const PoolGeom&, const float*, const std::int32_t*,
                                            float*, std::int64_t, std::int64_t, float*) {
  return false;  // the caller zeroes and scatters
}
}  // namespace im2gemm::detail

#endif
