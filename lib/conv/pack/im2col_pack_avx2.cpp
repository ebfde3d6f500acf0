// The AVX2 im2col packer for 16-lane micro-panels: every panel row is assembled in two ymm
// registers from the segments that share it and written with two aligned stores, so no lane
// is written twice and no masked store is issued (a masked store costs about ten cycles on
// AMD Zen 2/3). A segment's lanes that fall outside the input are masked off in the load
// (they read as zero and never touch memory). Stride 1: runs of whole or half panels one run
// at a time over all k rows (pack_halves), else panel by panel over all k rows
// (pack_by_panel), else row by row; masked loads, plain ones for a whole in-bounds run.
// Strides 2-4 from column phases (split 8 columns at a time at strides 2 and 4): panel by
// panel as at stride 1; stride 2 without phases: two loads per 8 lanes and a permute; other
// strides, and panels of another width, the portable loop.
// Compiled with -mavx2 -mfma (meson: the avx2 kernel library).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "conv/pack/im2col_pack.hpp"

namespace im2gemm::detail {

#define PACK_FN_NAME pack_im2col_avx2_portable
#include "conv/pack/im2col_pack_generic.inc"
#undef PACK_FN_NAME

#define PHASE_FN_NAME pack_phases_avx2_portable
#include "conv/pack/im2col_phases_generic.inc"
#undef PHASE_FN_NAME

namespace {

using i64 = std::int64_t;

// Lanes q of 8 with lo <= q < hi, as a maskload mask.
inline __m256i lanes_between(i64 lo, i64 hi, __m256i iota) {
  const __m256i ge = _mm256_cmpgt_epi32(iota, _mm256_set1_epi32(static_cast<int>(lo - 1)));
  const __m256i lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), iota);
  return _mm256_and_si256(ge, lt);
}

// The float `floats` past the address `base`, formed as an integer: the panel's lane 0 can
// lie before the input, where no pointer may point (its lanes are masked off, never read).
inline const float* at(std::uintptr_t base, i64 floats) {
  return reinterpret_cast<const float*>(base + static_cast<std::uintptr_t>(floats) * sizeof(float));
}

// The 8 even-indexed floats of the 16 at `base` + o, each loaded only where its bit in
// m0 / m1 is set (m0 covers the first 8, m1 the next 8).
inline __m256 load_even(std::uintptr_t base, i64 o, __m256i m0, __m256i m1) {
  const __m256 a = _mm256_maskload_ps(at(base, o), m0), b = _mm256_maskload_ps(at(base, o + 8), m1);
  const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}

// Panel lanes [qlo, qhi) of a 16-lane panel row from consecutive floats, lane q reading the
// float (q past p; lanes outside never touched): two plain loads for a whole panel, else
// masked loads or'd into lo8 / hi8.
inline void or_run16(std::uintptr_t p, i64 qlo, i64 qhi, __m256i iota, __m256& lo8, __m256& hi8) {
  if (qlo == 0 && qhi == 16) {
    lo8 = _mm256_loadu_ps(at(p, 0));
    hi8 = _mm256_loadu_ps(at(p, 8));
    return;
  }
  if (qlo < 8) lo8 = _mm256_or_ps(lo8, _mm256_maskload_ps(at(p, 0), lanes_between(qlo, qhi, iota)));
  if (qhi > 8) {
    hi8 = _mm256_or_ps(hi8, _mm256_maskload_ps(at(p, 8), lanes_between(qlo - 8, qhi - 8, iota)));
  }
}

