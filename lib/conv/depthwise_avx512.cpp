// The depthwise kernels, AVX-512 F: 16 outputs per vector, mask registers for row tails.
// Compiled with the AVX-512 flags (meson.build: isa_kernels); called only when the CPU has
// AVX-512 and IM2GEMM_ISA allows it.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "conv/depthwise.hpp"

namespace im2gemm::detail {
namespace {

struct Avx512 {
  static constexpr int N = 16;
  static constexpr int kRows = 4, kVecs = 2, kFlatVecs = 2;
  using F = __m512;
  using M = __mmask16;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static F zero() { return _mm512_setzero_ps(); }
  static F iota() { return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static F load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static F load_range(const float* p, int lo, int hi) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask(hi) & ~mask(lo)), p);
  }
  static F even(const float* p) {  // p[0], p[2], ..., p[30]
    const __m512i idx =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_loadu_ps(p), idx, _mm512_loadu_ps(p + 16));
  }
  // Four 16-byte quarters (rows need only 16-byte alignment); the masked extracts: the plain
  // ones trip -Wmaybe-uninitialized in GCC 12's header.
  static void stream(float* p, F v) {
    _mm_stream_ps(p, _mm512_mask_extractf32x4_ps(_mm_setzero_ps(), 0xF, v, 0));
    _mm_stream_ps(p + 4, _mm512_mask_extractf32x4_ps(_mm_setzero_ps(), 0xF, v, 1));
    _mm_stream_ps(p + 8, _mm512_mask_extractf32x4_ps(_mm_setzero_ps(), 0xF, v, 2));
    _mm_stream_ps(p + 12, _mm512_mask_extractf32x4_ps(_mm_setzero_ps(), 0xF, v, 3));
  }
  static F relu(F v) {  // v > 0 ? v : 0 (maxps gives its second operand on NaN and on ties)
    const F z = _mm512_setzero_ps();  // the masked form: the plain one trips GCC 12's warning
    return _mm512_mask_max_ps(z, static_cast<__mmask16>(0xFFFF), v, z);
  }
  static void storeu(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, F v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static F mask_and(M m, F v) { return _mm512_maskz_mov_ps(m, v); }  // v where m, +0 elsewhere
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(F v) {  // once per plane: through memory (the reduce intrinsics trip
                            // -Wmaybe-uninitialized in GCC 12)
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float s = 0.0f;
    for (int i = 0; i < 16; ++i) s += t[i];
    return s;
  }
};

#include "conv/depthwise_kernels.inc"

void plane_avx512(const DwPlane& a) { plane<Avx512>(a); }
void dots_avx512(const DwDots& a) { dots<Avx512>(a); }
void copy_avx512(float* d, const float* src, i64 n, i64 stride) {
  copy_row<Avx512>(d, src, n, stride);
}
void flat_avx512(const DwFlat& a) { flat<Avx512>(a); }
void flat_dots_avx512(const DwFlatDots& a) { flat_dots<Avx512>(a); }

}  // namespace

const DwKernels& dw_kernels_avx512() {
  // The lanes kernels: AVX2's (8 channels a tile pixel on every ISA).
  static const DwKernels k{&plane_avx512,       &dots_avx512,
                           &copy_avx512,        &flat_avx512,
                           &flat_dots_avx512,   &dw_lanes_in_avx2,
                           &dw_lanes_out_avx2,  &dw_lanes_conv_avx2,
                           &dw_lanes_dots_avx2, "avx512"};
  return k;
}

}  // namespace im2gemm::detail
