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
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static void interleave(F e, F o, F& lo, F& hi) {  // e0 o0 e1 o1 ..., two vectors
    const __m512i l = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    lo = _mm512_permutex2var_ps(e, l, o);
    hi = _mm512_permutex2var_ps(e, _mm512_add_epi32(l, _mm512_set1_epi32(8)), o);
  }
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

// Masked planes (DwMasked; 3x3, one row and column of padding, dilation 1, planes kW wide,
// kW one of kDwMaskedWidths): the source vectors B_i = src[16 i, 16 i + 16) of a plane are
// loaded once a block (zero outside the plane), and a tap's shifted vector for output vector
// v is one valignd of the pair B_{v+q}, B_{v+q+1} (offset d = 16 q + r, 0 <= r < 16: lanes
// r..), q and r constants: a few loads a vector at any alignment, not nine. Rows above and
// below the plane read the zero vectors; the column taps kw = 0 and 2 are masked by the
// call's column masks, kw = 1 needs no mask (lanes past the plane are not stored). kSign: +1
// forward (d = (kh - 1) kW + kw - 1), -1 backward data (d negated). U output vectors in
// flight, B_{v0+kQmin} .. B_{v0+U+kQmax} in registers (the check-ukernel-asm test: no spills).
template <int kW>
inline constexpr int kQmin = -((kW + 1 + 15) / 16);  // floor(-(kW + 1) / 16)
template <int kW>
inline constexpr int kQmax = (kW + 1) / 16;  // floor((kW + 1) / 16)

// Lanes r .. r + 15 of the pair (lo, hi), 0 < r < 16: one valignd. The masked form: the
// plain one trips -Wmaybe-uninitialized in GCC 12's header.
template <int kR>
inline __attribute__((always_inline)) __m512 align_r(__m512i h, __m512i l) {
  return _mm512_castsi512_ps(_mm512_mask_alignr_epi32(l, 0xFFFF, h, l, kR));
}

// The immediate by a switch over literals: r is a constant wherever the tap loops are
// unrolled (every optimised build: the switch folds away), but not at -O0, where the
// intrinsic takes only a literal.
inline __attribute__((always_inline)) __m512 align_lanes(__m512 hi, __m512 lo, int r) {
  const __m512i h = _mm512_castps_si512(hi), l = _mm512_castps_si512(lo);
  switch (r) {
    case 1: return align_r<1>(h, l);
    case 2: return align_r<2>(h, l);
    case 3: return align_r<3>(h, l);
    case 4: return align_r<4>(h, l);
    case 5: return align_r<5>(h, l);
    case 6: return align_r<6>(h, l);
    case 7: return align_r<7>(h, l);
    case 8: return align_r<8>(h, l);
    case 9: return align_r<9>(h, l);
    case 10: return align_r<10>(h, l);
    case 11: return align_r<11>(h, l);
    case 12: return align_r<12>(h, l);
    case 13: return align_r<13>(h, l);
    case 14: return align_r<14>(h, l);
    case 15: return align_r<15>(h, l);
    default: return lo;
  }
}

template <int kSign, int kW>
inline __attribute__((always_inline)) __m512 window_tap(int t, const __m512* b, int u) {
  const int d = kSign * ((t / 3 - 1) * kW + t % 3 - 1);
  const int q = d >= 0 ? d / 16 : -((-d + 15) / 16), r = d - 16 * q;
  const __m512 lo = b[u + q - kQmin<kW>], hi = b[u + q - kQmin<kW> + 1];
  return r == 0 ? lo : align_lanes(hi, lo, r);
}

// The first `lanes` lanes, and vector i of a plane of n floats in nv vectors: zero outside the
// plane, the last one's lanes past n zero. The last vector's mask is made where used from the
// lanes left (as a mask variable it was reloaded from the stack in the loops).
inline __attribute__((always_inline)) __mmask16 tail_mask(i64 lanes) {
  return _cvtu32_mask16((1u << lanes) - 1u);
}

inline __attribute__((always_inline)) __m512 plane_vec(const float* p, i64 i, i64 nv, i64 n) {
  if (i < 0 || i >= nv) return _mm512_setzero_ps();
  if (i + 1 < nv) return _mm512_loadu_ps(p + 16 * i);
  return _mm512_maskz_loadu_ps(tail_mask(n - 16 * i), p + 16 * i);
}

