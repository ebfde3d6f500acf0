#include "conv/lowering.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/activation_impl.hpp"
#include "common/isa.hpp"
#include "conv/pack/im2col_pack.hpp"

// Runtime dispatch: GCC emits one body per target and an ifunc resolver that picks the best
// one for the CPU at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define IM2GEMM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define IM2GEMM_CLONES
#endif

namespace im2gemm::detail {

namespace {

using i64 = std::int64_t;

// Output columns ow with 0 <= ow*SW + off < W form [lo, hi).
struct ValidCols {
  i64 lo, hi;
};
inline ValidCols valid_cols(i64 off, i64 SW, i64 W, i64 OW) {
  const i64 lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
  const i64 last = W - 1 - off;  // ow*SW <= last
  const i64 hi = last < 0 ? 0 : std::min(OW, last / SW + 1);
  return {std::min(lo, OW), std::max(std::min(lo, OW), hi)};
}

// Per kernel column kw: valid_cols of its offset (divisions done once per call).
struct ValidColumns {
  static constexpr i64 kMaxKernelWidth = 64;
  ValidCols v[kMaxKernelWidth];
  explicit ValidColumns(const ConvGeom& g) {
    for (i64 kw = 0; kw < g.KW && kw < kMaxKernelWidth; ++kw) {
      v[kw] = valid_cols(kw * g.DW - g.PW, g.SW, g.W, g.OW);
    }
  }
};

// Per kernel row kh: the output rows oh with 0 <= oh*SH - PH + kh*DH < H form [lo, hi).
struct ValidRows {
  static constexpr i64 kMaxKernelHeight = 64;
  i64 lo[kMaxKernelHeight], hi[kMaxKernelHeight];
  explicit ValidRows(const ConvGeom& g) {
    for (i64 kh = 0; kh < g.KH && kh < kMaxKernelHeight; ++kh) {
      const i64 base = kh * g.DH - g.PH;
      const i64 l = base >= 0 ? 0 : (-base + g.SH - 1) / g.SH;
      const i64 last = g.H - 1 - base;
      const i64 h = last < 0 ? 0 : std::min(g.OH, last / g.SH + 1);
      lo[kh] = std::min(l, g.OH);
      hi[kh] = std::max(lo[kh], h);
    }
  }
};

// Gathers (col2im_gather_*): the kernel rows that reach dx row ih, stepped row by row from
// ih = 0 (a division a tap and row cost more than the row's loads). Tap kh reaches row ih
// from output row oh[kh] when rem[kh] == 0, where ih + PH - kh * DH = oh * SH + rem.
struct GatherRows {
  i64 oh[ValidRows::kMaxKernelHeight], rem[ValidRows::kMaxKernelHeight];
  i64 KH, KW, SH, OH, OW;
  // The state at dx row ih0.
  GatherRows(const ConvGeom& g, i64 ih0) : KH(g.KH), KW(g.KW), SH(g.SH), OH(g.OH), OW(g.OW) {
    for (i64 kh = 0; kh < KH; ++kh) {
      const i64 u = ih0 + g.PH - kh * g.DH;
      rem[kh] = (u % SH + SH) % SH;
      oh[kh] = (u - rem[kh]) / SH;
    }
  }
  // The next dx row's taps in the block of output rows [o0, o1) (column j: pixel o0*OW + j):
  // rows[i] the column row (kernel column 0) of channel colc's tap, at its output row.
  struct Taps {
    int n = 0;          ///< taps in the block
    bool first = true;  ///< no earlier block reaches the row: overwrite it
    bool final = true;  ///< no later block reaches it: its sum is complete
    bool none = true;   ///< no output row at all reaches it (a zero row)
  };
  Taps next(const float* colc, i64 ldcol, i64 o0, i64 o1, const float** rows) {
    Taps t;
    for (i64 kh = 0; kh < KH; ++kh) {
      if (rem[kh] == 0 && oh[kh] >= 0 && oh[kh] < OH) {
        t.none = false;
        if (oh[kh] < o0) {
          t.first = false;
        } else if (oh[kh] >= o1) {
          t.final = false;
        } else {
          rows[t.n++] = colc + kh * KW * ldcol + (oh[kh] - o0) * OW;
        }
      }
      if (++rem[kh] == SH) rem[kh] = 0, ++oh[kh];
    }
    return t;
  }
  // Whether the block writes the row: it reaches it, or nothing does and it is the first.
  static bool writes(const Taps& t, i64 o0) { return t.n > 0 || (t.none && o0 == 0); }
};

// Address arithmetic for a row base that may lie outside the plane (only valid lanes are
// dereferenced, through masked loads and stores). No ISA of its own: the AVX-512 and the AVX2
// kernels inline it.
inline const float* offset(const float* p, i64 n) {
  return reinterpret_cast<const float*>(reinterpret_cast<std::uintptr_t>(p) +
                                        static_cast<std::uintptr_t>(n) * sizeof(float));
}
inline float* offset(float* p, i64 n) {
  return reinterpret_cast<float*>(reinterpret_cast<std::uintptr_t>(p) +
                                  static_cast<std::uintptr_t>(n) * sizeof(float));
}

// Calls row(ih, taps, rows, drow, xrow) for every dx row ih of the nch channels that the block
// of output rows [o0, o1) writes (GatherRows::writes): rows[0, taps.n) its column rows, drow
// the dx row, xrow the layer's output row there (null without x). No ISA of its own: always
// inlined into the AVX-512 and AVX2 gathers, whose row lambdas are then inlined in turn.
template <class Row>
[[gnu::always_inline]] inline void for_each_gather_row(const ConvGeom& g, const float* col,
                                                       i64 ldcol, i64 nch, i64 o0, i64 o1,
                                                       float* dx, const float* x, Row&& row) {
  const i64 H = g.H, W = g.W;
  // The dx rows [lo, hi) that the block's output rows reach; from o0 = 0, every row to H
  // (the rows no output row reaches are zeroed then).
  const i64 lo = o0 == 0 ? 0 : std::clamp(o0 * g.SH - g.PH, i64{0}, H);
  const i64 hi = o0 == 0 ? H : std::clamp((o1 - 1) * g.SH - g.PH + (g.KH - 1) * g.DH + 1, lo, H);
  const GatherRows taps0(g, lo);  // copied for each channel (its set-up divides)
  for (i64 c = 0; c < nch; ++c) {
    const float* colc = col + c * g.KH * g.KW * ldcol;
    GatherRows taps = taps0;
    for (i64 ih = lo; ih < hi; ++ih) {
      const float* rows[ValidRows::kMaxKernelHeight];
      const GatherRows::Taps t = taps.next(colc, ldcol, o0, o1, rows);
      if (!GatherRows::writes(t, o0)) continue;
      row(ih, t, rows, dx + (c * H + ih) * W, x ? x + (c * H + ih) * W : nullptr);
    }
  }
}

// Calls row.operator()<NT, PLAIN>(ih, t, rows, drow, xrow) for a dx row of a
// width-specialised gather: NT its tap rows as a constant (1-4; 0: t.n at run time), PLAIN
// where the row is written once as it is (first and final, no derivative). No ISA of its own:
// always inlined into the AVX-512 and AVX2 gathers' row lambdas.
template <class Row>
[[gnu::always_inline]] inline void dispatch_gather_row(Row& row, Activation act, i64 ih,
                                                       const GatherRows::Taps& t,
                                                       const float* const* rows, float* drow,
                                                       const float* xrow) {
  if (t.first && t.final && act == Activation::identity) {
    switch (t.n) {
      case 1: return row.template operator()<1, true>(ih, t, rows, drow, xrow);
      case 2: return row.template operator()<2, true>(ih, t, rows, drow, xrow);
      case 3: return row.template operator()<3, true>(ih, t, rows, drow, xrow);
      case 4: return row.template operator()<4, true>(ih, t, rows, drow, xrow);
      default: break;
    }
  }
  row.template operator()<0, false>(ih, t, rows, drow, xrow);
}

// The column phase that kernel column kw reaches at horizontal stride S, dilation 1 and a
// padding of PM mod S (GatherPhases::ph for those constants): the width-specialised gathers'
// compile-time twin.
template <int S, int PM>
constexpr int tap_phase(int kw) {
  return ((kw - PM) % S + S) % S;
}

// The column phases of a gather at horizontal stride S (col2im_gather_phases_*), with chunks
// of V phase columns: tap kw reaches phase ph[kw] only, where phase column m takes output
// column m + off[kw]; cols[kw] phase columns lie in the dx row. Chunks [k_in, k_out) have
// every tap's V columns inside its column row: there phase p's taps are plain loads at
// offsets lists[p][0, n[p]) from a tap row's start (kernel column 0).
template <int S>
struct GatherPhases {
  i64 ph[ValidColumns::kMaxKernelWidth], off[ValidColumns::kMaxKernelWidth],
      cols[ValidColumns::kMaxKernelWidth];
  i64 lists[S][ValidColumns::kMaxKernelWidth];
  int n[S] = {};
  i64 k_in = 0, k_out;
  GatherPhases(const ConvGeom& g, i64 ldcol, i64 V, i64 nchunks) : k_out(nchunks) {
    for (i64 kw = 0; kw < g.KW; ++kw) {
      ph[kw] = ((kw * g.DW - g.PW) % S + S) % S;
      off[kw] = (ph[kw] + g.PW - kw * g.DW) / S;
      cols[kw] = (g.W - ph[kw] + S - 1) / S;
      lists[ph[kw]][n[ph[kw]]++] = kw * ldcol + off[kw];
      // V k + off >= 0, and V k + V <= min(OW - off, cols).
      k_in = std::max(k_in, off[kw] >= 0 ? i64{0} : (-off[kw] + V - 1) / V);
      const i64 lim = std::min(g.OW - off[kw], cols[kw]);
      k_out = std::min(k_out, lim < V ? i64{0} : (lim - V) / V + 1);
    }
    k_out = std::max(k_out, k_in);
  }
};

}  // namespace

IM2GEMM_CLONES
static void im2col_block_generic(const ConvGeom& g, const float* x, i64 nch, i64 q0, i64 q1,
                                 float* col, i64 ldcol) {
  const i64 oh_first = q0 / g.OW, oh_last = (q1 - 1) / g.OW;
  for (i64 c = 0; c < nch; ++c) {
    const float* xc = x + c * g.H * g.W;
    for (i64 kh = 0; kh < g.KH; ++kh) {
      for (i64 kw = 0; kw < g.KW; ++kw) {
        float* __restrict row = col + ((c * g.KH + kh) * g.KW + kw) * ldcol;
        const i64 off_w = kw * g.DW - g.PW;
        const ValidCols v = valid_cols(off_w, g.SW, g.W, g.OW);
        i64 j = 0;
        for (i64 oh = oh_first; oh <= oh_last; ++oh) {
          const i64 a = oh == oh_first ? q0 - oh * g.OW : 0;
          const i64 b = oh == oh_last ? q1 - oh * g.OW : g.OW;
          float* __restrict dst = row + j - a;  // dst[ow] for ow in [a, b)
          j += b - a;
          const i64 ih = oh * g.SH - g.PH + kh * g.DH;
          if (ih < 0 || ih >= g.H) {
            for (i64 ow = a; ow < b; ++ow) dst[ow] = 0.0f;
            continue;
          }
          const i64 lo = std::clamp(v.lo, a, b), hi = std::clamp(v.hi, lo, b);
          for (i64 ow = a; ow < lo; ++ow) dst[ow] = 0.0f;
          if (hi > lo) {
            const float* __restrict src = xc + ih * g.W + lo * g.SW + off_w;
            float* __restrict d = dst + lo;
            const i64 n = hi - lo;
            if (g.SW == 1) {
              for (i64 i = 0; i < n; ++i) d[i] = src[i];
            } else if (g.SW == 2) {
              for (i64 i = 0; i < n; ++i) d[i] = src[2 * i];
            } else {
              const i64 sw = g.SW;
              for (i64 i = 0; i < n; ++i) d[i] = src[i * sw];
            }
          }
          for (i64 ow = hi; ow < b; ++ow) dst[ow] = 0.0f;
        }
      }
    }
  }
}

IM2GEMM_CLONES
static void col2im_add_block_generic(const ConvGeom& g, const float* col, i64 ldcol, i64 nch,
                                     i64 q0, i64 q1, float* dx) {
  const i64 oh_first = q0 / g.OW, oh_last = (q1 - 1) / g.OW;
  for (i64 c = 0; c < nch; ++c) {
    float* xc = dx + c * g.H * g.W;
    for (i64 kh = 0; kh < g.KH; ++kh) {
      for (i64 kw = 0; kw < g.KW; ++kw) {
        const float* __restrict row = col + ((c * g.KH + kh) * g.KW + kw) * ldcol;
        const i64 off_w = kw * g.DW - g.PW;
        const ValidCols v = valid_cols(off_w, g.SW, g.W, g.OW);
        i64 j = 0;
        for (i64 oh = oh_first; oh <= oh_last; ++oh) {
          const i64 a = oh == oh_first ? q0 - oh * g.OW : 0;
          const i64 b = oh == oh_last ? q1 - oh * g.OW : g.OW;
          const float* __restrict srcrow = row + j - a;  // srcrow[ow] for ow in [a, b)
          j += b - a;
          const i64 ih = oh * g.SH - g.PH + kh * g.DH;
          if (ih < 0 || ih >= g.H) continue;
          const i64 lo = std::clamp(v.lo, a, b), hi = std::clamp(v.hi, lo, b);
          if (hi <= lo) continue;
          float* __restrict d = xc + ih * g.W + lo * g.SW + off_w;
          const float* __restrict s = srcrow + lo;
          const i64 n = hi - lo;
          if (g.SW == 1) {
            for (i64 i = 0; i < n; ++i) d[i] += s[i];
          } else if (g.SW == 2) {
            for (i64 i = 0; i < n; ++i) d[2 * i] += s[i];
          } else {
            const i64 sw = g.SW;
            for (i64 i = 0; i < n; ++i) d[i * sw] += s[i];
          }
        }
      }
    }
  }
}

// ---- AVX-512: masked vector kernels for row segments of stride 1, 2 and 4 ------------------
// A 16-column chunk of an output row reads its source columns ow*SW from SW vectors of 16
// input positions (masked loads: only in-image positions are touched) and compacts them with
// permutes; col2im does the reverse with masked read-modify-writes.
#if defined(__GNUC__) && defined(__x86_64__)
#define IM2GEMM_HAVE_AVX512_LOWERING 1
#define IM2GEMM_AVX512 __attribute__((target("avx512f")))

namespace {

constexpr i64 kMaxMaskTable = 256;    // KW * ceil(OW / 16) chunk masks precomputed per call
constexpr i64 kMaxGatherTaps = 1024;  // KW * ceil(W / 16) of the gathering col2im

IM2GEMM_AVX512 inline __mmask16 lanes(i64 n) {  // the first n lanes, n in [0, 16]
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// Lanes [from, to) of a 16-lane chunk, clamped to [0, 16].
IM2GEMM_AVX512 inline __mmask16 lane_range(i64 from, i64 to) {
  from = from < 0 ? 0 : from;
  to = to > 16 ? 16 : to;
  if (to <= from) return 0;
  return static_cast<__mmask16>(lanes(to) & ~lanes(from));
}

// The gathers' dx rows: where they are many (more than kDxPrefetchBytes in the call: dx
// planes of small layers stay in cache), their stores missed in cache (perf: the loop's top
// cost after them), so each 64-byte chunk stored asks for the same chunk kDxAhead rows on,
// with the intent to write (PREFETCHW, which every AVX-512 CPU has: the gathers are compiled
// for it). Inside the chunk loop: gcc deletes a loop of prefetches alone as one without side
// effects.
#define IM2GEMM_AVX512_W __attribute__((target("avx512f,prfchw")))
constexpr i64 kDxAhead = 4;
constexpr i64 kDxPrefetchBytes = i64{256} << 10;
// Rows ahead to prefetch in a gather of nch dx planes: kDxAhead, or H (never) when few.
inline i64 dx_rows_ahead(const ConvGeom& g, i64 nch) {
  return nch * g.H * g.W * i64{sizeof(float)} > kDxPrefetchBytes ? kDxAhead : g.H;
}
IM2GEMM_AVX512_W inline void prefetch_dx_ahead(const float* d, i64 ih, i64 ahead, i64 H, i64 W) {
  if (ih + ahead < H) __builtin_prefetch(d + ahead * W, 1, 3);
}

IM2GEMM_AVX512 inline void zero_n(float* d, i64 n) {
  const __m512 z = _mm512_setzero_ps();
  i64 i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, z);
  if (i < n) _mm512_mask_storeu_ps(d + i, lanes(n - i), z);
}

// Masks of the chunk of output columns [c0, c0 + 16): `out` are the columns below OW; src[v]
// marks, in source vector v (positions 16v .. 16v+15 from column c0's position), the
// positions (ow - c0) * SW of the valid columns ow in [lo, hi).
struct ChunkMasks {
  __mmask16 out;
  __mmask16 src[4];
};
IM2GEMM_AVX512 inline ChunkMasks chunk_masks(i64 c0, i64 OW, i64 lo, i64 hi, i64 sw) {
  ChunkMasks m;
  m.out = lane_range(0, OW - c0);
  const unsigned valid = lane_range(lo - c0, hi - c0) & m.out;
  for (i64 v = 0; v < 4; ++v) m.src[v] = 0;
  if (sw == 1) {
    m.src[0] = static_cast<__mmask16>(valid);
    return m;
  }
  // The valid lanes are one run [a, b); lane l reads position l*sw, i.e. bit l*sw - 16v of
  // source vector v. Those positions are the multiples of sw (16 is a multiple of sw = 2 or
  // 4) inside [a*sw, (b-1)*sw], so each vector's mask is a fixed pattern cut to that range
  // (computed without a per-lane loop: partial output rows build these masks per chunk).
  if (valid == 0) return m;
  const i64 a = __builtin_ctz(valid), b = 16 - __builtin_clz(valid << 16);
  const unsigned pattern = sw == 2 ? 0x5555u : 0x1111u;
  for (i64 v = 0; v < sw; ++v) {
    m.src[v] =
        static_cast<__mmask16>(pattern & lane_range(a * sw - 16 * v, (b - 1) * sw + 1 - 16 * v));
  }
  return m;
}

// The 16 values of a chunk: p[l * SW] for the valid lanes, 0 elsewhere (p: column c0's source).
template <int SW>
IM2GEMM_AVX512 inline __m512 load_chunk_sw(const float* p, const ChunkMasks& m) {
  if constexpr (SW == 1) {
    return _mm512_maskz_loadu_ps(m.src[0], p);
  } else if constexpr (SW == 2) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m.src[0], p), even,
                                  _mm512_maskz_loadu_ps(m.src[1], offset(p, 16)));
  } else {
    const __m512i fourth =
        _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    const __m512 ab = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m.src[0], p), fourth,
                                             _mm512_maskz_loadu_ps(m.src[1], offset(p, 16)));
    const __m512 cd = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m.src[2], offset(p, 32)), fourth,
                                             _mm512_maskz_loadu_ps(m.src[3], offset(p, 48)));
    return _mm512_maskz_shuffle_f32x4(0xFFFF, ab, cd, 0x44);  // ab lanes 0-7, cd lanes 0-7
  }
}
IM2GEMM_AVX512 inline __m512 load_chunk(const float* p, const ChunkMasks& m, i64 sw) {
  return sw == 1   ? load_chunk_sw<1>(p, m)
         : sw == 2 ? load_chunk_sw<2>(p, m)
                   : load_chunk_sw<4>(p, m);
}

