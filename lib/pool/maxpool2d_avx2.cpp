// Forward kernels, AVX2: 8 neighbouring outputs per group. Compiled for AVX2 by the pragma
// below (not by the build flags), so the library still runs on any x86-64; maxpool2d.cpp calls
// these only when the CPU has AVX2.
#include <cstdint>

#include "pool/maxpool2d_impl.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

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
  static F even(F lo, F hi) {  // lo[0], lo[2], lo[4], lo[6], hi[0], hi[2], hi[4], hi[6]
    const F s = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  template <int S>
  static F load(const float* p, std::int64_t s) {
    if constexpr (S == 1) {
      return _mm256_loadu_ps(p);
    } else if constexpr (S == 2) {
      return even(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8));
    } else {
      return _mm256_i32gather_ps(p, lanes(static_cast<std::int32_t>(s)), 4);
    }
  }
  template <int S>
  static F load_n(const float* p, std::int64_t s, int n, M m) {
    if constexpr (S == 1) {
      return _mm256_maskload_ps(p, m);
    } else if constexpr (S == 2) {
      const int c = 2 * n - 1;  // floats p[0 .. 2n-2]
      const F lo = _mm256_maskload_ps(p, mask(c < 8 ? c : 8));
      const F hi = c > 8 ? _mm256_maskload_ps(p + 8, mask(c - 8)) : _mm256_setzero_ps();
      return even(lo, hi);
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
  static void update(F& best, I& off, F v, std::uint32_t o) {
    const F m = _mm256_andnot_ps(_mm256_cmp_ps(best, best, _CMP_UNORD_Q),
                                 _mm256_cmp_ps(v, best, _CMP_NLE_UQ));
    best = _mm256_blendv_ps(best, v, m);
    off = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(off), _mm256_castsi256_ps(splat(o)), m));
  }
  static void store(float* y, std::int32_t* a, F v, I i) {
    _mm256_storeu_ps(y, v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a), i);
  }
  static void store_n(float* y, std::int32_t* a, F v, I i, M m) {
    _mm256_maskstore_ps(y, m, v);
    _mm256_maskstore_epi32(reinterpret_cast<int*>(a), m, i);
  }
};

#include "pool/maxpool2d_kernels.inc"

}  // namespace

void maxpool2d_forward_rows_avx2(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                 std::int32_t* argmax, std::int64_t oh_begin,
                                 std::int64_t oh_end) {
  pool_forward_rows<Avx2>(k, g, x, y, argmax, oh_begin, oh_end);
}

}  // namespace im2gemm::detail

#pragma GCC pop_options

#else  // not x86-64 GCC/Clang: never selected (pool_isa_supported() is scalar)

namespace im2gemm::detail {
void maxpool2d_forward_rows_avx2(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                 std::int32_t* argmax, std::int64_t oh_begin,
                                 std::int64_t oh_end) {
  maxpool2d_forward_rows_scalar(k, g, x, y, argmax, oh_begin, oh_end);
}
}  // namespace im2gemm::detail

#endif