// One k row of a block in 16-lane panels: each panel row assembled in two registers from the
// segments that share it (in order, covering its 16 lanes) and written with two aligned
// stores. seg(s, ih, lo8, hi8) ors segment s's lanes in; segments whose input row ih
// (ih0 + dh) lies outside the input stay zero.
template <class Seg>
inline void assemble_panel_rows(const PackGeom& g, const PackSegment* segs, i64 nseg, i64 dh,
                                float* drow, Seg&& seg) {
  for (i64 s = 0; s < nseg;) {
    const i64 panel = segs[s].dst - (segs[s].dst & 15);
    __m256 lo8 = _mm256_setzero_ps(), hi8 = _mm256_setzero_ps();
    for (; s < nseg && segs[s].dst - (segs[s].dst & 15) == panel; ++s) {
      const i64 ih = segs[s].ih0 + dh;
      if (ih >= 0 && ih < g.H) seg(s, ih, lo8, hi8);
    }
    _mm256_store_ps(drow + panel, lo8);
    _mm256_store_ps(drow + panel + 8, hi8);
  }
}

// The segment- and panel-major loops read, per k row, one run of a channel's input row and
// move on to the next channel plane: more streams than a hardware prefetcher follows, so every
// line of x came in on demand (vgg_conv1_2 forward: the packer 22% of the pass, stalled on its
// loads). Each k row fetches the line three lines past its run's start, which the segment or
// panel after next reads (10% with it).
constexpr i64 kPrefetchFloats = 47;

inline void prefetch_ahead(std::uintptr_t p) {
  _mm_prefetch(reinterpret_cast<const char*>(at(p, kPrefetchFloats)), _MM_HINT_T0);
}

// The taps' offsets kh*DH*W + kw*DW, tabulated for the segment- and panel-major loops
// (larger kernels keep the row-major one).
constexpr i64 kMaxTabulatedTaps = 256;

void stride1_taps(const PackGeom& g, i64* tap) {
  for (i64 t = 0; t < g.KH * g.KW; ++t) tap[t] = (t / g.KW) * g.DH * g.W + (t % g.KW) * g.DW;
}

// Stride 1, every segment a whole aligned half panel (8 lanes at lane 0 or 8) or a whole
// panel, some of them halves: each segment owns its lanes in every panel row, so it can be packed alone, all k rows
// in one loop: a segment inside the image (every tap's row and columns in it: rows of 8 or 16
// pixels away from the padding, e.g. all of lenet_conv2) is one plain load and one aligned
// store per k row (the row-major loop below spent more time per row walking the segments
// than copying, 24% of lenet_conv2's forward against 44% for the micro-kernel).
bool pack_halves(const PackGeom& g, const float* x, const PackSegment* segs,
                 const LaneRange* ranges, i64 nseg, i64 k0, i64 k1, float* dst) {
  const i64 khw = g.KH * g.KW;
  if (g.SW != 1 || khw > kMaxTabulatedTaps) return false;
  bool halves = false;
  for (i64 s = 0; s < nseg; ++s) {
    const i64 f = segs[s].dst & 15, len = segs[s].len;
    if (!((f == 0 && len == 16) || ((f == 0 || f == 8) && len == 8))) return false;
    halves = halves || len == 8;
  }
  // Whole-panel segments only (rows of a multiple of 16 pixels): not taken here (the row-major
  // loop measured level or ahead of this one on vgg_conv1_2); pack_s1_by_panel takes them, and
  // measured level with the row-major loop there.
  if (!halves) return false;
  i64 tap[kMaxTabulatedTaps];
  stride1_taps(g, tap);
  const i64 plane = g.H * g.W, c0 = k0 / khw, t0 = k0 % khw;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (i64 s = 0; s < nseg; ++s) {
    const PackSegment& sg = segs[s];
    const i64 len = sg.len;
    float* d = dst + sg.dst;  // row kk at d + (kk - k0) * 16
    const LaneRange* r = ranges + s * g.KW;
    if (sg.ih0 + (g.KH - 1) * g.DH < 0 || sg.ih0 >= g.H) {
      // No tap row in the input (the zero tail past j1 among them, whose ih0 is far below any
      // row: no input position may be formed from it).
      for (i64 kk = k0; kk < k1; ++kk, d += 16) {
        for (i64 h = 0; h < len; h += 8) _mm256_store_ps(d + h, _mm256_setzero_ps());
      }
      continue;
    }
    bool inside = sg.ih0 >= 0 && sg.ih0 + (g.KH - 1) * g.DH < g.H;
    for (i64 kw = 0; kw < g.KW && inside; ++kw) inside = r[kw].lo == 0 && r[kw].hi == len;
    // Input position of tap 0 of channel c0, as an integer (see at()).
    std::uintptr_t base = reinterpret_cast<std::uintptr_t>(x) +
                          static_cast<std::uintptr_t>(sg.src + c0 * plane + sg.ih0 * g.W + sg.iw0) *
                              sizeof(float);
    const std::uintptr_t step = static_cast<std::uintptr_t>(plane) * sizeof(float);
    i64 t = t0;
    if (inside) {
      for (i64 kk = k0; kk < k1; ++kk, d += 16) {
        prefetch_ahead(base + static_cast<std::uintptr_t>(tap[t]) * sizeof(float));
        _mm256_store_ps(d, _mm256_loadu_ps(at(base, tap[t])));
        if (len == 16) _mm256_store_ps(d + 8, _mm256_loadu_ps(at(base, tap[t] + 8)));
        if (++t == khw) {
          t = 0;
          base += step;
        }
      }
      continue;
    }
    for (i64 kk = k0; kk < k1; ++kk, d += 16) {
      const i64 kh = t / g.KW, kw = t % g.KW, ih = sg.ih0 + kh * g.DH;
      const bool row_in = ih >= 0 && ih < g.H;
      for (i64 h = 0; h < len; h += 8) {
        __m256 v = _mm256_setzero_ps();
        if (row_in && r[kw].lo < r[kw].hi) {
          v = _mm256_maskload_ps(at(base, tap[t] + h),
                                 lanes_between(r[kw].lo - h, r[kw].hi - h, iota));
        }
        _mm256_store_ps(d + h, v);
      }
      if (++t == khw) {
        t = 0;
        base += step;
      }
    }
  }
  return true;
}