// Rows of one chunk each (OW <= 16) with the masks in registers: dst advances by OW, src by
// src_step floats.
// With OW <= 8 (stride 1), two rows share one store: the second row's chunk is moved up by
// OW lanes (one permute), which halves the stores and widens them (lenet_conv2, OW = 8:
// every store is then a whole aligned 64-byte line).
template <int SW>
IM2GEMM_AVX512 inline void im2col_narrow_rows(float* dst, const float* src, i64 rows, i64 OW,
                                              i64 src_step, ChunkMasks m) {
  i64 r = 0;
  if (SW == 1 && OW <= 8) {
    const __m512i up =
        _mm512_sub_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int>(OW)));
    const auto pair_out = static_cast<__mmask16>(m.out | (m.out << OW));
    const auto high = static_cast<__mmask16>(lanes(2 * OW) & ~lanes(OW));
    for (; r + 2 <= rows; r += 2, dst += 2 * OW, src = offset(src, 2 * src_step)) {
      const __m512 a = load_chunk_sw<1>(src, m);
      const __m512 b = load_chunk_sw<1>(offset(src, src_step), m);
      _mm512_mask_storeu_ps(dst, pair_out, _mm512_mask_permutexvar_ps(a, high, up, b));
    }
  }
  for (; r < rows; ++r, dst += OW, src = offset(src, src_step)) {
    _mm512_mask_storeu_ps(dst, m.out, load_chunk_sw<SW>(src, m));
  }
}

// The adjoint: p[l * SW] += s[l] for the valid lanes.
IM2GEMM_AVX512 inline void add_chunk(float* p, __m512 s, const ChunkMasks& m, i64 sw) {
  if (sw == 1) {
    if (m.src[0]) {
      _mm512_mask_storeu_ps(p, m.src[0], _mm512_add_ps(_mm512_maskz_loadu_ps(m.src[0], p), s));
    }
    return;
  }
  for (i64 v = 0; v < sw; ++v) {
    if (!m.src[v]) continue;
    // Position q of vector v takes s[(16v + q) / sw].
    const int b = static_cast<int>(16 * v / sw);
    const __m512i spread =
        sw == 2 ? _mm512_setr_epi32(b, b, b + 1, b + 1, b + 2, b + 2, b + 3, b + 3, b + 4, b + 4,
                                    b + 5, b + 5, b + 6, b + 6, b + 7, b + 7)
                : _mm512_setr_epi32(b, b, b, b, b + 1, b + 1, b + 1, b + 1, b + 2, b + 2, b + 2,
                                    b + 2, b + 3, b + 3, b + 3, b + 3);
    float* q = offset(p, 16 * v);
    const __m512 e = _mm512_maskz_permutexvar_ps(0xFFFF, spread, s);
    _mm512_mask_storeu_ps(q, m.src[v], _mm512_add_ps(_mm512_maskz_loadu_ps(m.src[v], q), e));
  }
}

// d[i] = s[i * SW] for i < n; reads s[0 .. (n-1)*SW] only.
IM2GEMM_AVX512 inline void gather_n(float* d, const float* s, i64 n, i64 sw) {
  for (i64 c0 = 0; c0 < n; c0 += 16) {
    const ChunkMasks m = chunk_masks(c0, n, 0, n, sw);
    _mm512_mask_storeu_ps(d + c0, m.out, load_chunk(offset(s, c0 * sw), m, sw));
  }
}

// d[i * SW] += s[i] for i < n; touches d[0 .. (n-1)*SW] only.
IM2GEMM_AVX512 inline void scatter_add_n(float* d, const float* s, i64 n, i64 sw) {
  for (i64 c0 = 0; c0 < n; c0 += 16) {
    const ChunkMasks m = chunk_masks(c0, n, 0, n, sw);
    add_chunk(offset(d, c0 * sw), _mm512_maskz_loadu_ps(m.out, s + c0), m, sw);
  }
}

// Full output rows, masks per chunk given (nchunks <= kMaxRowChunks) or computed (wider rows).
IM2GEMM_AVX512 inline void im2col_row(float* dst, const float* src_row, i64 OW, i64 lo, i64 hi,
                                      i64 sw, i64 nchunks, const ChunkMasks* cm) {
  for (i64 k = 0; k < nchunks; ++k) {
    const ChunkMasks m = cm ? cm[k] : chunk_masks(16 * k, OW, lo, hi, sw);
    _mm512_mask_storeu_ps(dst + 16 * k, m.out, load_chunk(offset(src_row, 16 * k * sw), m, sw));
  }
}

IM2GEMM_AVX512 inline void col2im_row(float* dst_row, const float* src, i64 OW, i64 lo, i64 hi,
                                      i64 sw, i64 nchunks, const ChunkMasks* cm) {
  for (i64 k = 0; k < nchunks; ++k) {
    const ChunkMasks m = cm ? cm[k] : chunk_masks(16 * k, OW, lo, hi, sw);
    add_chunk(offset(dst_row, 16 * k * sw), _mm512_maskz_loadu_ps(m.out, src + 16 * k), m, sw);
  }
}

// Chunk masks of every kernel column, computed once per call when the table is small;
// column(kw) is null otherwise (the row loops then compute each chunk's masks).
struct MaskTable {
  ChunkMasks table[kMaxMaskTable];
  i64 nchunks;
  bool tabled;
  IM2GEMM_AVX512 MaskTable(const ConvGeom& g, const ValidColumns& cols_of)
      : nchunks((g.OW + 15) / 16), tabled(g.KW * nchunks <= kMaxMaskTable) {
    if (!tabled) return;
    for (i64 kw = 0; kw < g.KW; ++kw) {
      for (i64 k = 0; k < nchunks; ++k) {
        table[kw * nchunks + k] =
            chunk_masks(16 * k, g.OW, cols_of.v[kw].lo, cols_of.v[kw].hi, g.SW);
      }
    }
  }
  const ChunkMasks* column(i64 kw) const { return tabled ? table + kw * nchunks : nullptr; }
};