// Vector i of a plane, unchecked where kInner (the caller knows it whole and inside).
template <bool kInner>
inline __attribute__((always_inline)) __m512 plane_vec(const float* p, i64 i, i64 nv, i64 n) {
  return kInner ? _mm512_loadu_ps(p + 16 * i) : plane_vec(p, i, nv, n);
}

// The kB vectors of a block's window: b[u] = B_{v0 + kQmin + u} of the plane at p. kInner:
// all of them whole vectors inside the plane (inner_block), loaded without the checks (two
// compares and branches a vector, as many instructions as the block's FMAs).
template <int kW, int kB, bool kInner>
inline __attribute__((always_inline)) void load_window(__m512* b, const float* p, i64 v0, i64 nv,
                                                       i64 n) {
#pragma GCC unroll 24
  for (int u = 0; u < kB; ++u) b[u] = plane_vec<kInner>(p, v0 + kQmin<kW> + u, nv, n);
}

// Whether the window of the block of U output vectors from v0 (B_{v0+kQmin} ..
// B_{v0+U+kQmax}) lies in the plane's whole vectors (all but the last of the nv).
template <int kW, int U>
inline bool inner_block(i64 v0, i64 nv) {
  return v0 + kQmin<kW> >= 0 && v0 + U + kQmax<kW> < nv - 1;
}

template <int kSign, int kW>
void masked_window(const DwMasked& a) {
  const i64 n = a.n, nvec = (n + 15) / 16;
  // U output vectors from v0 of the plane at out, from the source plane src, weights wf.
  // kFirst: the sums start at init (else at out); kRelu: relu at the store. Template
  // arguments: as run-time flags they were kept on the stack in the loop. The weights are
  // broadcast from memory at each FMA: nine registers held them and pushed the sums and B
  // vectors to the stack. The lambdas are made once, outside the plane loop (made a plane,
  // their captures were stored through vector registers to the stack every plane).
  auto block = [&]<int U, bool kFirst, bool kRelu, bool kInner>(const float* src, float* out,
                                                                const float* wf, __m512 init,
                                                                i64 v0) {
    constexpr int kB = U + kQmax<kW> - kQmin<kW> + 1;
    __m512 b[kB], acc[U];
    load_window<kW, kB, kInner>(b, src, v0, nvec, n);
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) acc[u] = kFirst ? init : plane_vec<kInner>(out, v0 + u, nvec, n);
      // Taps column by column: a column's mask serves its three taps.
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      __mmask16 k[U];
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) k[u] = kw == 1 ? __mmask16(0xFFFF) : a.colmask[(v0 + u) * 3 + kw];
#pragma GCC unroll 3
      for (int kh = 0; kh < 3; ++kh) {
        const int t = kh * 3 + kw;
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) {
          const __m512 x = window_tap<kSign, kW>(t, b, u);
          const __m512 w = _mm512_set1_ps(wf[t]);
          acc[u] = kw == 1 ? _mm512_fmadd_ps(w, x, acc[u])
                           : _mm512_mask3_fmadd_ps(w, x, acc[u], k[u]);
        }
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const i64 v = v0 + u;
      const __m512 r = kRelu ? Avx512::relu(acc[u]) : acc[u];
      if (kInner || v + 1 < nvec) {
        _mm512_storeu_ps(out + 16 * v, r);
      } else {
        _mm512_mask_storeu_ps(out + 16 * v, tail_mask(n - 16 * v), r);
      }
    }
  };
  auto run = [&]<bool kFirst, bool kRelu>(const float* src, float* out, const float* wf,
                                          __m512 init) {
    // Four vectors a block; two on the widest planes, whose three tap rows' B vectors would
    // not all fit in registers beside four sums.
    constexpr int kU = kW >= 112 ? 2 : 4;
    i64 v = 0;
    for (; v + kU <= nvec; v += kU) {
      if (inner_block<kW, kU>(v, nvec)) {
        block.template operator()<kU, kFirst, kRelu, true>(src, out, wf, init, v);
      } else {
        block.template operator()<kU, kFirst, kRelu, false>(src, out, wf, init, v);
      }
    }
    switch (nvec - v) {  // fewer than kU left
      case 3:
        if constexpr (kU > 3)
          block.template operator()<3, kFirst, kRelu, false>(src, out, wf, init, v);
        break;
      case 2:
        if constexpr (kU > 2)
          block.template operator()<2, kFirst, kRelu, false>(src, out, wf, init, v);
        break;
      case 1: block.template operator()<1, kFirst, kRelu, false>(src, out, wf, init, v); break;
      default: break;
    }
  };
  // Output plane o's filter and first source plane, by counters (no division a plane).
  i64 fo = a.o0 % a.fmod, sphase = a.o0 * a.J % a.sdiv;
  const float* src0 = a.src + a.o0 * a.J / a.sdiv * n;
  for (i64 o = a.o0; o < a.o1; ++o) {
    float* out = a.out + o * n;
    const float* src = src0;
    for (i64 j = 0; j < a.J; ++j, src += n) {
      const i64 f = fo * a.J + j;
      const float* wf = a.w + f * 9;
      const __m512 init = _mm512_set1_ps(j == 0 && a.bias != nullptr ? a.bias[f] : 0.0f);
      const bool relu = a.relu && j == a.J - 1;
      if (j == 0) {
        relu ? run.template operator()<true, true>(src, out, wf, init)
             : run.template operator()<true, false>(src, out, wf, init);
      } else {
        relu ? run.template operator()<false, true>(src, out, wf, init)
             : run.template operator()<false, false>(src, out, wf, init);
      }
    }
    if (++fo == a.fmod) fo = 0;
    sphase += a.J;  // the next output plane's first source plane
    src0 += sphase / a.sdiv * n;
    sphase %= a.sdiv;
  }
}