// Panel by panel: each 16-lane panel's segments (at most kMaxPanelSegments) packed for all
// k rows of the block, their lane masks and the taps whose rows lie in the input worked out
// once per panel rather than once per k row (the row-major loops below walk every segment
// of the block once per k row: the phase packer's took 8.4% of alexnet_conv1's forward
// against 53% for the micro-kernel). Tap t = kh * KW + kw of channel c reads
// src + c * cstride + tap[t] + (segment's ih0 * row + iw0), row floats a row; ranges: the
// segments' lanes inside the input per kw (stride 1), or null where every lane is (column
// phases, whose rows hold the padding). Returns false, having written nothing, where a
// panel has more segments or the filter more taps than the tables hold.
constexpr i64 kMaxPanelSegments = 4;
constexpr i64 kMaxPanelKW = 16;

bool pack_by_panel(const PackGeom& g, const float* src, i64 row, i64 cstride, const i64* tap,
                   bool image_offsets, const PackSegment* segs, const LaneRange* ranges, i64 nseg,
                   i64 k0, i64 k1, float* dst) {
  const i64 khw = g.KH * g.KW;
  if (khw > kMaxTabulatedTaps || g.KW > kMaxPanelKW) return false;
  for (i64 s = 0, n = 0; s < nseg; ++s) {
    n = s > 0 && (segs[s].dst & ~i64{15}) == (segs[s - 1].dst & ~i64{15}) ? n + 1 : 1;
    if (n > kMaxPanelSegments) return false;
  }
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const i64 c0 = k0 / khw, t0 = k0 % khw;
  const auto src0 = reinterpret_cast<std::uintptr_t>(src) +
                    static_cast<std::uintptr_t>(c0 * cstride) * sizeof(float);
  struct Seg {
    std::uintptr_t base;       // lane 0 of tap 0 of channel c0 (an integer: see at())
    i64 kh_lo, kh_hi;          // the taps whose row lies in the input
    __m256i mlo[kMaxPanelKW];  // per kw, the lanes read in the panel's first half
    __m256i mhi[kMaxPanelKW];  // and second half
    bool lo, hi;               // whether the segment owns any lane of either half
  };
  for (i64 s = 0; s < nseg;) {
    const i64 panel = segs[s].dst & ~i64{15};
    Seg sg[kMaxPanelSegments];
    int n = 0;
    bool full = true;  // every lane of every segment inside the input, for every kw
    for (; s < nseg && (segs[s].dst & ~i64{15}) == panel; ++s, ++n) {
      const PackSegment& q = segs[s];
      const i64 f = q.dst & 15;
      Seg& e = sg[n];
      // Rows ih0 + kh * DH in [0, H): kh in [kh_lo, kh_hi) (none for the zero tail).
      e.kh_lo = q.ih0 >= 0 ? 0 : (-q.ih0 + g.DH - 1) / g.DH;
      e.kh_hi = q.ih0 >= g.H ? 0 : std::min(g.KH, (g.H - 1 - q.ih0) / g.DH + 1);
      if (q.ih0 < -g.KH * g.DH) e.kh_lo = e.kh_hi = 0;
      e.base = e.kh_lo < e.kh_hi ? src0 + static_cast<std::uintptr_t>((image_offsets ? q.src : 0) +
                                                                      q.ih0 * row + q.iw0 - f) *
                                              sizeof(float)
                                 : 0;
      for (i64 kw = 0; kw < g.KW; ++kw) {
        const LaneRange r = ranges ? ranges[s * g.KW + kw] : LaneRange{0, static_cast<int>(q.len)};
        full = full && r.lo == 0 && r.hi == q.len;
        e.mlo[kw] = lanes_between(f + r.lo, f + r.hi, iota);
        e.mhi[kw] = lanes_between(f + r.lo - 8, f + r.hi - 8, iota);
      }
      e.lo = f < 8;
      e.hi = f + q.len > 8;
    }
    float* d = dst + panel;
    std::uintptr_t cb = 0;  // channel offset, bytes
    const std::uintptr_t cstep = static_cast<std::uintptr_t>(cstride) * sizeof(float);
    if (n == 1 && full && segs[s - 1].len == 16 && sg[0].kh_lo == 0 && sg[0].kh_hi == g.KH) {
      // One segment, every tap inside the input: two loads, two stores a row.
      for (i64 kk = k0, t = t0; kk < k1; ++kk, d += 16) {
        const std::uintptr_t p = sg[0].base + cb + static_cast<std::uintptr_t>(tap[t]) * 4;
        prefetch_ahead(p);
        _mm256_store_ps(d, _mm256_loadu_ps(at(p, 0)));
        _mm256_store_ps(d + 8, _mm256_loadu_ps(at(p, 8)));
        if (++t == khw) {
          t = 0;
          cb += cstep;
        }
      }
      continue;
    }
    for (i64 kk = k0, t = t0; kk < k1; ++kk, d += 16) {
      const i64 kh = t / g.KW, kw = t - kh * g.KW;
      __m256 lo8 = _mm256_setzero_ps(), hi8 = _mm256_setzero_ps();
      for (int j = 0; j < n; ++j) {
        const Seg& e = sg[j];
        if (kh < e.kh_lo || kh >= e.kh_hi) continue;
        const std::uintptr_t p = e.base + cb + static_cast<std::uintptr_t>(tap[t]) * 4;
        prefetch_ahead(p);
        if (e.lo) lo8 = _mm256_or_ps(lo8, _mm256_maskload_ps(at(p, 0), e.mlo[kw]));
        if (e.hi) hi8 = _mm256_or_ps(hi8, _mm256_maskload_ps(at(p, 8), e.mhi[kw]));
      }
      _mm256_store_ps(d, lo8);
      _mm256_store_ps(d + 8, hi8);
      if (++t == khw) {
        t = 0;
        cb += cstep;
      }
    }
  }
  return true;
}