IM2GEMM_AVX512 void im2col_block_avx512(const ConvGeom& g, const float* x, i64 nch, i64 q0, i64 q1,
                                        float* col, i64 ldcol) {
  // Geometry in locals: the vector stores below may alias anything, g's fields included.
  const i64 H = g.H, W = g.W, OW = g.OW, KH = g.KH, KW = g.KW, SH = g.SH, SW = g.SW;
  const i64 PH = g.PH, PW = g.PW, DH = g.DH, DW = g.DW;
  const i64 oh_first = q0 / OW, oh_last = (q1 - 1) / OW;
  // Rows [full_a, full_b) lie wholly inside [q0, q1); the others are cut by the block.
  const i64 full_a = q0 % OW == 0 ? oh_first : oh_first + 1;
  const i64 full_b = q1 % OW == 0 ? oh_last + 1 : oh_last;
  const i64 nchunks = (OW + 15) / 16;
  const ValidRows rows_of(g);
  const ValidColumns cols_of(g);
  // Strided, undilated rows: kernel columns kw >= SW are shifted copies of kw - SW.
  const bool shift_rows = SW >= 2 && DW == 1 && OW >= 2;
  const MaskTable masks(g, cols_of);
  for (i64 c = 0; c < nch; ++c) {
    const float* xc = x + c * H * W;
    for (i64 kh = 0; kh < KH; ++kh) {
      for (i64 kw = 0; kw < KW; ++kw) {
        const i64 off_w = kw * DW - PW;
        const ValidCols v = cols_of.v[kw];
        const ChunkMasks* cm = masks.column(kw);
        float* row = col + ((c * KH + kh) * KW + kw) * ldcol;
        auto segment = [&](i64 oh, i64 a, i64 b, float* dst) IM2GEMM_AVX512 {
          const i64 ih = oh * SH - PH + kh * DH;
          if (ih < 0 || ih >= H) {
            zero_n(dst + a, b - a);
            return;
          }
          const i64 lo = v.lo < a ? a : (v.lo > b ? b : v.lo);
          const i64 hi = v.hi < lo ? lo : (v.hi > b ? b : v.hi);
          if (lo > a) zero_n(dst + a, lo - a);
          if (hi > lo) gather_n(dst + lo, xc + ih * W + lo * SW + off_w, hi - lo, SW);
          if (b > hi) zero_n(dst + hi, b - hi);
        };
        if (full_a > full_b || oh_first == oh_last) {  // one (partial) row
          segment(oh_first, q0 - oh_first * OW, q1 - oh_first * OW, row - (q0 - oh_first * OW));
          continue;
        }
        if (full_a > oh_first) {
          const i64 a = q0 - oh_first * OW;
          segment(oh_first, a, OW, row - a);
        }
        float* dst = row + (full_a * OW - q0);
        if (shift_rows && kw >= SW) {
          // Row kw is row kw - SW one output column later: input position ow*SW + kw - PW
          // = (ow+1)*SW + (kw-SW) - PW. One contiguous copy, then each output row's last
          // column from x (or 0 in the padding).
          const float* prev = dst - SW * ldcol;
          const i64 len = (full_b - full_a) * OW;
          gather_n(dst, prev + 1, len - 1, 1);
          const i64 pos = (OW - 1) * SW + off_w;
          for (i64 oh = full_a; oh < full_b; ++oh) {
            const i64 ih = oh * SH - PH + kh * DH;
            dst[(oh - full_a) * OW + OW - 1] =
                ih >= 0 && ih < H && pos >= 0 && pos < W ? xc[ih * W + pos] : 0.0f;
          }
          dst += len;
          if (full_b <= oh_last) segment(oh_last, 0, q1 - oh_last * OW, dst);
          continue;
        }
        // Full rows: zeros where the kernel row falls in the padding, masked chunks elsewhere.
        const i64 va = std::max(full_a, std::min(full_b, rows_of.lo[kh]));
        const i64 vb = std::max(va, std::min(full_b, rows_of.hi[kh]));
        zero_n(dst, (va - full_a) * OW);
        dst += (va - full_a) * OW;
        const float* src = offset(xc, (va * SH - PH + kh * DH) * W + off_w);
        if (nchunks == 1) {
          const ChunkMasks m = cm ? cm[0] : chunk_masks(0, OW, v.lo, v.hi, SW);
          if (SW == 1) im2col_narrow_rows<1>(dst, src, vb - va, OW, SH * W, m);
          if (SW == 2) im2col_narrow_rows<2>(dst, src, vb - va, OW, SH * W, m);
          if (SW == 4) im2col_narrow_rows<4>(dst, src, vb - va, OW, SH * W, m);
          dst += (vb - va) * OW;
        } else {
          for (i64 oh = va; oh < vb; ++oh, dst += OW, src = offset(src, SH * W)) {
            im2col_row(dst, src, OW, v.lo, v.hi, SW, nchunks, cm);
          }
        }
        zero_n(dst, (full_b - vb) * OW);
        dst += (full_b - vb) * OW;
        if (full_b <= oh_last) segment(oh_last, 0, q1 - oh_last * OW, dst);
      }
    }
  }
}

IM2GEMM_AVX512 void col2im_add_block_avx512(const ConvGeom& g, float* col, i64 ldcol, i64 nch,
                                            i64 q0, i64 q1, float* dx) {
  const i64 H = g.H, W = g.W, OW = g.OW, KH = g.KH, KW = g.KW, SH = g.SH, SW = g.SW;
  const i64 PH = g.PH, PW = g.PW, DH = g.DH, DW = g.DW;
  const i64 oh_first = q0 / OW, oh_last = (q1 - 1) / OW;
  const i64 full_a = q0 % OW == 0 ? oh_first : oh_first + 1;
  const i64 full_b = q1 % OW == 0 ? oh_last + 1 : oh_last;
  const i64 nchunks = (OW + 15) / 16;
  const ValidRows rows_of(g);
  const ValidColumns cols_of(g);
  const MaskTable masks(g, cols_of);
  // Strided, undilated: row kw >= SW lands where row kw - SW lands one output column later,
  // so it is first added into that row (contiguous adds, highest kw first); only the last
  // column of each row segment, which has no such partner in the block, is added into dx
  // directly. Then only kernel columns kw < SW are scattered.
  const bool fold = SW >= 2 && DW == 1 && KW > SW;
  const i64 kw_scatter = fold ? SW : KW;
  for (i64 c = 0; c < nch; ++c) {
    float* xc = dx + c * H * W;
    for (i64 kh = 0; kh < KH; ++kh) {
      if (fold) {
        float* rows = col + (c * KH + kh) * KW * ldcol;
        for (i64 kw = KW - 1; kw >= SW; --kw) {
          float* src = rows + kw * ldcol;
          float* dst = rows + (kw - SW) * ldcol;
          for (i64 oh = oh_first; oh <= oh_last; ++oh) {
            const i64 a = oh == oh_first ? q0 - oh * OW : 0;
            const i64 b = oh == oh_last ? q1 - oh * OW : OW;
            const i64 j = oh * OW + a - q0;  // the segment's first column in the block
            if (b - a > 1) scatter_add_n(dst + j + 1, src + j, b - a - 1, 1);
            const i64 ih = oh * SH - PH + kh * DH;
            const i64 iw = (b - 1) * SW + kw - PW;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) xc[ih * W + iw] += src[j + b - a - 1];
          }
        }
      }
      for (i64 kw = 0; kw < kw_scatter; ++kw) {
        const i64 off_w = kw * DW - PW;
        const ValidCols v = cols_of.v[kw];
        const ChunkMasks* cm = masks.column(kw);
        const float* row = col + ((c * KH + kh) * KW + kw) * ldcol;
        auto segment = [&](i64 oh, i64 a, i64 b, const float* src) IM2GEMM_AVX512 {
          const i64 ih = oh * SH - PH + kh * DH;
          if (ih < 0 || ih >= H) return;
          const i64 lo = v.lo < a ? a : (v.lo > b ? b : v.lo);
          const i64 hi = v.hi < lo ? lo : (v.hi > b ? b : v.hi);
          if (hi > lo) scatter_add_n(xc + ih * W + lo * SW + off_w, src + lo, hi - lo, SW);
        };
        if (full_a > full_b || oh_first == oh_last) {
          segment(oh_first, q0 - oh_first * OW, q1 - oh_first * OW, row - (q0 - oh_first * OW));
          continue;
        }
        if (full_a > oh_first) {
          const i64 a = q0 - oh_first * OW;
          segment(oh_first, a, OW, row - a);
        }
        const float* src = row + (full_a * OW - q0);
        const i64 va = std::max(full_a, std::min(full_b, rows_of.lo[kh]));
        const i64 vb = std::max(va, std::min(full_b, rows_of.hi[kh]));
        float* d = offset(xc, (va * SH - PH + kh * DH) * W + off_w);
        src += (va - full_a) * OW;
        for (i64 oh = va; oh < vb; ++oh, src += OW, d = offset(d, SH * W)) {
          col2im_row(d, src, OW, v.lo, v.hi, SW, nchunks, cm);
        }
        src += (full_b - vb) * OW;
        if (full_b <= oh_last) segment(oh_last, 0, q1 - oh_last * OW, src);
      }
    }
  }
}

// dx chunk acc (the 16 floats of xrow's chunk at the same place, lanes `out`) times the
// input activation's derivative, read from the layer's output y = act(x-before).
IM2GEMM_AVX512 inline __m512 times_act_derivative(__m512 acc, Activation act, const float* yrow,
                                                  __mmask16 out) {
  if (act == Activation::identity) return acc;
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 y = _mm512_maskz_loadu_ps(out, yrow);
  switch (act) {
    case Activation::relu:
      return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), acc);
    case Activation::sigmoid: return _mm512_mul_ps(acc, _mm512_mul_ps(y, _mm512_sub_ps(one, y)));
    case Activation::tanh: return _mm512_mul_ps(acc, _mm512_sub_ps(one, _mm512_mul_ps(y, y)));
    default: return acc;
  }
}

// The phase gathers' two-source permutes that interleave vectors a and b lane by lane: lo
// takes lanes 0-7 of each, hi lanes 8-15.
struct Interleave {
  __m512i lo, hi;
  IM2GEMM_AVX512 Interleave() {
    alignas(64) std::int32_t idx[2][16];
    for (int l = 0; l < 16; ++l) {
      idx[0][l] = (l / 2) + (l % 2) * 16;
      idx[1][l] = 8 + (l / 2) + (l % 2) * 16;
    }
    lo = _mm512_load_si512(idx[0]);
    hi = _mm512_load_si512(idx[1]);
  }
};

// A gathered dx row (W floats; xrow: the layer's output for the activation's derivative, or
// null): store(j, v) writes v to columns [j, j + 16) that lie in the row, added to what is
// there unless first, times the derivative where final.
struct DxRow {
  float* drow;
  const float* xrow;
  i64 W;
  bool first, final;
  Activation act;
  IM2GEMM_AVX512 void store(i64 j, __m512 v) const {
    const __mmask16 m = lane_range(0, W - j);
    if (m == 0) return;
    if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, drow + j));
    if (final) v = times_act_derivative(v, act, xrow ? xrow + j : nullptr, m);
    _mm512_mask_storeu_ps(drow + j, m, v);
  }
};

// The S phase sums of a chunk (16 columns of each phase) interleaved into its 16 S dx
// columns, out[q] = columns [16 q, 16 q + 16).
template <int S>
IM2GEMM_AVX512 inline void interleave_phases(const __m512 (&acc)[S], const Interleave& il,
                                             __m512 (&out)[S]) {
  if constexpr (S == 2) {
    out[0] = _mm512_permutex2var_ps(acc[0], il.lo, acc[1]);
    out[1] = _mm512_permutex2var_ps(acc[0], il.hi, acc[1]);
  } else {
    // Phases 0 and 2 lane by lane, 1 and 3 likewise; then the two results lane by lane
    // again: a0 = (p0, p2) and b0 = (p1, p3) give p0 p1 p2 p3 of each column.
    const __m512 a0 = _mm512_permutex2var_ps(acc[0], il.lo, acc[2]);
    const __m512 a1 = _mm512_permutex2var_ps(acc[0], il.hi, acc[2]);
    const __m512 b0 = _mm512_permutex2var_ps(acc[1], il.lo, acc[3]);
    const __m512 b1 = _mm512_permutex2var_ps(acc[1], il.hi, acc[3]);
    out[0] = _mm512_permutex2var_ps(a0, il.lo, b0);
    out[1] = _mm512_permutex2var_ps(a0, il.hi, b0);
    out[2] = _mm512_permutex2var_ps(a1, il.lo, b1);
    out[3] = _mm512_permutex2var_ps(a1, il.hi, b1);
  }
}

// Interleaves the S phase sums of a chunk (16 columns of each) into the 16 S dx columns from
// j0 and stores them (DxRow::store), each 64 bytes asking for their place `ahead` rows on.
template <int S>
IM2GEMM_AVX512_W inline void store_phases(const __m512 (&acc)[S], const Interleave& il,
                                          const DxRow& row, i64 j0, i64 ih, i64 ahead, i64 H) {
  __m512 out[S];
  interleave_phases<S>(acc, il, out);
  for (int q = 0; q < S; ++q) {
    row.store(j0 + 16 * q, out[q]);
    prefetch_dx_ahead(row.drow + j0 + 16 * q, ih, ahead, H, row.W);
  }
}