// The column masks of a whole 7 x 7 plane: output vector u's lanes (pixel p = 16 u + l < 49)
// whose tap column kw (kSign +1: column p % 7 + kw - 1; -1: p % 7 - kw + 1) lies in the row.
// Constants: as a table in memory they were reloaded in the loops (seven mask registers).
template <int kSign>
constexpr __mmask16 mask_7x7(int u, int kw) {
  unsigned m = 0;
  for (int l = 0; l < 16; ++l) {
    const int p = 16 * u + l, c = p % 7 + kSign * (kw - 1);
    if (p < 49 && c >= 0 && c < 7) m |= 1u << l;
  }
  return static_cast<__mmask16>(m);
}

// A whole 7 x 7 plane (49 floats), straight-line: pixels 0 .. 47 in three output vectors,
// B_{-1} zero, B_0..B_3 loaded (B_3: pixel 48 alone), every tap's shifted vectors constant
// valignds, the column taps masked by constant masks (mask_7x7), the weights embedded
// broadcasts as in masked_window; pixel 48 by four scalar FMAs. Forward and backward data
// with one source plane an output plane (J = 1).
template <int kSign, bool kRelu>
void masked_7x7(const DwMasked& a) {
  i64 fo = a.o0 % a.fmod, sphase = a.o0 % a.sdiv;
  const float* src = a.src + a.o0 / a.sdiv * 49;
  float* out = a.out + a.o0 * 49;
  for (i64 o = a.o0; o < a.o1; ++o, out += 49) {
    const float* wf = a.w + fo * 9;
    // B_{-1} .. B_3 (B_3: pixel 48 alone); pixels 0 .. 47 in three vectors.
    const __m512 b[5] = {_mm512_setzero_ps(), _mm512_loadu_ps(src), _mm512_loadu_ps(src + 16),
                         _mm512_loadu_ps(src + 32), _mm512_maskz_loadu_ps(1, src + 48)};
    __m512 acc[3];
    const float bias = a.bias != nullptr ? a.bias[fo] : 0.0f;
    const __m512 init = _mm512_set1_ps(bias);
    // Pixel 48 (row and column 6) by scalar FMAs in the vectors' tap order, over the four
    // taps that read the plane (as a fourth vector: nine FMAs and shuffles for one lane;
    // there the taps outside the plane added w * 0).
    __m128 corner = _mm_set_ss(bias);
#pragma GCC unroll 3
    for (int u = 0; u < 3; ++u) acc[u] = init;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
#pragma GCC unroll 3
      for (int kh = 0; kh < 3; ++kh) {
        const int t = kh * 3 + kw;
#pragma GCC unroll 3
        for (int u = 0; u < 3; ++u) {
          const __m512 x = window_tap<kSign, 7>(t, b, u);
          const __m512 w = _mm512_set1_ps(wf[t]);
          acc[u] = kw == 1 ? _mm512_fmadd_ps(w, x, acc[u])
                           : _mm512_mask3_fmadd_ps(w, x, acc[u], mask_7x7<kSign>(u, kw));
        }
        const int r = 6 + kSign * (kh - 1), c = 6 + kSign * (kw - 1);
        if (r < 7 && c < 7) {  // r, c >= 5
          corner = _mm_fmadd_ss(_mm_load_ss(wf + t), _mm_load_ss(src + r * 7 + c), corner);
        }
      }
    }
#pragma GCC unroll 3
    for (int u = 0; u < 3; ++u) {
      if (kRelu) acc[u] = Avx512::relu(acc[u]);
    }
    if (kRelu) corner = _mm_max_ss(corner, _mm_setzero_ps());  // as Avx512::relu
    _mm512_storeu_ps(out, acc[0]);
    _mm512_storeu_ps(out + 16, acc[1]);
    _mm512_storeu_ps(out + 32, acc[2]);
    _mm_store_ss(out + 48, corner);
    if (++fo == a.fmod) fo = 0;
    if (++sphase == a.sdiv) sphase = 0, src += 49;
  }
}