// Column phases panel by panel (pack_by_panel): tap kw (q = kw * DW) reads phase plane
// q % SW at column q / SW; no lane is outside a phase row.
bool pack_phases_by_panel(const PackGeom& g, const float* xs, const PackSegment* segs, i64 nseg,
                          i64 k0, i64 k1, float* dst) {
  const i64 khw = g.KH * g.KW, wp = phase_width(g);
  if (khw > kMaxTabulatedTaps) return false;
  i64 tap[kMaxTabulatedTaps];
  for (i64 t = 0; t < khw; ++t) {
    const i64 kh = t / g.KW, q = (t % g.KW) * g.DW;
    tap[t] = (q % g.SW) * g.H * wp + kh * g.DH * wp + q / g.SW;
  }
  return pack_by_panel(g, xs, wp, g.SW * g.H * wp, tap, false, segs, nullptr, nseg, k0, k1, dst);
}

// Stride 1 panel by panel (pack_by_panel), straight from x: panels shared by segments of
// several output rows (rows narrower than a panel, or not a multiple of it: resnet_l4's 7
// pixels).
bool pack_s1_by_panel(const PackGeom& g, const float* x, const PackSegment* segs,
                      const LaneRange* ranges, i64 nseg, i64 k0, i64 k1, float* dst) {
  const i64 khw = g.KH * g.KW;
  if (g.SW != 1 || khw > kMaxTabulatedTaps) return false;
  i64 tap[kMaxTabulatedTaps];
  stride1_taps(g, tap);
  return pack_by_panel(g, x, g.W, g.H * g.W, tap, true, segs, ranges, nseg, k0, k1, dst);
}

}  // namespace