// col2im_gather_rows at stride 1: every dx element is the sum of its KH*KW taps (those of the
// block's output rows), gathered in a register and stored once (added to the row where an
// earlier block reached it), times the input activation's derivative where it is complete.
// KWT: the kernel width as a constant (0: g.KW at run time). With it the tap loop unrolls and
// its masks stay in mask registers (the run-time loop reloaded each tap's mask from the stack:
// 9 instructions a tap), and each kernel column sums into its own register.
template <int KWT>
IM2GEMM_AVX512_W void col2im_gather_s1_avx512(const ConvGeom& g, const float* col, i64 ldcol,
                                              i64 nch, i64 o0, i64 o1, float* dx, Activation act,
                                              const float* x) {
  const i64 H = g.H, W = g.W, OW = g.OW, PW = g.PW, DW = g.DW;
  const i64 KW = KWT > 0 ? KWT : g.KW;
  const i64 nchunks = (W + 15) / 16;
  __mmask16 tap[kMaxGatherTaps];  // [chunk][kw]: lanes whose source column lies in [0, OW)
  for (i64 kw = 0; kw < KW; ++kw) {
    for (i64 k = 0; k < nchunks; ++k) {
      const i64 ow0 = 16 * k + PW - kw * DW;
      tap[k * KW + kw] =
          static_cast<__mmask16>(lane_range(-ow0, OW - ow0) & lane_range(0, W - 16 * k));
    }
  }
  constexpr int kAcc = KWT > 0 ? KWT : 1;
  const i64 ahead = dx_rows_ahead(g, nch);
  for_each_gather_row(
      g, col, ldcol, nch, o0, o1, dx, x,
      [&](i64 ih, const GatherRows::Taps& t, const float* const* rows, float* drow,
          const float* xrow) IM2GEMM_AVX512_W {
        for (i64 k = 0; k < nchunks; ++k) {
          const __mmask16 out = lane_range(0, W - 16 * k);
          const __mmask16* tk = tap + k * KW;
          __m512 acc[kAcc];
          for (int a = 0; a < kAcc; ++a) acc[a] = _mm512_setzero_ps();
          if (!t.first) acc[0] = _mm512_maskz_loadu_ps(out, drow + 16 * k);
          for (int r = 0; r < t.n; ++r) {
            const float* base = offset(rows[r], 16 * k + PW);
            for (i64 kw = 0; kw < KW; ++kw) {
              const int a = KWT > 0 ? static_cast<int>(kw) : 0;
              acc[a] =
                  _mm512_add_ps(acc[a],
                                _mm512_maskz_loadu_ps(tk[kw], offset(base, kw * (ldcol - DW))));
            }
          }
          for (int a = 1; a < kAcc; ++a) acc[0] = _mm512_add_ps(acc[0], acc[a]);
          if (t.final)
            acc[0] = times_act_derivative(acc[0], act, xrow ? xrow + 16 * k : nullptr, out);
          prefetch_dx_ahead(drow + 16 * k, ih, ahead, H, W);
          _mm512_mask_storeu_ps(drow + 16 * k, out, acc[0]);
        }
      });
}

// col2im_gather_rows at horizontal stride S = 2 or 4 (any vertical stride): the same, a dx
// row being the interleave of its S column phases (iw = S m + ph). Tap kw reaches phase
// ph = (kw * DW - PW) mod S only, where column m takes output column m + off with
// off = (ph + PW - kw * DW) / S: contiguous loads as at stride 1 (plain ones in the chunks
// where every tap's 16 columns lie inside its column row, from one list of tap offsets a
// phase; masked ones at the row's ends), then log2(S) rounds of permutes interleave the
// phases of a 16 S-column chunk (one expanding load a tap and 16 columns measured 2.5x slower
// on AMD Zen 4). Rows: GatherRows.
template <int S>
IM2GEMM_AVX512_W void col2im_gather_phases_avx512(const ConvGeom& g, const float* col, i64 ldcol,
                                                  i64 nch, i64 o0, i64 o1, float* dx,
                                                  Activation act, const float* x) {
  static_assert(S == 2 || S == 4);
  const i64 H = g.H, W = g.W, OW = g.OW, KW = g.KW;
  const i64 nchunks = (W + 16 * S - 1) / (16 * S);  // 16 S dx columns: 16 of each phase
  const GatherPhases<S> phases(g, ldcol, 16, nchunks);
  const i64 *ph = phases.ph, *off = phases.off;
  __mmask16 tap[kMaxGatherTaps];  // [kw][chunk]: lanes m with S m + ph < W, 0 <= m + off < OW
  for (i64 kw = 0; kw < KW; ++kw) {
    for (i64 k = 0; k < nchunks; ++k) {
      const i64 m0 = 16 * k;
      tap[kw * nchunks + k] = static_cast<__mmask16>(lane_range(-m0 - off[kw], OW - m0 - off[kw]) &
                                                     lane_range(0, phases.cols[kw] - m0));
    }
  }
  const Interleave il;
  const i64 ahead = dx_rows_ahead(g, nch);
  for_each_gather_row(
      g, col, ldcol, nch, o0, o1, dx, x,
      [&](i64 ih, const GatherRows::Taps& t, const float* const* rows, float* drow,
          const float* xrow) IM2GEMM_AVX512_W {
        const DxRow dxrow{drow, xrow, W, t.first, t.final, act};
        for (i64 k = 0; k < nchunks; ++k) {
          __m512 acc[S];
          for (int p = 0; p < S; ++p) acc[p] = _mm512_setzero_ps();
          if (k >= phases.k_in && k < phases.k_out) {
            for (int r = 0; r < t.n; ++r) {
              const float* row = rows[r] + 16 * k;
              for (int p = 0; p < S; ++p) {
                for (int e = 0; e < phases.n[p]; ++e) {
                  acc[p] = _mm512_add_ps(acc[p], _mm512_loadu_ps(row + phases.lists[p][e]));
                }
              }
            }
          } else {
            for (int r = 0; r < t.n; ++r) {
              for (i64 kw = 0; kw < KW; ++kw) {
                const __m512 v =
                    _mm512_maskz_loadu_ps(tap[kw * nchunks + k],
                                          offset(rows[r], kw * ldcol + 16 * k + off[kw]));
                for (int p = 0; p < S; ++p) {  // acc[ph[kw]] += v, the accumulators in registers
                  if (p == ph[kw]) acc[p] = _mm512_add_ps(acc[p], v);
                }
              }
            }
          }
          store_phases<S>(acc, il, dxrow, 16 * S * k, ih, ahead, H);
        }
      });
}

// col2im_gather_phases_avx512<S> for dilation 1 with the kernel width and the padding's phase
// (PM = PW % S) as constants: tap kw reaches phase (kw - PM) mod S, so the tap loop unrolls,
// each tap sums into its own register, and every chunk takes one path of masked loads (all
// lanes set inside the row). The generic loop, short loops over run-time tap lists with its
// accumulators spilled between them, ran as slowly with its column block in L2 as in L3: its
// instructions, not the column block, held it back. Instances: stride 2 and widths 3, 5, 7;
// stride 4 and width 11.
template <int S, int KWT, int PM>
IM2GEMM_AVX512_W void col2im_gather_phases_avx512_k(const ConvGeom& g, const float* col, i64 ldcol,
                                                    i64 nch, i64 o0, i64 o1, float* dx,
                                                    Activation act, const float* x) {
  static_assert(S == 2 || S == 4);
  constexpr int KW = KWT;
  const i64 H = g.H, W = g.W, OW = g.OW;
  const i64 nchunks = (W + 16 * S - 1) / (16 * S);  // 16 S dx columns: 16 of each phase
  // Tap kw: phase column m takes output column m + off[kw] (an exact division: the phase
  // is kw - PW's remainder).
  i64 off[KW];
  for (int kw = 0; kw < KW; ++kw) off[kw] = (tap_phase<S, PM>(kw) + g.PW - kw) / S;
  // [chunk][kw]: lanes m with 0 <= m + off < OW (lanes past the dx row are summed, never
  // stored).
  __mmask16 tap[kMaxGatherTaps];
  for (i64 k = 0; k < nchunks; ++k) {
    for (int kw = 0; kw < KW; ++kw) {
      tap[k * KW + kw] = lane_range(-16 * k - off[kw], OW - 16 * k - off[kw]);
    }
  }
  // The row's last chunk: the dx lanes of its S stores that lie in the row (the others
  // store all 16 S columns).
  const i64 last = nchunks - 1;
  __mmask16 out_last[S];
  for (int q = 0; q < S; ++q) out_last[q] = lane_range(0, W - 16 * S * last - 16 * q);
  const Interleave il;
  const i64 ahead = dx_rows_ahead(g, nch);
  // One dx row from NT tap rows (0: t.n at run time). PLAIN: the row is written once, as is
  // (first and final, no derivative): S stores a chunk, masked on the last only.
  auto gather_row = [&]<int NT, bool PLAIN>(i64 ih, const GatherRows::Taps& t,
                                            const float* const* rows, float* drow,
                                            const float* xrow) IM2GEMM_AVX512_W {
    const int nt = NT > 0 ? NT : t.n;
    const DxRow dxrow{drow, xrow, W, t.first, t.final, act};
    const bool fetch = ih + ahead < H;
    for (i64 k = 0; k < nchunks; ++k) {
      const __mmask16* tk = tap + k * KW;
      __m512 acc[KW];
#pragma GCC unroll 12
      for (int kw = 0; kw < KW; ++kw) acc[kw] = _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int r = 0; r < nt; ++r) {
        const float* base = rows[r] + 16 * k;
#pragma GCC unroll 12
        for (int kw = 0; kw < KW; ++kw) {
          acc[kw] =
              _mm512_add_ps(acc[kw],
                            _mm512_maskz_loadu_ps(tk[kw], offset(base, kw * ldcol + off[kw])));
        }
      }
      __m512 phase[S];
      for (int p = 0; p < S; ++p) phase[p] = _mm512_setzero_ps();
#pragma GCC unroll 12
      for (int kw = 0; kw < KW; ++kw) {
        phase[tap_phase<S, PM>(kw)] = _mm512_add_ps(phase[tap_phase<S, PM>(kw)], acc[kw]);
      }
      if constexpr (PLAIN) {
        float* d = drow + 16 * S * k;
        __m512 out[S];
        interleave_phases<S>(phase, il, out);
        for (int q = 0; q < S; ++q) {
          if (k < last) {
            _mm512_storeu_ps(d + 16 * q, out[q]);
          } else {
            _mm512_mask_storeu_ps(d + 16 * q, out_last[q], out[q]);
          }
          if (fetch) __builtin_prefetch(d + 16 * q + ahead * W, 1, 3);
        }
      } else {
        store_phases<S>(phase, il, dxrow, 16 * S * k, ih, ahead, H);
      }
    }
  };
  for_each_gather_row(g, col, ldcol, nch, o0, o1, dx, x,
                      [&](i64 ih, const GatherRows::Taps& t, const float* const* rows, float* drow,
                          const float* xrow) IM2GEMM_AVX512_W {
                        dispatch_gather_row(gather_row, act, ih, t, rows, drow, xrow);
                      });
}

// ---- AVX-512: im2col of planes of at most 64 floats ---------------------------------------
// The whole input plane of a channel fits in four registers, so every 16-pixel chunk of a
// column row is one two-source permute (two and a blend for planes of 33-64 floats) of those
// registers, zeroed where the tap falls in the padding. The permute indices and the in-image
// masks depend only on (kh, kw, chunk), so they are computed once per call and reused by every
// channel (resnet's last stage: 7x7 planes, 512 channels). Any stride, dilation or padding.
constexpr i64 kMaxSmallPlane = 64;       // floats in one input plane
constexpr i64 kMaxSmallPlaneTaps = 256;  // KH * KW * ceil((q1 - q0) / 16) table entries