// The 16 lanes of v added pairwise (halves, then quarters, ...): in registers (Avx512::hsum
// goes through memory: some 33 instructions a vector, a third of masked_dots_7x7's work
// besides its FMAs, and stack traffic in the filter loop around the k loop).
// The halves by masked extracts: the plain ones (and the cast) trip -Wmaybe-uninitialized in
// GCC 12's header.
inline float hsum_tree(__m512 v) {
  const __m512d vd = _mm512_castps_pd(v);
  const __m256 lo = _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xF, vd, 0));
  const __m256 hi = _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xF, vd, 1));
  const __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
}

// db[f] of DwMaskedDots (masked_dots_window on 112-wide planes): filter f's dy planes summed
// by lanes, images and vectors in order, then the lanes pairwise. A second pass over the
// planes after the tap sums: in their loop it would take a register from them.
float dy_sum(const DwMaskedDots& a, i64 f) {
  const i64 nvec = (a.n + 15) / 16;
  __m512 bsum = _mm512_setzero_ps();
  for (i64 im = 0; im < a.N; ++im) {
    const float* d = a.dy + (im * a.F + f) * a.n;
    for (i64 v = 0; v < nvec; ++v) bsum = _mm512_add_ps(bsum, plane_vec(d, v, nvec, a.n));
  }
  return hsum_tree(bsum);
}