void pack_im2col_avx2(const PackGeom& g, const float* x, const PackSegment* segs,
                      const LaneRange* ranges, i64 nseg, i64 k0, i64 k1, int nr, float* dst) {
  // Panels of 16 lanes (the AVX2 configuration) and strides 1 and 2; segments' dst offsets
  // are then panel * panel_stride + first lane with panel_stride a multiple of 16.
  if (nr != 16 || g.SW > 2) {
    pack_im2col_avx2_portable(g, x, segs, ranges, nseg, k0, k1, nr, dst);
    return;
  }
  if (pack_halves(g, x, segs, ranges, nseg, k0, k1, dst)) return;
  if (pack_s1_by_panel(g, x, segs, ranges, nseg, k0, k1, dst)) return;
  const i64 khw = g.KH * g.KW, plane = g.H * g.W, sw = g.SW;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  i64 c = k0 / khw, kh = (k0 % khw) / g.KW, kw = k0 % g.KW;
  for (i64 kk = k0; kk < k1; ++kk) {
    float* drow = dst + (kk - k0) * nr;
    const i64 dh = kh * g.DH, dw = kw * g.DW;
    const float* xc = x + c * plane;
    assemble_panel_rows(g, segs, nseg, dh, drow, [&](i64 s, i64 ih, __m256& lo8, __m256& hi8) {
      const PackSegment& sg = segs[s];
      const LaneRange r = ranges[s * g.KW + kw];
      if (r.lo >= r.hi) return;
      const i64 f = sg.dst & 15;                 // panel lane of the segment's lane 0
      const i64 qlo = f + r.lo, qhi = f + r.hi;  // panel lanes read from the input
      // Panel lane q reads input float (row start + (q - f) * sw); p is the address of
      // lane 0, kept as an integer (see at()).
      const std::uintptr_t p =
          reinterpret_cast<std::uintptr_t>(xc) +
          static_cast<std::uintptr_t>(sg.src + ih * g.W + sg.iw0 + dw - f * sw) * sizeof(float);
      if (sw == 1) {
        or_run16(p, qlo, qhi, iota, lo8, hi8);
      } else {
        // Float e past p feeds lane e/2 when e is even; lanes 0..7 come from floats
        // [0, 16), lanes 8..15 from [16, 32), and odd floats are never loaded.
        const __m256i even = _mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0);
        const auto m = [&](i64 o) {
          return _mm256_and_si256(even, lanes_between(2 * qlo - o, 2 * qhi - o, iota));
        };
        if (qlo < 8) lo8 = _mm256_or_ps(lo8, load_even(p, 0, m(0), m(8)));
        if (qhi > 8) hi8 = _mm256_or_ps(hi8, load_even(p, 16, m(16), m(24)));
      }
    });
    next_tap(g, c, kh, kw);
  }
}