// Calls tap(e, idx, valid) for every (kh, kw, 16-pixel chunk k) of pixels [q0, q1), with
// e = (kh * KW + kw) * nck + k: idx holds the input-plane position h*W + w each lane reads,
// valid the lanes inside the block whose tap is inside the image (not in the padding).
template <class Tap>
IM2GEMM_AVX512 inline void for_each_small_plane_tap(const ConvGeom& g, i64 q0, i64 q1, Tap&& tap) {
  const i64 KH = g.KH, KW = g.KW, n = q1 - q0, nck = (n + 15) / 16;
  // Output row and column of pixel q, stepped without a division per lane (a 64-bit divide
  // per lane was most of a tiny layer's im2col).
  i64 q_oh = q0 / g.OW, q_ow = q0 % g.OW;
  for (i64 k = 0; k < nck; ++k) {
    alignas(64) std::int32_t ohs[16], ows[16];
    for (i64 l = 0; l < 16; ++l) {
      ohs[l] = static_cast<std::int32_t>(q_oh * g.SH - g.PH);
      ows[l] = static_cast<std::int32_t>(q_ow * g.SW - g.PW);
      if (16 * k + l + 1 < n && ++q_ow == g.OW) {  // lanes past q1 repeat the last pixel
        q_ow = 0;
        ++q_oh;
      }
    }
    const __m512i oh = _mm512_load_si512(ohs), ow = _mm512_load_si512(ows);
    const __mmask16 in_block = lanes(n - 16 * k);
    for (i64 kh = 0; kh < KH; ++kh) {
      const __m512i ih = _mm512_add_epi32(oh, _mm512_set1_epi32(static_cast<int>(kh * g.DH)));
      const __mmask16 row_ok =
          _mm512_mask_cmplt_epu32_mask(in_block, ih, _mm512_set1_epi32(static_cast<int>(g.H)));
      const __m512i row_base = _mm512_mullo_epi32(ih, _mm512_set1_epi32(static_cast<int>(g.W)));
      for (i64 kw = 0; kw < KW; ++kw) {
        const __m512i iw = _mm512_add_epi32(ow, _mm512_set1_epi32(static_cast<int>(kw * g.DW)));
        tap((kh * KW + kw) * nck + k, _mm512_add_epi32(row_base, iw),
            _mm512_mask_cmplt_epu32_mask(row_ok, iw, _mm512_set1_epi32(static_cast<int>(g.W))));
      }
    }
  }
}

IM2GEMM_AVX512 void im2col_block_small_plane_avx512(const ConvGeom& g, const float* x, i64 nch,
                                                    i64 q0, i64 q1, float* col, i64 ldcol) {
  const i64 HW = g.H * g.W, KH = g.KH, KW = g.KW, n = q1 - q0;
  const i64 nck = (n + 15) / 16;
  __m512i idx[kMaxSmallPlaneTaps];
  __mmask16 valid[kMaxSmallPlaneTaps];
  for_each_small_plane_tap(g, q0, q1, [&](i64 e, __m512i i, __mmask16 v) IM2GEMM_AVX512 {
    idx[e] = i;
    valid[e] = v;
  });
  const __mmask16 last = lanes(n - 16 * (nck - 1));
  const __m512i upper = _mm512_set1_epi32(32);
  for (i64 c = 0; c < nch; ++c) {
    const float* xc = x + c * HW;
    const __m512 v0 = _mm512_maskz_loadu_ps(lane_range(0, HW), xc);
    const __m512 v1 = _mm512_maskz_loadu_ps(lane_range(0, HW - 16), offset(xc, 16));
    const __m512 v2 = _mm512_maskz_loadu_ps(lane_range(0, HW - 32), offset(xc, 32));
    const __m512 v3 = _mm512_maskz_loadu_ps(lane_range(0, HW - 48), offset(xc, 48));
    for (i64 r = 0; r < KH * KW; ++r) {
      float* row = col + (c * KH * KW + r) * ldcol;
      for (i64 k = 0; k < nck; ++k) {
        const i64 e = r * nck + k;
        __m512 v = _mm512_permutex2var_ps(v0, idx[e], v1);
        if (HW > 32) {
          v = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx[e], upper), v,
                                   _mm512_permutex2var_ps(v2, idx[e], v3));
        }
        v = _mm512_maskz_mov_ps(valid[e], v);
        if (k + 1 < nck) {
          _mm512_storeu_ps(row + 16 * k, v);
        } else {
          _mm512_mask_storeu_ps(row + 16 * k, last, v);
        }
      }
    }
  }
}

// The adjoint: the dx plane of a channel is accumulated in (up to four) registers. Lane l of
// a chunk adds into plane position idx[l]; distinct lanes of one tap reach distinct positions,
// so the per-register inverse of that map (which chunk lane feeds plane lane j, if any) is a
// one-source permute plus a masked add. Built once per call, reused by every channel. This
// avoids the masked read-modify-writes of dx that stall on store forwarding when a strided
// block has only a few output columns (the tutorial layer: 520 of its 726 ns per call).
constexpr i64 kMaxSmallPlaneInverse = 256;  // KH * KW * chunks * plane registers

// NV: registers of one plane (ceil(H*W / 16)), a constant so that the accumulators stay in
// registers.
template <int NV>
IM2GEMM_AVX512 void col2im_small_plane_nv(const ConvGeom& g, const float* col, i64 ldcol, i64 nch,
                                          i64 q0, i64 q1, float* dx) {
  const i64 HW = g.H * g.W, KH = g.KH, KW = g.KW, n = q1 - q0;
  const i64 nck = (n + 15) / 16;
  alignas(64) std::int32_t inv[kMaxSmallPlaneInverse][16];  // [e * NV + r]: source lane
  __mmask16 hit[kMaxSmallPlaneInverse];                     // plane lanes that receive
  for (i64 t = 0; t < KH * KW * nck * NV; ++t) {
    hit[t] = 0;
    _mm512_store_si512(inv[t], _mm512_setzero_si512());
  }
  for_each_small_plane_tap(g, q0, q1, [&](i64 e, __m512i i, __mmask16 v) IM2GEMM_AVX512 {
    alignas(64) std::uint32_t pos[16];  // valid lanes: positions in [0, H*W)
    _mm512_store_si512(pos, i);
    unsigned h[NV] = {};
    std::int32_t(*row)[16] = inv + e * NV;
    for (unsigned bits = v; bits != 0; bits &= bits - 1) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(bits));
      const unsigned r = pos[l] >> 4, j = pos[l] & 15u;
      row[r][j] = static_cast<std::int32_t>(l);
      h[r] |= 1u << j;
    }
    for (int r = 0; r < NV; ++r) hit[e * NV + r] = static_cast<__mmask16>(h[r]);
  });
  const __mmask16 last = lanes(n - 16 * (nck - 1));
  for (i64 c = 0; c < nch; ++c) {
    float* dc = dx + c * HW;
    __m512 acc[NV];
    for (int r = 0; r < NV; ++r) {
      acc[r] = _mm512_maskz_loadu_ps(lane_range(0, HW - 16 * r), dc + 16 * r);
    }
    for (i64 rk = 0; rk < KH * KW; ++rk) {
      const float* row = col + (c * KH * KW + rk) * ldcol;
      for (i64 k = 0; k < nck; ++k) {
        const __m512 v = k + 1 < nck ? _mm512_loadu_ps(row + 16 * k)
                                     : _mm512_maskz_loadu_ps(last, row + 16 * k);
        const i64 t0 = (rk * nck + k) * NV;
        for (int r = 0; r < NV; ++r) {
          const __mmask16 h = hit[t0 + r];
          const __m512i src = _mm512_load_si512(inv[t0 + r]);
          acc[r] = _mm512_mask_add_ps(acc[r], h, acc[r], _mm512_maskz_permutexvar_ps(h, src, v));
        }
      }
    }
    for (int r = 0; r < NV; ++r) {
      _mm512_mask_storeu_ps(dc + 16 * r, lane_range(0, HW - 16 * r), acc[r]);
    }
  }
}

IM2GEMM_AVX512 void col2im_add_block_small_plane_avx512(const ConvGeom& g, const float* col,
                                                        i64 ldcol, i64 nch, i64 q0, i64 q1,
                                                        float* dx) {
  switch ((g.H * g.W + 15) / 16) {
    case 1: return col2im_small_plane_nv<1>(g, col, ldcol, nch, q0, q1, dx);
    case 2: return col2im_small_plane_nv<2>(g, col, ldcol, nch, q0, q1, dx);
    case 3: return col2im_small_plane_nv<3>(g, col, ldcol, nch, q0, q1, dx);
    default: return col2im_small_plane_nv<4>(g, col, ldcol, nch, q0, q1, dx);
  }
}

}  // namespace
#endif

// ---- AVX2: row segments as 8-wide copies (strides 1 and 2), col2im adds (stride 1) ---------
// The target_clones loops pay a vectorised loop's set-up and tail on every output-row segment:
// on rows of 8 pixels (lenet_conv2) their im2col cost as much as the GEMM it fed. These copy
// whole rows with 8-, then 4-wide moves and single floats for the last 0-3, reading and
// writing only the segment's own elements (no masks: masked stores are slow on AMD Zen).
#if defined(__GNUC__) && defined(__x86_64__)
#define IM2GEMM_HAVE_AVX2_LOWERING 1
#define IM2GEMM_AVX2 __attribute__((target("avx2")))

namespace {

IM2GEMM_AVX2 inline void zero_n_avx2(float* d, i64 n) {
  i64 i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_setzero_ps());
  if (i + 4 <= n) {
    _mm_storeu_ps(d + i, _mm_setzero_ps());
    i += 4;
  }
  for (; i < n; ++i) d[i] = 0.0f;
}

// d[i] = s[i * SW] for i < n, reading s[0 .. (n-1)*SW] only (SW 1 or 2).
template <int SW>
IM2GEMM_AVX2 inline void copy_n_avx2(float* d, const float* s, i64 n) {
  i64 i = 0;
  if constexpr (SW == 1) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
    if (i + 4 <= n) {
      _mm_storeu_ps(d + i, _mm_loadu_ps(s + i));
      i += 4;
    }
  } else {
    // Outputs i..i+7 come from s[2i .. 2i+15], one float past the last they need: the loop
    // stops while that float is still inside the segment (i + 9 <= n), likewise for 4.
    for (; i + 9 <= n; i += 8) {
      const __m256 a = _mm256_loadu_ps(s + 2 * i), b = _mm256_loadu_ps(s + 2 * i + 8);
      const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4..
      _mm256_storeu_ps(d + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even),
                                                                     _MM_SHUFFLE(3, 1, 2, 0))));
    }
    if (i + 5 <= n) {
      const __m128 a = _mm_loadu_ps(s + 2 * i), b = _mm_loadu_ps(s + 2 * i + 4);
      _mm_storeu_ps(d + i, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
      i += 4;
    }
  }
  for (; i < n; ++i) d[i] = s[i * SW];
}

// d[i] += s[i] for i < n.
IM2GEMM_AVX2 inline void add_n_avx2(float* d, const float* s, i64 n) {
  i64 i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(d + i, _mm256_add_ps(_mm256_loadu_ps(d + i), _mm256_loadu_ps(s + i)));
  }
  if (i + 4 <= n) {
    _mm_storeu_ps(d + i, _mm_add_ps(_mm_loadu_ps(d + i), _mm_loadu_ps(s + i)));
    i += 4;
  }
  for (; i < n; ++i) d[i] += s[i];
}

// The block's output rows of one kernel tap (c, kh, kw): the first and last may be cut by
// [q0, q1) (segment), the full rows between are zeros where the kernel row lies in the
// vertical padding and otherwise one row operation each. Input positions are formed as
// integer offsets from the plane (a row's base may lie before it in the padding).
struct TapRows {
  i64 oh_first, oh_last, full_a, full_b;
  TapRows(const ConvGeom& g, i64 q0, i64 q1)
      : oh_first(q0 / g.OW), oh_last((q1 - 1) / g.OW),
        full_a(q0 % g.OW == 0 ? q0 / g.OW : q0 / g.OW + 1),
        full_b(q1 % g.OW == 0 ? (q1 - 1) / g.OW + 1 : (q1 - 1) / g.OW) {}
};

template <int SW>
IM2GEMM_AVX2 void im2col_block_avx2(const ConvGeom& g, const float* x, i64 nch, i64 q0, i64 q1,
                                    float* col, i64 ldcol) {
  const i64 H = g.H, W = g.W, OW = g.OW, KH = g.KH, KW = g.KW, SH = g.SH;
  const i64 PH = g.PH, PW = g.PW, DH = g.DH, DW = g.DW;
  const TapRows t(g, q0, q1);
  const ValidRows rows_of(g);
  const ValidColumns cols_of(g);
  for (i64 c = 0; c < nch; ++c) {
    const float* xc = x + c * H * W;
    for (i64 kh = 0; kh < KH; ++kh) {
      for (i64 kw = 0; kw < KW; ++kw) {
        const i64 off_w = kw * DW - PW;
        const ValidCols v = cols_of.v[kw];
        float* row = col + ((c * KH + kh) * KW + kw) * ldcol;
        // Output row oh, columns [a, b), into dst[a .. b).
        auto segment = [&](i64 oh, i64 a, i64 b, float* dst) IM2GEMM_AVX2 {
          const i64 ih = oh * SH - PH + kh * DH;
          if (ih < 0 || ih >= H) return zero_n_avx2(dst + a, b - a);
          const i64 lo = std::clamp(v.lo, a, b), hi = std::clamp(v.hi, lo, b);
          zero_n_avx2(dst + a, lo - a);
          if (hi > lo) copy_n_avx2<SW>(dst + lo, xc + (ih * W + lo * SW + off_w), hi - lo);
          zero_n_avx2(dst + hi, b - hi);
        };
        if (t.full_a > t.full_b || t.oh_first == t.oh_last) {  // one (partial) row
          const i64 a = q0 - t.oh_first * OW;
          segment(t.oh_first, a, q1 - t.oh_first * OW, row - a);
          continue;
        }
        if (t.full_a > t.oh_first) {
          const i64 a = q0 - t.oh_first * OW;
          segment(t.oh_first, a, OW, row - a);
        }
        float* dst = row + (t.full_a * OW - q0);
        const i64 va = std::max(t.full_a, std::min(t.full_b, rows_of.lo[kh]));
        const i64 vb = std::max(va, std::min(t.full_b, rows_of.hi[kh]));
        zero_n_avx2(dst, (va - t.full_a) * OW);
        dst += (va - t.full_a) * OW;
        // Offset of the row's first valid column in the plane.
        i64 src = (va * SH - PH + kh * DH) * W + v.lo * SW + off_w;
        if (v.lo == 0 && v.hi == OW) {
          for (i64 oh = va; oh < vb; ++oh, dst += OW, src += SH * W) {
            copy_n_avx2<SW>(dst, xc + src, OW);
          }
        } else {
          for (i64 oh = va; oh < vb; ++oh, dst += OW, src += SH * W) {
            zero_n_avx2(dst, v.lo);
            if (v.hi > v.lo) copy_n_avx2<SW>(dst + v.lo, xc + src, v.hi - v.lo);
            zero_n_avx2(dst + v.hi, OW - v.hi);
          }
        }
        zero_n_avx2(dst, (t.full_b - vb) * OW);
        dst += (t.full_b - vb) * OW;
        if (t.full_b <= t.oh_last) segment(t.oh_last, 0, q1 - t.oh_last * OW, dst);
      }
    }
  }
}

