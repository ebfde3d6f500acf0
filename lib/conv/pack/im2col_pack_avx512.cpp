// The AVX-512 im2col packer: every segment row is at most three 16-lane masked loads and
// stores. Lanes outside the input are masked off in the load (they read as zero and never
// touch memory). Stride 1: plain masked loads; stride 2: two loads and one two-source permute
// per 16 lanes; strides 3..64: a masked gather; wider strides: the portable loop. Strided
// forward blocks whose plan splits the image into column phases take pack_phases_avx512.
// Compiled with -mavx512f/bw/vl/dq -mbmi2 (meson: the avx512 kernel library).
#include <immintrin.h>

#include <algorithm>

#include "conv/pack/im2col_pack.hpp"

namespace im2gemm::detail {

namespace {

using i64 = std::int64_t;

// Zeros in lanes [0, len) of a segment row (len_bits: its low len bits set).
inline void store_zero_run(float* d, unsigned long long len_bits, i64 len) {
  for (i64 v = 0; v * 16 < len; ++v) {
    _mm512_mask_storeu_ps(d + 16 * v, static_cast<__mmask16>(len_bits >> (16 * v)),
                          _mm512_setzero_ps());
  }
}

// Asks for channel c's input under the segments (their KH input rows each), one channel
// before it is packed: the loads of a block's first touch of a channel missed in cache (perf;
// a block reads short runs of many channel planes, which the hardware prefetchers did not
// follow). Inline assembly: gcc deletes a loop of __builtin_prefetch alone.
inline void prefetch_channel(const PackGeom& g, const float* x, const PackSegment* segs, i64 nseg,
                             i64 c) {
  if (c >= g.C) return;
  const float* xc = x + c * g.H * g.W;
  for (i64 s = 0; s < nseg; ++s) {
    const PackSegment& sg = segs[s];
    const i64 w0 = std::max<i64>(0, sg.iw0);
    const i64 w1 = std::min(g.W, sg.iw0 + (sg.len - 1) * g.SW + (g.KW - 1) * g.DW + 1);
    if (w1 <= w0) continue;  // (a zero tail's rows lie far below 0)
    for (i64 kh = 0; kh < g.KH; ++kh) {
      const i64 ih = sg.ih0 + kh * g.DH;
      if (ih < 0 || ih >= g.H) continue;
      const char* p = reinterpret_cast<const char*>(xc + sg.src + ih * g.W + w0);
      const char* e = reinterpret_cast<const char*>(xc + sg.src + ih * g.W + w1);
      for (; p < e; p += 64) asm volatile("prefetcht0 %0" : : "m"(*p));
      asm volatile("prefetcht0 %0" : : "m"(*(e - 1)));
    }
  }
}

}  // namespace

void pack_im2col_avx512(const PackGeom& g, const float* x, const PackSegment* segs,
                        const LaneRange* ranges, i64 nseg, i64 k0, i64 k1, int nr, float* dst) {
  if (g.SW > 64) {
    pack_im2col_scalar(g, x, segs, ranges, nseg, k0, k1, nr, dst);
    return;
  }
  const i64 khw = g.KH * g.KW, plane = g.H * g.W, sw = g.SW;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i gather_idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int>(sw)));
  i64 c = k0 / khw, kh = (k0 % khw) / g.KW, kw = k0 % g.KW;
  for (i64 kk = k0; kk < k1; ++kk) {
    float* drow = dst + (kk - k0) * nr;
    const i64 dh = kh * g.DH, dw = kw * g.DW;
    const float* xc = x + c * plane;
    if (kh == 0 && kw == 0 && kk + khw < k1) prefetch_channel(g, x, segs, nseg, c + 1);
    for (i64 s = 0; s < nseg; ++s) {
      const PackSegment& sg = segs[s];
      float* d = drow + sg.dst;
      const unsigned long long len_bits = _bzhi_u64(~0ull, static_cast<unsigned>(sg.len));
      const i64 ih = sg.ih0 + dh;
      unsigned long long valid = 0;
      if (ih >= 0 && ih < g.H) {
        const LaneRange r = ranges[s * g.KW + kw];
        valid = _bzhi_u64(~0ull, static_cast<unsigned>(r.hi)) &
                ~_bzhi_u64(~0ull, static_cast<unsigned>(r.lo));
      }
      if (valid == 0) {
        store_zero_run(d, len_bits, sg.len);
        continue;
      }
      // Lane l reads xrow[l*sw]; masked-off lanes are never dereferenced.
      const float* xrow = xc + (sg.src + ih * g.W + sg.iw0 + dw);
      for (i64 v = 0; v * 16 < sg.len; ++v) {
        const __mmask16 m = static_cast<__mmask16>(valid >> (16 * v));
        const __mmask16 st = static_cast<__mmask16>(len_bits >> (16 * v));
        __m512 val;
        if (sw == 1) {
          val = _mm512_maskz_loadu_ps(m, xrow + 16 * v);
        } else if (sw == 2) {
          const unsigned src_bits = static_cast<unsigned>(_pdep_u32(m, 0x55555555u));
          const __m512 a = _mm512_maskz_loadu_ps(static_cast<__mmask16>(src_bits), xrow + 32 * v);
          const __m512 b =
              _mm512_maskz_loadu_ps(static_cast<__mmask16>(src_bits >> 16), xrow + 32 * v + 16);
          val = _mm512_permutex2var_ps(a, even, b);
        } else {
          val = _mm512_mask_i32gather_ps(zero, m, gather_idx, xrow + 16 * v * sw, 4);
        }
        _mm512_mask_storeu_ps(d + 16 * v, st, val);
      }
    }
    next_tap(g, c, kh, kw);
  }
}

// Column phases (im2col_pack.hpp): every segment row is a run of consecutive floats of a
// phase plane inside the plane, so at most three masked loads and stores, no bounds per lane.
void pack_phases_avx512(const PackGeom& g, const float* xs, const PackSegment* segs, i64 nseg,
                        i64 k0, i64 k1, int nr, float* dst) {
  const i64 khw = g.KH * g.KW, wp = phase_width(g);
  i64 c = k0 / khw, kh = (k0 % khw) / g.KW, kw = k0 % g.KW;
  for (i64 kk = k0; kk < k1; ++kk) {
    float* drow = dst + (kk - k0) * nr;
    const i64 q = kw * g.DW, dh = kh * g.DH;
    // Row 0 of the tap's phase plane, moved by the tap's column.
    const float* plane = xs + (c * g.SW + q % g.SW) * g.H * wp + q / g.SW;
    for (i64 s = 0; s < nseg; ++s) {
      const PackSegment& sg = segs[s];
      float* d = drow + sg.dst;
      const unsigned long long len_bits = _bzhi_u64(~0ull, static_cast<unsigned>(sg.len));
      const i64 ih = sg.ih0 + dh;
      if (ih >= 0 && ih < g.H) {
        const float* src = plane + ih * wp + sg.iw0;
        for (i64 v = 0; v * 16 < sg.len; ++v) {
          const __mmask16 m = static_cast<__mmask16>(len_bits >> (16 * v));
          _mm512_mask_storeu_ps(d + 16 * v, m, _mm512_maskz_loadu_ps(m, src + 16 * v));
        }
      } else {
        store_zero_run(d, len_bits, sg.len);
      }
    }
    next_tap(g, c, kh, kw);
  }
}

}  // namespace im2gemm::detail