// Stride 4 (alexnet_conv1): phase p, column j reads input column 4j + p - PW. Columns j
// whose 32-float source [4j - PW, 4j - PW + 32) lies inside the row take 8 at a time, a 8 x 4
// transpose (rows of 4 floats, paired by 128-bit loads 16 floats apart, then a 4 x 4
// transpose within each half); the rest are copied one by one.
void split_phases_s4_avx2(const PackGeom& g, const float* x, float* xs) {
  const i64 wp = phase_width(g), pw = g.PW, plane = g.H * wp;
  const i64 jv0 = std::min(wp, (pw + 3) / 4);
  const i64 jv1 = g.W - 32 + pw >= 0 ? (g.W - 32 + pw) / 4 + 1 : 0;
  auto pair = [](const float* p) {  // floats p[0..4) and p[16..20)
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), _mm_loadu_ps(p + 16), 1);
  };
  for (i64 c = 0; c < g.C; ++c) {
    for (i64 ih = 0; ih < g.H; ++ih) {
      const float* src = x + (c * g.H + ih) * g.W;
      float* d = xs + (c * 4 * g.H + ih) * wp;  // phase p's row at d + p * plane
      const auto one = [&](i64 j) {
        for (i64 p = 0; p < 4; ++p) {
          const i64 e = 4 * j + p - pw;
          d[p * plane + j] = e >= 0 && e < g.W ? src[e] : 0.0f;
        }
      };
      i64 j = 0;
      for (; j < jv0; ++j) one(j);
      for (; j < jv1 && j + 8 <= wp; j += 8) {
        const float* s = src + 4 * j - pw;
        const __m256 t0 = pair(s), t1 = pair(s + 4), t2 = pair(s + 8), t3 = pair(s + 12);
        const __m256 u0 = _mm256_unpacklo_ps(t0, t1), u1 = _mm256_unpackhi_ps(t0, t1);
        const __m256 u2 = _mm256_unpacklo_ps(t2, t3), u3 = _mm256_unpackhi_ps(t2, t3);
        _mm256_storeu_ps(d + j, _mm256_shuffle_ps(u0, u2, _MM_SHUFFLE(1, 0, 1, 0)));
        _mm256_storeu_ps(d + plane + j, _mm256_shuffle_ps(u0, u2, _MM_SHUFFLE(3, 2, 3, 2)));
        _mm256_storeu_ps(d + 2 * plane + j, _mm256_shuffle_ps(u1, u3, _MM_SHUFFLE(1, 0, 1, 0)));
        _mm256_storeu_ps(d + 3 * plane + j, _mm256_shuffle_ps(u1, u3, _MM_SHUFFLE(3, 2, 3, 2)));
      }
      for (; j < wp; ++j) one(j);
    }
  }
}