// Stride 1 (horizontally): the adjoint, row by row.
IM2GEMM_AVX2 void col2im_add_block_avx2(const ConvGeom& g, const float* col, i64 ldcol, i64 nch,
                                        i64 q0, i64 q1, float* dx) {
  const i64 H = g.H, W = g.W, OW = g.OW, KH = g.KH, KW = g.KW, SH = g.SH;
  const i64 PH = g.PH, PW = g.PW, DH = g.DH, DW = g.DW;
  const TapRows t(g, q0, q1);
  const ValidRows rows_of(g);
  const ValidColumns cols_of(g);
  for (i64 c = 0; c < nch; ++c) {
    float* xc = dx + c * H * W;
    for (i64 kh = 0; kh < KH; ++kh) {
      for (i64 kw = 0; kw < KW; ++kw) {
        const i64 off_w = kw * DW - PW;
        const ValidCols v = cols_of.v[kw];
        const float* row = col + ((c * KH + kh) * KW + kw) * ldcol;
        auto segment = [&](i64 oh, i64 a, i64 b, const float* src) IM2GEMM_AVX2 {
          const i64 ih = oh * SH - PH + kh * DH;
          if (ih < 0 || ih >= H) return;
          const i64 lo = std::clamp(v.lo, a, b), hi = std::clamp(v.hi, lo, b);
          if (hi > lo) add_n_avx2(xc + (ih * W + lo + off_w), src + lo, hi - lo);
        };
        if (t.full_a > t.full_b || t.oh_first == t.oh_last) {
          const i64 a = q0 - t.oh_first * OW;
          segment(t.oh_first, a, q1 - t.oh_first * OW, row - a);
          continue;
        }
        if (t.full_a > t.oh_first) {
          const i64 a = q0 - t.oh_first * OW;
          segment(t.oh_first, a, OW, row - a);
        }
        const float* src = row + (t.full_a * OW - q0);
        const i64 va = std::max(t.full_a, std::min(t.full_b, rows_of.lo[kh]));
        const i64 vb = std::max(va, std::min(t.full_b, rows_of.hi[kh]));
        src += (va - t.full_a) * OW;
        if (v.hi > v.lo) {
          i64 d = (va * SH - PH + kh * DH) * W + v.lo + off_w;
          for (i64 oh = va; oh < vb; ++oh, d += SH * W) {
            add_n_avx2(xc + d, src + (oh - va) * OW + v.lo, v.hi - v.lo);
          }
        }
        src += (t.full_b - va) * OW;
        if (t.full_b <= t.oh_last) segment(t.oh_last, 0, q1 - t.oh_last * OW, src);
      }
    }
  }
}

// col2im at horizontal stride > 1 by column phases (as the packed forward's packer,
// conv/pack/im2col_pack.hpp). For one output row oh and kernel row kh, the taps of every kw
// land in a row buffer split by phase: tap kw adds its run of the col row, contiguous, to
// phase (kw*DW) % SW from column (kw*DW) / SW. The buffer is then added into input row ih
// once, phase by phase: one strided add per input column instead of one per (kw, ow)
// (alexnet_conv1, KW = 11 at stride 4: 227 instead of 605 per row). Input column iw is
// phase column j = (iw + PW) / SW of phase (iw + PW) % SW.
constexpr i64 kMaxPhaseRowFloats = 4096;
inline i64 phase_row_width(const ConvGeom& g) { return phase_columns(g.OW, g.KW, g.DW, g.SW); }

// o[0 .. 8*SW) += phase columns jj .. jj+7 of the SW phase rows (wp floats apart) at buf + jj,
// interleaved: o[i*SW + p] += row p's column jj + i. SW is 2 or 4.
IM2GEMM_AVX2 inline void add_interleaved_avx2(float* o, const float* buf, i64 wp, i64 SW) {
  auto add = [o](int u, __m256 v) IM2GEMM_AVX2 {
    _mm256_storeu_ps(o + 8 * u, _mm256_add_ps(_mm256_loadu_ps(o + 8 * u), v));
  };
  const __m256 r0 = _mm256_loadu_ps(buf), r1 = _mm256_loadu_ps(buf + wp);
  if (SW == 2) {
    const __m256 lo = _mm256_unpacklo_ps(r0, r1), hi = _mm256_unpackhi_ps(r0, r1);
    // lo: pairs 0 1 | 4 5, hi: pairs 2 3 | 6 7.
    add(0, _mm256_permute2f128_ps(lo, hi, 0x20));
    add(1, _mm256_permute2f128_ps(lo, hi, 0x31));
    return;
  }
  const __m256 r2 = _mm256_loadu_ps(buf + 2 * wp), r3 = _mm256_loadu_ps(buf + 3 * wp);
  // Quads (r0[i], r1[i], r2[i], r3[i]) for i = 0..7, in order.
  const __m256 a01 = _mm256_unpacklo_ps(r0, r1), b01 = _mm256_unpackhi_ps(r0, r1);
  const __m256 a23 = _mm256_unpacklo_ps(r2, r3), b23 = _mm256_unpackhi_ps(r2, r3);
  const __m256 q0 = _mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(1, 0, 1, 0));  // 0 | 4
  const __m256 q1 = _mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(3, 2, 3, 2));  // 1 | 5
  const __m256 q2 = _mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(1, 0, 1, 0));  // 2 | 6
  const __m256 q3 = _mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(3, 2, 3, 2));  // 3 | 7
  add(0, _mm256_permute2f128_ps(q0, q1, 0x20));
  add(1, _mm256_permute2f128_ps(q2, q3, 0x20));
  add(2, _mm256_permute2f128_ps(q0, q1, 0x31));
  add(3, _mm256_permute2f128_ps(q2, q3, 0x31));
}

IM2GEMM_AVX2 void col2im_add_block_phases_avx2(const ConvGeom& g, const float* col, i64 ldcol,
                                               i64 nch, i64 q0, i64 q1, float* dx) {
  const i64 H = g.H, W = g.W, OW = g.OW, KH = g.KH, KW = g.KW, SW = g.SW, PW = g.PW;
  const i64 wp = phase_row_width(g), reach = (KW - 1) * g.DW / SW;
  const i64 oh_first = q0 / OW, oh_last = (q1 - 1) / OW;
  alignas(32) float buf[kMaxPhaseRowFloats];
  for (i64 c = 0; c < nch; ++c) {
    float* xc = dx + c * H * W;
    for (i64 kh = 0; kh < KH; ++kh) {
      const float* taps = col + (c * KH + kh) * KW * ldcol;  // row of kw = 0
      i64 j = 0;
      for (i64 oh = oh_first; oh <= oh_last; ++oh) {
        const i64 a = oh == oh_first ? q0 - oh * OW : 0;
        const i64 b = oh == oh_last ? q1 - oh * OW : OW;
        const i64 base = j - a;  // the col rows' column of output column ow is base + ow
        j += b - a;
        const i64 ih = oh * g.SH - g.PH + kh * g.DH;
        if (ih < 0 || ih >= H) continue;
        // Phase columns [a, end) of every phase: zero, then the taps' runs.
        const i64 end = b + reach;
        for (i64 p = 0; p < SW; ++p) zero_n_avx2(buf + p * wp + a, end - a);
        for (i64 kw = 0; kw < KW; ++kw) {
          const i64 q = kw * g.DW;
          add_n_avx2(buf + (q % SW) * wp + q / SW + a, taps + kw * ldcol + base + a, b - a);
        }
        float* d = xc + ih * W;
        // Strides 2 and 4: phase columns whose SW input columns all lie in the row are
        // interleaved 8 at a time (SW vectors in, SW vectors added to the row).
        i64 va = end, vb = end;  // [va, vb): phase columns merged by vectors
        if (SW == 2 || SW == 4) {
          va = std::min(end, std::max(a, (PW + SW - 1) / SW));
          vb = std::max(va, std::min(end, (W + PW) / SW));  // j*SW + SW-1 - PW < W
          vb = va + (vb - va) / 8 * 8;
          for (i64 jj = va; jj < vb; jj += 8)
            add_interleaved_avx2(d + jj * SW - PW, buf + jj, wp, SW);
        }
        for (i64 p = 0; p < SW; ++p) {
          // Phase columns whose input column j*SW + p - PW lies in [0, W), within [a, end),
          // less the vector ones.
          const i64 jlo = std::max(a, PW - p > 0 ? (PW - p + SW - 1) / SW : i64{0});
          const i64 jhi = std::min(end, (W + PW - p + SW - 1) / SW);
          const float* src = buf + p * wp;
          for (i64 jj = jlo; jj < std::min(jhi, va); ++jj) d[jj * SW + p - PW] += src[jj];
          for (i64 jj = std::max(jlo, vb); jj < jhi; ++jj) d[jj * SW + p - PW] += src[jj];
        }
      }
    }
  }
}

// dx = v times the input activation's derivative (y: the layer input's 8 floats there).
IM2GEMM_AVX2 inline __m256 times_act_derivative_avx2(__m256 v, Activation act, __m256 y) {
  const __m256 one = _mm256_set1_ps(1.0f);
  switch (act) {
    case Activation::relu:
      return _mm256_and_ps(v, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ));
    case Activation::sigmoid: return _mm256_mul_ps(v, _mm256_mul_ps(y, _mm256_sub_ps(one, y)));
    case Activation::tanh: return _mm256_mul_ps(v, _mm256_sub_ps(one, _mm256_mul_ps(y, y)));
    default: return v;
  }
}

// Stores the dx floats [j, j + 8) of a row of W (fewer at the row's end, through a stack
// buffer: masked stores are slow on AMD Zen): v, plus what is there unless first, times
// act'(yrow) if final.
IM2GEMM_AVX2 inline void store_dx_avx2(float* drow, const float* yrow, i64 j, i64 W, __m256 v,
                                       bool first, bool final, Activation act) {
  const i64 n = std::min<i64>(8, W - j);
  if (n <= 0) return;
  alignas(32) float buf[8] = {};
  auto load = [&](const float* p) IM2GEMM_AVX2 {
    if (n == 8) return _mm256_loadu_ps(p);
    for (i64 l = 0; l < n; ++l) buf[l] = p[l];
    return _mm256_load_ps(buf);
  };
  if (!first) v = _mm256_add_ps(v, load(drow + j));
  if (final && act != Activation::identity) v = times_act_derivative_avx2(v, act, load(yrow + j));
  if (n == 8) {
    _mm256_storeu_ps(drow + j, v);
    return;
  }
  _mm256_store_ps(buf, v);
  for (i64 l = 0; l < n; ++l) drow[j + l] = buf[l];
}

// Lanes of an 8-lane chunk in [from, to), as a mask of _mm256_maskload_ps.
IM2GEMM_AVX2 inline __m256i lane_range_avx2(i64 from, i64 to) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const auto clamp8 = [](i64 v) { return static_cast<int>(std::clamp<i64>(v, -1, 8)); };
  return _mm256_and_si256(_mm256_cmpgt_epi32(iota, _mm256_set1_epi32(clamp8(from - 1))),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32(clamp8(to)), iota));
}