// Backward weights over whole 7 x 7 planes (DwMaskedDots): the nine taps' lane sums (and
// dy's, kDb) in registers over a filter's images; per image the x plane's B vectors and dy's
// first three vectors loaded once, each tap's shifted x vectors constant valignds as in
// masked_7x7, every tap masked (kw = 1 by the plane bits) by constant masks. Pixel 48, alone
// in a fourth vector, is four products of one 128-bit FMA, summed over the images apart and
// added to the taps' lane sums last. db in the same loop (no second pass over dy). Planes
// kAhead images on are prefetched.
template <bool kDb>
void masked_dots_7x7(const DwMaskedDots& a) {
  constexpr i64 kAhead = 1;  // images: 2 and 4 measured level or behind
  for (i64 f = a.f0; f < a.f1; ++f) {
    // acc stays in registers only if every loop over it is unrolled (an indexed access
    // gives it an address: the sums then lived on the stack).
    __m512 acc[9], bsum = _mm512_setzero_ps();
    __m128 corner = _mm_setzero_ps();
    float bcorner = 0.0f;
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) acc[t] = _mm512_setzero_ps();
    const i64 c = f / a.k;
    // The planes kAhead images on (of this filter, then the next), C and F planes apart: no
    // stream for the hardware to follow.
    i64 pn = a.N > kAhead ? kAhead : 0, pf = a.N > kAhead ? f : f + 1;
    for (i64 n = 0; n < a.N; ++n) {
      const float* xs = a.x + (n * a.C + c) * 49;
      const float* d = a.dy + (n * a.F + f) * 49;
      if (pf < a.f1) {
        const char* px = reinterpret_cast<const char*>(a.x + (pn * a.C + pf / a.k) * 49);
        const char* pd = reinterpret_cast<const char*>(a.dy + (pn * a.F + pf) * 49);
        for (int l : {0, 64, 128, 195}) {  // every line of 196 bytes at any offset
          _mm_prefetch(px + l, _MM_HINT_T0);
          _mm_prefetch(pd + l, _MM_HINT_T0);
        }
      }
      if (++pn == a.N) pn = 0, ++pf;
      // B_{-1} .. B_3 (B_3: pixel 48 alone), dy's first three vectors.
      const __m512 b[5] = {_mm512_setzero_ps(), _mm512_loadu_ps(xs), _mm512_loadu_ps(xs + 16),
                           _mm512_loadu_ps(xs + 32), _mm512_maskz_loadu_ps(1, xs + 48)};
      const __m512 dv[3] = {_mm512_loadu_ps(d), _mm512_loadu_ps(d + 16), _mm512_loadu_ps(d + 32)};
      // Vector by vector, the nine taps' chains side by side (u a constant: its masks
      // immediates, its B vectors named registers).
      auto vec = [&]<int u>() {
#pragma GCC unroll 9
        for (int t = 0; t < 9; ++t) {
          acc[t] = _mm512_mask3_fmadd_ps(dv[u], window_tap<1, 7>(t, b, u), acc[t],
                                         mask_7x7<1>(u, t % 3));
        }
      };
      vec.template operator()<0>();
      vec.template operator()<1>();
      vec.template operator()<2>();
      // Pixel 48, the last corner, reads four taps: x[40], x[41], x[47], x[48] for taps 0, 1,
      // 3, 4 (as a fourth vector: nine FMAs and shuffles for one lane).
      // 64-bit loads of the unaligned type (_mm_load_sd reads an aligned double: UBSan).
      const __m128i x40 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(xs + 40));
      const __m128i x47 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(xs + 47));
      const __m128 xc = _mm_castsi128_ps(_mm_unpacklo_epi64(x40, x47));
      corner = _mm_fmadd_ps(_mm_set1_ps(d[48]), xc, corner);
      if (kDb) {
        bsum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(bsum, dv[0]), dv[1]), dv[2]);
        bcorner += d[48];
      }
    }
    alignas(16) float c4[4];
    _mm_store_ps(c4, corner);
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) a.dw[f * 9 + t] = hsum_tree(acc[t]);
    a.dw[f * 9 + 0] += c4[0];
    a.dw[f * 9 + 1] += c4[1];
    a.dw[f * 9 + 3] += c4[2];
    a.dw[f * 9 + 4] += c4[3];
    if (kDb) a.db[f] = hsum_tree(bsum) + bcorner;
  }
}