void split_phases_avx2(const PackGeom& g, const float* x, float* xs) {
  if (g.SW == 4) {
    split_phases_s4_avx2(g, x, xs);
    return;
  }
  if (g.SW != 2) {
    split_phases_scalar(g, x, xs);
    return;
  }
  // Phase p, column j reads input column 2j + p - PW. Columns j with both phases' 16-float
  // source [2j - PW, 2j - PW + 16) inside the row deinterleave 8 at a time; the rest are
  // copied one by one. The split reads the image's input once, in order, and stalled on its
  // loads (perf), the hardware prefetchers notwithstanding: each 64 bytes read ask for those
  // kSplitAhead floats (4 KiB) on.
  constexpr i64 kSplitAhead = 1024;
  const i64 wp = phase_width(g), pw = g.PW;
  // First j with 2j - PW >= 0, and one past the last j whose 16 floats end inside the row
  // (2j - PW + 16 <= W); steps of 8 start in [jv0, jv1) and end inside the phase row.
  const i64 jv0 = std::min(wp, (pw + 1) / 2);
  const i64 jv1 = g.W - 16 + pw >= 0 ? (g.W - 16 + pw) / 2 + 1 : 0;
  for (i64 c = 0; c < g.C; ++c) {
    for (i64 ih = 0; ih < g.H; ++ih) {
      const float* src = x + (c * g.H + ih) * g.W;
      float* d0 = xs + ((c * 2) * g.H + ih) * wp;
      float* d1 = d0 + g.H * wp;
      const auto one = [&](i64 j) {
        const i64 e = 2 * j - pw;
        d0[j] = e >= 0 && e < g.W ? src[e] : 0.0f;
        d1[j] = e + 1 >= 0 && e + 1 < g.W ? src[e + 1] : 0.0f;
      };
      i64 j = 0;
      for (; j < jv0; ++j) one(j);
      for (; j < jv1 && j + 8 <= wp; j += 8) {
        const float* s = src + 2 * j - pw;
        __builtin_prefetch(s + kSplitAhead, 0, 3);
        const __m256 a = _mm256_loadu_ps(s), b = _mm256_loadu_ps(s + 8);
        // a0 a2 b0 b2 | a4 a6 b4 b6 and a1 a3 b1 b3 | a5 a7 b5 b7, then lanes in order.
        const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        _mm256_storeu_ps(d0 + j, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e),
                                                                        _MM_SHUFFLE(3, 1, 2, 0))));
        _mm256_storeu_ps(d1 + j, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o),
                                                                        _MM_SHUFFLE(3, 1, 2, 0))));
      }
      for (; j < wp; ++j) one(j);
    }
  }
}

// Column phases (im2col_pack.hpp): every segment row is a run of consecutive floats of a
// phase plane, so a panel row is the stride-1 assembly above without the horizontal bounds:
// whole panels are two plain loads, partial segments masked loads, two aligned stores.
void pack_phases_avx2(const PackGeom& g, const float* xs, const PackSegment* segs, i64 nseg, i64 k0,
                      i64 k1, int nr, float* dst) {
  if (nr != 16) {
    pack_phases_avx2_portable(g, xs, segs, nseg, k0, k1, nr, dst);
    return;
  }
  if (pack_phases_by_panel(g, xs, segs, nseg, k0, k1, dst)) return;
  const i64 khw = g.KH * g.KW, wp = phase_width(g);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  i64 c = k0 / khw, kh = (k0 % khw) / g.KW, kw = k0 % g.KW;
  for (i64 kk = k0; kk < k1; ++kk) {
    float* drow = dst + (kk - k0) * 16;
    const i64 q = kw * g.DW, dh = kh * g.DH;
    // Row 0 of the tap's phase plane, moved by the tap's column, as an integer (see at()).
    const std::uintptr_t plane =
        reinterpret_cast<std::uintptr_t>(xs) +
        static_cast<std::uintptr_t>((c * g.SW + q % g.SW) * g.H * wp + q / g.SW) * sizeof(float);
    assemble_panel_rows(g, segs, nseg, dh, drow, [&](i64 s, i64 ih, __m256& lo8, __m256& hi8) {
      const PackSegment& sg = segs[s];
      const i64 f = sg.dst & 15;
      // Panel lane q reads float (q - f) of the run: p is the address of lane 0.
      const std::uintptr_t p = plane +
                               static_cast<std::uintptr_t>(ih * wp + sg.iw0 - f) * sizeof(float);
      or_run16(p, f, f + sg.len, iota, lo8, hi8);
    });
    next_tap(g, c, kh, kw);
  }
}

}  // namespace im2gemm::detail