// The S phase sums of a chunk (8 columns of each) interleaved into its 8 S dx columns,
// out[q] = columns [8 q, 8 q + 8): unpacks, then lane permutes (at stride 4 a 4 x 8
// transpose).
template <int S>
IM2GEMM_AVX2 inline void interleave_phases_avx2(const __m256 (&p)[S], __m256 (&out)[S]) {
  static_assert(S == 2 || S == 4);
  if constexpr (S == 2) {
    const __m256 lo = _mm256_unpacklo_ps(p[0], p[1]), hi = _mm256_unpackhi_ps(p[0], p[1]);
    out[0] = _mm256_permute2f128_ps(lo, hi, 0x20);
    out[1] = _mm256_permute2f128_ps(lo, hi, 0x31);
  } else {
    const __m256 t0 = _mm256_unpacklo_ps(p[0], p[2]), t1 = _mm256_unpacklo_ps(p[1], p[3]);
    const __m256 t2 = _mm256_unpackhi_ps(p[0], p[2]), t3 = _mm256_unpackhi_ps(p[1], p[3]);
    // u0: columns 0 and 4 of each phase; u1: 1 and 5; u2: 2 and 6; u3: 3 and 7.
    const __m256 u0 = _mm256_unpacklo_ps(t0, t1), u1 = _mm256_unpackhi_ps(t0, t1);
    const __m256 u2 = _mm256_unpacklo_ps(t2, t3), u3 = _mm256_unpackhi_ps(t2, t3);
    out[0] = _mm256_permute2f128_ps(u0, u1, 0x20);
    out[1] = _mm256_permute2f128_ps(u2, u3, 0x20);
    out[2] = _mm256_permute2f128_ps(u0, u1, 0x31);
    out[3] = _mm256_permute2f128_ps(u2, u3, 0x31);
  }
}

// Stores the 8 S dx columns of a chunk from j0 (plain stores where the row is written once as
// it is and the 8 columns lie in it, else store_dx_avx2), asking for their place `ahead` rows
// on first (as prefetch_dx_ahead, for reading: PREFETCHW is not in AVX2's baseline).
template <int S, bool PLAIN>
[[gnu::always_inline]] IM2GEMM_AVX2 inline void store_phases_avx2(
    float* drow, const float* yrow, i64 j0, i64 W, const __m256 (&p)[S], const GatherRows::Taps& t,
    Activation act, i64 ih, i64 ahead, i64 H) {
  __m256 out[S];
  interleave_phases_avx2<S>(p, out);
  if (ih + ahead < H) {
    for (int q = 0; q < S; q += 2) __builtin_prefetch(drow + j0 + 8 * q + ahead * W, 1, 3);
  }
  for (int q = 0; q < S; ++q) {
    const i64 j = j0 + 8 * q;
    if (PLAIN && j + 8 <= W) {
      _mm256_storeu_ps(drow + j, out[q]);
    } else {
      store_dx_avx2(drow, yrow, j, W, out[q], PLAIN || t.first, PLAIN || t.final, act);
    }
  }
}

// col2im_gather_rows at horizontal stride S = 2 or 4 on AVX2: col2im_gather_phases_avx512's
// gather with 8 columns of each phase a chunk (8 S dx columns): plain loads where a tap's 8
// output columns lie inside its column row, masked loads at the row's ends; the phases
// interleaved by unpacks and lane permutes.
template <int S>
IM2GEMM_AVX2 void col2im_gather_phases_avx2(const ConvGeom& g, const float* col, i64 ldcol, i64 nch,
                                            i64 o0, i64 o1, float* dx, Activation act,
                                            const float* x) {
  static_assert(S == 2 || S == 4);
  const i64 H = g.H, W = g.W, OW = g.OW, KW = g.KW;
  const i64 nchunks = (W + 8 * S - 1) / (8 * S);
  const GatherPhases<S> phases(g, ldcol, 8, nchunks);
  const i64 *ph = phases.ph, *off = phases.off, *cols = phases.cols;
  const i64 ahead = dx_rows_ahead(g, nch);
  for_each_gather_row(
      g, col, ldcol, nch, o0, o1, dx, x,
      [&](i64 ih, const GatherRows::Taps& t, const float* const* rows, float* drow,
          const float* yrow) IM2GEMM_AVX2 {
        const int nrows = t.n;
        for (i64 k = 0; k < nchunks; ++k) {
          const i64 m0 = 8 * k;
          __m256 acc[S];
          for (int p = 0; p < S; ++p) acc[p] = _mm256_setzero_ps();
          if (k >= phases.k_in && k < phases.k_out) {
            for (int r = 0; r < nrows; ++r) {
              const float* row = rows[r] + m0;
              for (int p = 0; p < S; ++p) {
                for (int e = 0; e < phases.n[p]; ++e)
                  acc[p] = _mm256_add_ps(acc[p], _mm256_loadu_ps(row + phases.lists[p][e]));
              }
            }
          } else {
            for (int r = 0; r < nrows; ++r) {
              for (i64 kw = 0; kw < KW; ++kw) {
                const i64 a = m0 + off[kw];  // lane 0's output column
                // lanes [max(0, -a), min(OW - a, cols - m0))
                const __m256i m = lane_range_avx2(-a, std::min(OW - a, cols[kw] - m0));
                // The base may lie outside the row: only the mask's lanes are read.
                const __m256 v = _mm256_maskload_ps(offset(rows[r], kw * ldcol + a), m);
                for (int p = 0; p < S; ++p) {  // acc[ph[kw]] += v, the accumulators in registers
                  if (p == ph[kw]) acc[p] = _mm256_add_ps(acc[p], v);
                }
              }
            }
          }
          store_phases_avx2<S, false>(drow, yrow, 8 * S * k, W, acc, t, act, ih, ahead, H);
        }
      });
}

// col2im_gather_phases_avx2<S> for dilation 1 with the kernel width and the padding's phase
// (PM = PW % S) as constants (col2im_gather_phases_avx512_k's reasons): tap kw reaches phase
// (kw - PM) mod S, so the tap loop unrolls and, for kernels of up to 7 columns, each tap sums
// into its own register (wider ones straight into their phase's: 11 taps' registers would
// not fit AVX2's 16). Instances: stride 2 and widths 3, 5, 7; stride 4 and width 11.
template <int S, int KWT, int PM>
IM2GEMM_AVX2 void col2im_gather_phases_avx2_k(const ConvGeom& g, const float* col, i64 ldcol,
                                              i64 nch, i64 o0, i64 o1, float* dx, Activation act,
                                              const float* x) {
  static_assert(S == 2 || S == 4);
  constexpr int KW = KWT;
  constexpr bool kPerTap = KW <= 7;
  constexpr int kAcc = kPerTap ? KW : S;
  // Tap kw's accumulator: its own, or its phase's (tap_phase).
  constexpr auto slot = [](int kw) { return kPerTap ? kw : tap_phase<S, PM>(kw); };
  const i64 H = g.H, W = g.W, OW = g.OW;
  const i64 nchunks = (W + 8 * S - 1) / (8 * S);
  const GatherPhases<S> phases(g, ldcol, 8, nchunks);
  const i64 k_in = phases.k_in, k_out = phases.k_out;
  i64 off[KW];
  for (int kw = 0; kw < KW; ++kw) off[kw] = phases.off[kw];
  // Tap kw's load mask in chunk k: lanes [max(0, -a), min(OW - a, cols - 8 k)), a = 8 k + off.
  auto tap_mask = [&](i64 k, int kw) IM2GEMM_AVX2 {
    const i64 a = 8 * k + off[kw];
    return lane_range_avx2(-a, std::min(OW - a, phases.cols[kw] - 8 * k));
  };
  // The masks of the edge chunks (before k_in, from k_out), up to kEdge on each side, made
  // once a call instead of once a row; edge_slot(k) is -1 for chunks past those.
  constexpr i64 kEdge = 4;
  auto edge_slot = [&](i64 k) -> i64 {
    if (k < k_in) return k < kEdge ? k : -1;
    return nchunks - 1 - k < kEdge ? kEdge + (nchunks - 1 - k) : -1;
  };
  __m256i edge[2 * kEdge][KW];
  for (i64 k = 0; k < nchunks; ++k) {
    if (k >= k_in && k < k_out) continue;
    const i64 e = edge_slot(k);
    if (e < 0) continue;
    for (int kw = 0; kw < KW; ++kw) edge[e][kw] = tap_mask(k, kw);
  }
  const i64 ahead = dx_rows_ahead(g, nch);
  // One dx row from NT tap rows (0: t.n at run time). PLAIN: the row is written once, as is
  // (first and final, no derivative): plain stores of its whole 8-column parts.
  auto gather_row = [&]<int NT, bool PLAIN>(i64 ih, const GatherRows::Taps& t,
                                            const float* const* rows, float* drow,
                                            const float* yrow) IM2GEMM_AVX2 {
    const int nt = NT > 0 ? NT : t.n;
    for (i64 k = 0; k < nchunks; ++k) {
      __m256 acc[kAcc];
#pragma GCC unroll 12
      for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_setzero_ps();
      // Every tap of the chunk's nt rows into its accumulator, load(p, kw) reading tap kw's
      // 8 floats at p (which may lie outside the row where the load is masked).
      auto add_taps = [&](auto load) __attribute__((always_inline)) IM2GEMM_AVX2 {
#pragma GCC unroll 4
        for (int r = 0; r < nt; ++r) {
          const float* base = rows[r] + 8 * k;
#pragma GCC unroll 12
          for (int kw = 0; kw < KW; ++kw) {
            acc[slot(kw)] =
                _mm256_add_ps(acc[slot(kw)], load(offset(base, kw * ldcol + off[kw]), kw));
          }
        }
      };
      if (k >= k_in && k < k_out) {
        // (Capturing: a capture-less lambda's function-pointer conversion would be built
        // without AVX, and return a __m256 under the baseline ABI.)
        add_taps([&](const float* p, int) __attribute__((always_inline))
                 IM2GEMM_AVX2 { return _mm256_loadu_ps(p); });
      } else {
        __m256i m[KW];
        const i64 e = edge_slot(k);
#pragma GCC unroll 12
        for (int kw = 0; kw < KW; ++kw) m[kw] = e >= 0 ? edge[e][kw] : tap_mask(k, kw);
        add_taps([&](const float* p, int kw) __attribute__((always_inline))
                 IM2GEMM_AVX2 { return _mm256_maskload_ps(p, m[kw]); });
      }
      __m256 phase[S];
      if constexpr (kPerTap) {
        for (int p = 0; p < S; ++p) phase[p] = _mm256_setzero_ps();
#pragma GCC unroll 12
        for (int kw = 0; kw < KW; ++kw) {
          phase[tap_phase<S, PM>(kw)] = _mm256_add_ps(phase[tap_phase<S, PM>(kw)], acc[kw]);
        }
      } else {
        for (int p = 0; p < S; ++p) phase[p] = acc[p];
      }
      store_phases_avx2<S, PLAIN>(drow, yrow, 8 * S * k, W, phase, t, act, ih, ahead, H);
    }
  };
  for_each_gather_row(g, col, ldcol, nch, o0, o1, dx, x,
                      [&](i64 ih, const GatherRows::Taps& t, const float* const* rows, float* drow,
                          const float* yrow) IM2GEMM_AVX2 {
                        dispatch_gather_row(gather_row, act, ih, t, rows, drow, yrow);
                      });
}

}  // namespace
#endif

namespace {
#ifdef IM2GEMM_HAVE_AVX512_LOWERING
// The call's lowering ISA is AVX-512 (a cap below it holds the hand-written AVX-512 kernels
// back; the target_clones loops are chosen by the loader from the CPU alone).
bool avx512_allowed(const ConvGeom& g) { return g.isa == Isa::avx512; }
#endif
bool avx512_lowering(const ConvGeom& g) {
#ifdef IM2GEMM_HAVE_AVX512_LOWERING
  return avx512_allowed(g) && (g.SW == 1 || g.SW == 2 || g.SW == 4) &&
         g.KH <= ValidRows::kMaxKernelHeight && g.KW <= ValidColumns::kMaxKernelWidth;
#else
  (void)g;
  return false;
#endif
}
// Where the hand-written AVX-512 kernels beat the compiler-vectorised loops (measured here,
// one thread, suite shapes): im2col on rows narrower than kWideRow or with stride 4 (masked
// chunks and permutes, shifted row copies); col2im with strides 2 and 4.
constexpr std::int64_t kWideRow = 64;
bool avx512_im2col(const ConvGeom& g) {
  return avx512_lowering(g) && (g.OW < kWideRow || g.SW == 4);
}
bool avx512_col2im(const ConvGeom& g) { return avx512_lowering(g) && g.SW >= 2; }
// Stride-1 rows wider than 16 that end in a part of a 16-lane vector (lenet_conv1's 24): the
// AVX2 kernel's whole 8-lane vectors instead of a masked last chunk a row, which costs several
// plain operations on AMD Zen. Rows of at most 16 keep the AVX-512 kernel, which measured
// ahead on them (README, "Tuning constants"). Asked only where avx512_im2col holds (kernel
// size within the AVX2 kernel's limits too).
bool avx2_rows_under_avx512(const ConvGeom& g) { return g.SW == 1 && g.OW > 16 && g.OW % 16 != 0; }
// col2im at horizontal strides > 1 on AVX2 CPUs: by column phases, where SW phase rows fit
// the stack buffer.
bool avx2_col2im_phases(const ConvGeom& g) {
#ifdef IM2GEMM_HAVE_AVX2_LOWERING
  return g.isa == Isa::avx2 && g.SW > 1 && g.SW * phase_row_width(g) <= kMaxPhaseRowFloats;
#else
  (void)g;
  return false;
#endif
}
// The gathering col2im at horizontal stride 2 or 4 on AVX2 CPUs (col2im_gather_phases_avx2).
bool avx2_gathers(const ConvGeom& g) {
#ifdef IM2GEMM_HAVE_AVX2_LOWERING
  return g.isa == Isa::avx2 && (g.SW == 2 || g.SW == 4) && g.KH <= ValidRows::kMaxKernelHeight &&
         g.KW <= ValidColumns::kMaxKernelWidth;
#else
  (void)g;
  return false;
#endif
}
// The AVX2 kernels where the call's lowering ISA is AVX2 (an AVX2 CPU, or a cap): im2col at
// horizontal strides 1 and 2, col2im at stride 1. Under AVX-512 its measured choices hold.
bool avx2_lowering(const ConvGeom& g) {
#ifdef IM2GEMM_HAVE_AVX2_LOWERING
  return g.isa == Isa::avx2 && (g.SW == 1 || g.SW == 2) && g.KH <= ValidRows::kMaxKernelHeight &&
         g.KW <= ValidColumns::kMaxKernelWidth;
#else
  (void)g;
  return false;
#endif
}
}  // namespace

