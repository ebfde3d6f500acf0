// The depthwise kernels, AVX2 + FMA: 8 outputs per vector, masked loads and stores for row
// tails. Compiled with -mavx2 -mfma (meson.build: isa_kernels); called only when the CPU has
// AVX2 and IM2GEMM_ISA allows it.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "conv/depthwise.hpp"
#include "gemm/x86/transpose_avx2.hpp"

namespace im2gemm::detail {
namespace {

struct Avx2 {
  static constexpr int N = 8;
  static constexpr int kRows = 4, kVecs = 1, kFlatVecs = 2;
  using F = __m256;
  using M = __m256;  ///< a lane mask: all ones or all zeros
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static F zero() { return _mm256_setzero_ps(); }
  static F iota() { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static F load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static F load_range(const float* p, int lo, int hi) {
    const __m256i l = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(hi), l),
                                       _mm256_cmpgt_epi32(l, _mm256_set1_epi32(lo - 1)));
    return _mm256_maskload_ps(p, m);
  }
  static F even(const float* p) {  // p[0], p[2], ..., p[14]
    const F s =
        _mm256_shuffle_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static void stream(float* p, F v) {  // two 16-byte halves: rows need only 16-byte alignment
    _mm_stream_ps(p, _mm256_castps256_ps128(v));
    _mm_stream_ps(p + 4, _mm256_extractf128_ps(v, 1));
  }
  static F relu(F v) {  // v > 0 ? v : 0 (maxps gives its second operand on NaN and on ties)
    return _mm256_max_ps(v, _mm256_setzero_ps());
  }
  static void storeu(float* p, F v) { _mm256_storeu_ps(p, v); }
  // Not vmaskmovps: its store form is microcoded on AMD Zen (the row tails of small planes
  // took a third of mbv1_dw_7's forward); at most three plain stores instead.
  static void store_n(float* p, F v, int n) {
    __m128 h = _mm256_castps256_ps128(v);
    if (n >= 4) {
      _mm_storeu_ps(p, h);
      h = _mm256_extractf128_ps(v, 1);
      p += 4;
      n -= 4;
    }
    if (n >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), h);
      h = _mm_movehl_ps(h, h);
      p += 2;
      n -= 2;
    }
    if (n >= 1) _mm_store_ss(p, h);
  }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static F mask_and(M m, F v) { return _mm256_and_ps(m, v); }  // v where m, +0 elsewhere
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static void interleave(F e, F o, F& lo, F& hi) {  // e0 o0 e1 o1 ..., two vectors
    const F l = _mm256_unpacklo_ps(e, o), h = _mm256_unpackhi_ps(e, o);
    lo = _mm256_permute2f128_ps(l, h, 0x20);
    hi = _mm256_permute2f128_ps(l, h, 0x31);
  }
  static float hsum(F v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
};

#include "conv/depthwise_kernels.inc"

// The lanes kernels' type: Avx2 and the shared in-register 8 x 8 transpose.
struct Avx2Lanes : Avx2 {
  static void transpose8(F* v) { transpose8x8_avx2(v); }
  static void load_transpose8(const float* src, i64 stride, F* v) {
    load_transpose8x8_avx2(src, stride, v);
  }
  static void transpose8_store(const F* v, float* dst, i64 stride) {
    transpose8x8_store_avx2(v, dst, stride);
  }
};

#include "conv/depthwise_lanes.inc"

void plane_avx2(const DwPlane& a) { plane<Avx2>(a); }
void dots_avx2(const DwDots& a) { dots<Avx2>(a); }
void copy_avx2(float* d, const float* src, i64 n, i64 stride) { copy_row<Avx2>(d, src, n, stride); }
void flat_avx2(const DwFlat& a) { flat<Avx2>(a); }
void flat_dots_avx2(const DwFlatDots& a) { flat_dots<Avx2>(a); }
void stride2_data_avx2(const DwStride2Data& a) { stride2_data<Avx2>(a); }

}  // namespace

void dw_lanes_in_avx2(const DwLanesIn& a) { lanes_in<Avx2Lanes>(a); }
void dw_lanes_out_avx2(const DwLanesOut& a) { lanes_out<Avx2Lanes>(a); }
void dw_lanes_conv_avx2(const DwLanesConv& a) { lanes_conv<Avx2Lanes>(a); }
void dw_lanes_dots_avx2(const DwLanesDots& a) { lanes_dots<Avx2Lanes>(a); }

const DwKernels& dw_kernels_avx2() {
  static const DwKernels k{&plane_avx2,
                           &dots_avx2,
                           &copy_avx2,
                           &flat_avx2,
                           &flat_dots_avx2,
                           &dw_lanes_in_avx2,
                           &dw_lanes_out_avx2,
                           &dw_lanes_conv_avx2,
                           &dw_lanes_dots_avx2,
                           nullptr,
                           nullptr,
                           &stride2_data_avx2,
                           "avx2"};
  return k;
}

}  // namespace im2gemm::detail