// Backward weights over masked planes of any of the widths (DwMaskedDots): the nine taps'
// lane sums in registers over a filter's images; per block of U vectors (four, two on
// 112-wide planes, as in masked_window) the B vectors and dy's loaded once, each tap's
// shifted x vectors constant valignds as in masked_window. Every tap is masked by the call's
// column masks (kw = 1 by the plane bits: past the plane dy is zero but x may not be finite).
template <int kW, bool kDb>
void masked_dots_window(const DwMaskedDots& a) {
  // db's sum in the block loop up to 56 wide; at 112 that register pushed the sums to the
  // stack, and dy_sum makes a second pass (the same order: the same db).
  constexpr bool kDbHere = kDb && kW < 112;
  const i64 n = a.n, nvec = (n + 15) / 16;
  for (i64 f = a.f0; f < a.f1; ++f) {
    // acc stays in registers only if every loop over it is unrolled.
    __m512 acc[9], bsum = _mm512_setzero_ps();
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) acc[t] = _mm512_setzero_ps();
    const i64 c = f / a.k;
    for (i64 im = 0; im < a.N; ++im) {
      const float* xs = a.x + (im * a.C + c) * n;
      const float* d = a.dy + (im * a.F + f) * n;
      auto block = [&]<int U, bool kInner>(i64 v0) __attribute__((always_inline)) {
        constexpr int kB = U + kQmax<kW> - kQmin<kW> + 1;
        __m512 b[kB], dv[U];
        load_window<kW, kB, kInner>(b, xs, v0, nvec, n);
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) dv[u] = plane_vec<kInner>(d, v0 + u, nvec, n);
        if (kDbHere) {
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u) bsum = _mm512_add_ps(bsum, dv[u]);
        }
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) {
          const std::uint16_t* m = a.colmask + (v0 + u) * 3;  // kw = 0, 1, 2
#pragma GCC unroll 9
          for (int t = 0; t < 9; ++t) {
            acc[t] = _mm512_mask3_fmadd_ps(dv[u], window_tap<1, kW>(t, b, u), acc[t], m[t % 3]);
          }
        }
      };
      constexpr int kU = kW >= 112 ? 2 : 4;
      i64 v = 0;
      for (; v + kU <= nvec; v += kU) {
        if (inner_block<kW, kU>(v, nvec)) {
          block.template operator()<kU, true>(v);
        } else {
          block.template operator()<kU, false>(v);
        }
      }
      switch (nvec - v) {  // fewer than kU left
        case 3:
          if constexpr (kU > 3) block.template operator()<3, false>(v);
          break;
        case 2:
          if constexpr (kU > 2) block.template operator()<2, false>(v);
          break;
        case 1: block.template operator()<1, false>(v); break;
        default: break;
      }
    }
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) a.dw[f * 9 + t] = hsum_tree(acc[t]);
    if (kDb) a.db[f] = kDbHere ? hsum_tree(bsum) : dy_sum(a, f);
  }
}

void masked_dots_avx512(const DwMaskedDots& a) {
  const bool db = a.db != nullptr;
  if (a.n == 49) return db ? masked_dots_7x7<true>(a) : masked_dots_7x7<false>(a);
  switch (a.W) {  // W one of kDwMaskedWidths
    case 7: return db ? masked_dots_window<7, true>(a) : masked_dots_window<7, false>(a);
    case 14: return db ? masked_dots_window<14, true>(a) : masked_dots_window<14, false>(a);
    case 28: return db ? masked_dots_window<28, true>(a) : masked_dots_window<28, false>(a);
    case 56: return db ? masked_dots_window<56, true>(a) : masked_dots_window<56, false>(a);
    default: return db ? masked_dots_window<112, true>(a) : masked_dots_window<112, false>(a);
  }
}

void masked_avx512(const DwMasked& a) {
  if (a.n == 49 && a.J == 1) {  // whole 7 x 7 planes
    if (a.sign > 0) return a.relu ? masked_7x7<1, true>(a) : masked_7x7<1, false>(a);
    return a.relu ? masked_7x7<-1, true>(a) : masked_7x7<-1, false>(a);
  }
  switch (a.sign * a.W) {  // W one of kDwMaskedWidths
    case 7: return masked_window<1, 7>(a);
    case -7: return masked_window<-1, 7>(a);
    case 14: return masked_window<1, 14>(a);
    case -14: return masked_window<-1, 14>(a);
    case 28: return masked_window<1, 28>(a);
    case -28: return masked_window<-1, 28>(a);
    case 56: return masked_window<1, 56>(a);
    case -56: return masked_window<-1, 56>(a);
    case 112: return masked_window<1, 112>(a);
    default: return masked_window<-1, 112>(a);
  }
}

void stride2_data_avx512(const DwStride2Data& a) { stride2_data<Avx512>(a); }
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
  static const DwKernels k{&plane_avx512,
                           &dots_avx512,
                           &copy_avx512,
                           &flat_avx512,
                           &flat_dots_avx512,
                           &dw_lanes_in_avx2,
                           &dw_lanes_out_avx2,
                           &dw_lanes_conv_avx2,
                           &dw_lanes_dots_avx2,
                           &masked_avx512,
                           &masked_dots_avx512,
                           &stride2_data_avx512,
                           "avx512"};
  return k;
}

}  // namespace im2gemm::detail