bool im2col_small_plane(const ConvGeom& g, std::int64_t q0, std::int64_t q1) {
#ifdef IM2GEMM_HAVE_AVX512_LOWERING
  // Input coordinates are computed in 32-bit lanes: every term stays below 2^30.
  constexpr i64 lim = i64{1} << 30;
  auto span_fits = [](i64 out, i64 stride, i64 k, i64 dil, i64 pad) {
    return out < lim && stride < lim && k < lim && dil < lim && pad < lim &&
           out * stride + k * dil < lim;
  };
  return avx512_allowed(g) && g.H * g.W <= kMaxSmallPlane && q1 > q0 &&
         g.KH * g.KW * ((q1 - q0 + 15) / 16) <= kMaxSmallPlaneTaps &&
         span_fits(g.OH, g.SH, g.KH, g.DH, g.PH) && span_fits(g.OW, g.SW, g.KW, g.DW, g.PW);
#else
  (void)g, (void)q0, (void)q1;
  return false;
#endif
}

void im2col_block(const ConvGeom& g, const float* x, i64 nch, i64 q0, i64 q1, float* col,
                  i64 ldcol) {
#ifdef IM2GEMM_HAVE_AVX512_LOWERING
  if (im2col_small_plane(g, q0, q1)) {
    return im2col_block_small_plane_avx512(g, x, nch, q0, q1, col, ldcol);
  }
  if (avx512_im2col(g)) {
#ifdef IM2GEMM_HAVE_AVX2_LOWERING
    if (avx2_rows_under_avx512(g)) return im2col_block_avx2<1>(g, x, nch, q0, q1, col, ldcol);
#endif
    return im2col_block_avx512(g, x, nch, q0, q1, col, ldcol);
  }
#endif
#ifdef IM2GEMM_HAVE_AVX2_LOWERING
  if (avx2_lowering(g)) {
    return g.SW == 1 ? im2col_block_avx2<1>(g, x, nch, q0, q1, col, ldcol)
                     : im2col_block_avx2<2>(g, x, nch, q0, q1, col, ldcol);
  }
#endif
  im2col_block_generic(g, x, nch, q0, q1, col, ldcol);
}

bool col2im_small_plane(const ConvGeom& g, std::int64_t q0, std::int64_t q1) {
#ifdef IM2GEMM_HAVE_AVX512_LOWERING
  return im2col_small_plane(g, q0, q1) &&
         g.KH * g.KW * ((q1 - q0 + 15) / 16) * ((g.H * g.W + 15) / 16) <= kMaxSmallPlaneInverse;
#else
  (void)g, (void)q0, (void)q1;
  return false;
#endif
}

void col2im_add_block(const ConvGeom& g, float* col, i64 ldcol, i64 nch, i64 q0, i64 q1,
                      float* dx) {
#ifdef IM2GEMM_HAVE_AVX512_LOWERING
  if (col2im_small_plane(g, q0, q1)) {
    return col2im_add_block_small_plane_avx512(g, col, ldcol, nch, q0, q1, dx);
  }
  if (avx512_col2im(g)) return col2im_add_block_avx512(g, col, ldcol, nch, q0, q1, dx);
#endif
#ifdef IM2GEMM_HAVE_AVX2_LOWERING
  if (avx2_lowering(g) && g.SW == 1) return col2im_add_block_avx2(g, col, ldcol, nch, q0, q1, dx);
  if (avx2_col2im_phases(g)) return col2im_add_block_phases_avx2(g, col, ldcol, nch, q0, q1, dx);
#endif
  col2im_add_block_generic(g, col, ldcol, nch, q0, q1, dx);
}

bool col2im_gathers(const ConvGeom& g) {
  // AVX-512: stride 1, or horizontal stride 2 or 4 and any vertical stride. AVX2: horizontal
  // stride 2.
  if (avx512_lowering(g)) {
    return ((g.SH == 1 && g.SW == 1) || g.SW == 2 || g.SW == 4) &&
           g.KW * ((g.W + 15) / 16) <= kMaxGatherTaps;
  }
  return avx2_gathers(g);
}

namespace {
using GatherFn = void (*)(const ConvGeom&, const float*, i64, i64, i64, i64, float*, Activation,
                          const float*);
// The stride-2 gather specialised for g's kernel width and padding parity, where there is one
// (kernel widths 3, 5 and 7 at dilation 1), as pick(kw, podd) names it for the constants
// std::integral_constant<int, KW> and <int, PW % 2>; else null (the ISA's generic gather).
template <class Pick>
[[maybe_unused]] GatherFn s2_gather_for(const ConvGeom& g, Pick pick) {
  if (g.DW != 1) return nullptr;
  const auto width = [&](auto kw) {
    return g.PW % 2 != 0 ? pick(kw, std::integral_constant<int, 1>{})
                         : pick(kw, std::integral_constant<int, 0>{});
  };
  switch (g.KW) {
    case 3: return width(std::integral_constant<int, 3>{});
    case 5: return width(std::integral_constant<int, 5>{});
    case 7: return width(std::integral_constant<int, 7>{});
    default: return nullptr;
  }
}
// The same at stride 4: kernel width 11 at dilation 1 (alexnet_conv1), as pick(pm) names it
// for std::integral_constant<int, PW % 4>.
template <class Pick>
[[maybe_unused]] GatherFn s4_gather_for(const ConvGeom& g, Pick pick) {
  if (g.DW != 1 || g.KW != 11) return nullptr;
  switch (g.PW % 4) {
    case 0: return pick(std::integral_constant<int, 0>{});
    case 1: return pick(std::integral_constant<int, 1>{});
    case 2: return pick(std::integral_constant<int, 2>{});
    default: return pick(std::integral_constant<int, 3>{});
  }
}
}  // namespace

bool col2im_gather_rows(const ConvGeom& g, const float* col, i64 ldcol, i64 nch, i64 o0, i64 o1,
                        float* dx, Activation act, const float* x) {
  if (!col2im_gathers(g)) return false;
#ifdef IM2GEMM_HAVE_AVX512_LOWERING
  if (avx512_lowering(g)) {
    if (g.SW == 1) {
      switch (g.KW) {
        case 3: col2im_gather_s1_avx512<3>(g, col, ldcol, nch, o0, o1, dx, act, x); break;
        case 5: col2im_gather_s1_avx512<5>(g, col, ldcol, nch, o0, o1, dx, act, x); break;
        case 7: col2im_gather_s1_avx512<7>(g, col, ldcol, nch, o0, o1, dx, act, x); break;
        default: col2im_gather_s1_avx512<0>(g, col, ldcol, nch, o0, o1, dx, act, x); break;
      }
    } else if (g.SW == 2) {
      const GatherFn s2 = s2_gather_for(g, [](auto kw, auto podd) -> GatherFn {
        return &col2im_gather_phases_avx512_k<2, decltype(kw)::value, decltype(podd)::value>;
      });
      (s2 ? s2 : &col2im_gather_phases_avx512<2>)(g, col, ldcol, nch, o0, o1, dx, act, x);
    } else {
      const GatherFn s4 = s4_gather_for(g, [](auto pm) -> GatherFn {
        return &col2im_gather_phases_avx512_k<4, 11, decltype(pm)::value>;
      });
      (s4 ? s4 : &col2im_gather_phases_avx512<4>)(g, col, ldcol, nch, o0, o1, dx, act, x);
    }
    return true;
  }
#endif
#ifdef IM2GEMM_HAVE_AVX2_LOWERING
  if (g.SW == 4) {
    const GatherFn s4 = s4_gather_for(g, [](auto pm) -> GatherFn {
      return &col2im_gather_phases_avx2_k<4, 11, decltype(pm)::value>;
    });
    (s4 ? s4 : &col2im_gather_phases_avx2<4>)(g, col, ldcol, nch, o0, o1, dx, act, x);
    return true;
  }
  const GatherFn s2 = s2_gather_for(g, [](auto kw, auto podd) -> GatherFn {
    return &col2im_gather_phases_avx2_k<2, decltype(kw)::value, decltype(podd)::value>;
  });
  (s2 ? s2 : &col2im_gather_phases_avx2<2>)(g, col, ldcol, nch, o0, o1, dx, act, x);
  return true;
#else
  (void)col, (void)ldcol, (void)nch, (void)o0, (void)o1, (void)dx, (void)act, (void)x;
  return false;
#endif
}

IM2GEMM_CLONES
void bias_act_copy(float* __restrict dst, const float* __restrict src, i64 n, float b,
                   Activation act) {
  switch (act) {
    case Activation::identity:
      for (i64 i = 0; i < n; ++i) dst[i] = src[i] + b;
      return;
    case Activation::relu:
      for (i64 i = 0; i < n; ++i) {
        const float t = src[i] + b;
        dst[i] = t > 0.0f ? t : 0.0f;
      }
      return;
    case Activation::sigmoid:
    case Activation::tanh:
      for (i64 i = 0; i < n; ++i) dst[i] = src[i] + b;
      activation_forward_unchecked(act, dst, n);
      return;
  }
}

IM2GEMM_CLONES
static void bias_act_inplace(float* __restrict v, i64 n, float b, Activation act) {
  switch (act) {
    case Activation::identity:
      if (b != 0.0f) {
        for (i64 i = 0; i < n; ++i) v[i] += b;
      }
      return;
    case Activation::relu:
      for (i64 i = 0; i < n; ++i) {
        const float t = v[i] + b;
        v[i] = t > 0.0f ? t : 0.0f;
      }
      return;
    case Activation::sigmoid:
    case Activation::tanh:
      for (i64 i = 0; i < n; ++i) v[i] += b;
      activation_forward_unchecked(act, v, n);
      return;
  }
}

void bias_act_rows(float* y, i64 ldy, i64 rows, i64 cols, const float* bias, Activation act) {
  if (bias == nullptr && act == Activation::identity) return;
  for (i64 r = 0; r < rows; ++r) {
    bias_act_inplace(y + r * ldy, cols, bias ? bias[r] : 0.0f, act);
  }
}

IM2GEMM_CLONES
void fill_rows(float* y, i64 ldy, i64 rows, i64 cols, const float* values) {
  for (i64 r = 0; r < rows; ++r) {
    float* __restrict v = y + r * ldy;
    const float b = values[r];
    for (i64 i = 0; i < cols; ++i) v[i] = b;
  }
}

IM2GEMM_CLONES
void act_backward(Activation act, const float* __restrict y, float* __restrict d, i64 n) {
  switch (act) {
    case Activation::identity: return;
    case Activation::relu:
      for (i64 i = 0; i < n; ++i) d[i] = y[i] > 0.0f ? d[i] : 0.0f;
      return;
    case Activation::sigmoid:
      for (i64 i = 0; i < n; ++i) d[i] *= y[i] * (1.0f - y[i]);
      return;
    case Activation::tanh:
      for (i64 i = 0; i < n; ++i) d[i] *= 1.0f - y[i] * y[i];
      return;
  }
}

IM2GEMM_CLONES
float sum_floats(const float* __restrict v, i64 n) {
  constexpr int L = 16;
  float acc[L] = {};
  i64 i = 0;
  for (; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) acc[l] += v[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) acc[l] += v[i];
  for (int w = L / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  return acc[0];
}

IM2GEMM_CLONES
void copy_floats(float* __restrict dst, const float* __restrict src, i64 n) {
  for (i64 i = 0; i < n; ++i) dst[i] = src[i];
}

IM2GEMM_CLONES
void add_floats(float* __restrict d, const float* __restrict s, i64 n) {
  for (i64 i = 0; i < n; ++i) d[i] += s[i];
}

}  // namespace im2gemm::detail
