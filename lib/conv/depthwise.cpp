// The depthwise passes (depthwise.hpp): plane preparation, tap tables and the split over
// threads; the arithmetic is in the per-ISA kernels (depthwise_kernels.inc).
#include "conv/depthwise.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include <xmmintrin.h>

#include "common/activation_impl.hpp"
#include "common/parallel.hpp"
#include "conv/lowering.hpp"
#include "conv/plan.hpp"

namespace im2gemm::detail {

namespace {

/// Widest vector of any ISA, in floats: every prepared row has this much readable margin past
/// the last output (kernels compute whole vectors and store only the row's part).
constexpr i64 kVec = 16;

/// Floats a table of `n` pointers (or i64) takes in scratch.
i64 table_floats(i64 n) { return round_up(2 * n, 16); }

struct Geo {
  i64 N, C, H, W, F, G, Cg, Fg, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
  explicit Geo(const Conv2dShape& s)
      : N(s.batch), C(s.in_channels), H(s.in_height), W(s.in_width), F(s.out_channels), G(s.groups),
        Cg(s.in_channels / s.groups), Fg(s.out_channels / s.groups), KH(s.kernel_height),
        KW(s.kernel_width), SH(s.stride_height), SW(s.stride_width), PH(s.pad_height),
        PW(s.pad_width), DH(s.dilation_height), DW(s.dilation_width), OH(s.out_height()),
        OW(s.out_width()) {}
};

// Lays the (H x W) plane xp out as p.rows prepared rows: row r is input row r - PH (zeros
// outside the input), phase ph of it holds padded columns ph, ph + SW, ph + 2 SW, ...
// Writes the data positions only: the rest of `out` must be zero (plane_zero).
void prepare_plane(const DwPlan& p, const Geo& g, DwCopyFn copy, const float* xp, float* out) {
  // Phase ph holds input columns q * SW + ph - PW for q in [q_lo, q_hi).
  i64 q_lo[kDwMaxStrideWidth], q_hi[kDwMaxStrideWidth];
  for (i64 ph = 0; ph < g.SW; ++ph) {
    q_lo[ph] = std::max<i64>(0, (g.PW - ph + g.SW - 1) / g.SW);
    q_hi[ph] = g.W - 1 + g.PW - ph < 0 ? 0 : std::min(p.row_q, (g.W - 1 + g.PW - ph) / g.SW + 1);
  }
  // Rows, then phases, in address order: a copy's zero spill lands on what is written later.
  for (i64 ih = 0; ih < g.H && ih + g.PH < p.rows; ++ih) {
    for (i64 ph = 0; ph < g.SW; ++ph) {
      if (q_hi[ph] <= q_lo[ph]) continue;
      copy(out + (ih + g.PH) * p.ld + ph * p.row_q + q_lo[ph],
           xp + ih * g.W + q_lo[ph] * g.SW + ph - g.PW, q_hi[ph] - q_lo[ph], g.SW);
    }
  }
}

// Backward data: lays the (OH x OW) dy plane out as p.rows rows of ld floats, zero-stuffed by
// the strides and padded so that dx is a stride-1 correlation of it with the filter rotated by
// 180 degrees: row r, column j hold dy[oh][ow] where oh * SH = r + PH - (KH - 1) * DH and
// ow * SW = j + PW - (KW - 1) * DW, zeros elsewhere. Writes the data positions only.
void prepare_dy_plane(const DwPlan& p, const Geo& g, DwCopyFn copy, const float* dyp, float* out) {
  const i64 base_h = g.PH - (g.KH - 1) * g.DH, base_w = g.PW - (g.KW - 1) * g.DW;
  // columns: j = ow * SW - base_w in [0, ld)
  const i64 ow_lo = std::max<i64>(0, (base_w + g.SW - 1) / g.SW * (base_w > 0));
  const i64 ow_hi = std::min(g.OW, (p.ld - 1 + base_w) / g.SW + 1);
  if (ow_hi <= ow_lo) return;
  for (i64 oh = 0; oh < g.OH; ++oh) {
    const i64 r = oh * g.SH - base_h;
    if (r < 0 || r >= p.rows) continue;
    float* dst = out + r * p.ld;
    const float* src = dyp + oh * g.OW;
    if (g.SW == 1) {
      copy(dst + ow_lo - base_w, src + ow_lo, ow_hi - ow_lo, 1);
      continue;
    }
    for (i64 ow = ow_lo; ow < ow_hi; ++ow) dst[ow * g.SW - base_w] = src[ow];
  }
}

// A prepared plane of the plan, and its margin, all zeros.
void plane_zero(const DwPlan& p, float* out) {
  std::fill(out, out + p.planes * p.psize + kVec, 0.0f);
}

/// Most pixels of a lanes tile (8 floats each: 128 KiB), and of its output tile.
constexpr i64 kDwLanesMaxTilePixels = 4096;

/// Most taps the lanes kernels take (their offset table on the stack).
constexpr i64 kDwLanesMaxTaps = 64;

/// Widest filter side the flat planes take (their tap tables on the stack).
constexpr i64 kFlatMaxTaps = 16;

// The flat planes' tap tables (DwFlat): row offsets and column shifts. Forward and backward
// weights read the x plane at (kh * DH - PH) rows and (kw * DW - PW) columns from the output;
// backward data reads the dy plane at (PH - kh * DH) rows and (PW - kw * DW) columns from dx.
void flat_taps(const Geo& g, int pass, i64* row_off, i64* col) {
  const i64 sign = pass == 1 ? -1 : 1;
  for (i64 kh = 0; kh < g.KH; ++kh) row_off[kh] = sign * (kh * g.DH - g.PH) * g.W;
  for (i64 kw = 0; kw < g.KW; ++kw) col[kw] = sign * (kw * g.DW - g.PW);
}

// Flat planes where the output rows are as wide as the source rows (stride 1, "same" padding
// along the rows), the filter fits the tap tables, and the groups are depthwise (ResNeXt's
// 4-channel groups measured some 5% slower flat than in rows: not taken).
bool flat_eligible(const Geo& g) {
  return g.Cg == 1 && g.SH == 1 && g.SW == 1 && g.OW == g.W && g.KH <= kFlatMaxTaps &&
         g.KW <= kFlatMaxTaps;
}

// An item's flat planes in the thread's scratch: `count` source planes of n floats each (src,
// contiguous) copied between zero margins (zeroed on the thread's first item), and the tap
// tables of `pass` after them.
struct FlatStage {
  float* planes;
  i64* ro;
  i64* co;
};

FlatStage flat_stage(const DwPlan& p, const Geo& g, const DwKernels& kern, int pass, float* scratch,
                     bool first, const float* src, i64 count, i64 n) {
  FlatStage st{scratch, reinterpret_cast<i64*>(scratch + p.planes * p.psize + kVec), nullptr};
  st.co = st.ro + g.KH;
  if (first) plane_zero(p, scratch);
  flat_taps(g, pass, st.ro, st.co);
  for (i64 c = 0; c < count; ++c) kern.copy(scratch + c * p.psize + p.flat_lead, src + c * n, n, 1);
  return st;
}

// Channels on lanes (DwLanes*): depthwise with one filter a channel, planes narrower than
// kDwLanesMaxWidth; backward data only at stride 1 (its zero-stuffed dy: the per-plane path).
// Channel multipliers k > 1 keep the per-plane path (a channel's planes would not be 8
// adjacent channels of one tensor on both sides).
bool lanes_eligible(const Geo& g, int pass) {
  return g.Cg == 1 && g.Fg == 1 && g.W < kDwLanesMaxWidth &&
         (pass != 1 || (g.SH == 1 && g.SW == 1)) && g.KH * g.KW <= kDwLanesMaxTaps;
}

// Masked planes (DwMasked, DwMaskedDots): depthwise 3x3 "same" planes (one row and column of
// padding, stride and dilation 1) of the widths of kDwMaskedWidths, where the ISA has the
// kernels. Measured ahead of channels on lanes (7, 28, 56 wide) and of the row kernels (112)
// on the grouped suite's layers, every pass.
bool masked_eligible(const Geo& g, int pass, Isa isa) {
  const DwKernels& k = dw_kernels(isa);
  if (pass == 2 && k.masked_dots == nullptr) return false;
  return g.Cg == 1 && g.KH == 3 && g.KW == 3 && g.SH == 1 && g.SW == 1 && g.PH == 1 && g.PW == 1 &&
         g.DH == 1 && g.DW == 1 && g.H * g.W <= kDwMaskedMaxPixels &&
         std::find(std::begin(kDwMaskedWidths), std::end(kDwMaskedWidths), g.W) !=
             std::end(kDwMaskedWidths) &&
         k.masked != nullptr;
}

// Stride-2 backward data by phases (DwStride2Data): depthwise 3x3, stride 2, one row and
// column of padding, dilation 1, one filter a channel (every ISA has the kernel). The other
// paths correlate a zero-stuffed dy at stride 1: four times the multiply-adds.
bool stride2_data_eligible(const Geo& g, int pass) {
  return pass == 1 && g.Cg == 1 && g.Fg == 1 && g.KH == 3 && g.KW == 3 && g.SH == 2 && g.SW == 2 &&
         g.PH == 1 && g.PW == 1 && g.DH == 1 && g.DW == 1;
}

// The column masks of the masked planes (DwMasked::colmask) of a pass: pixel i reads column
// i % W + sign * (kw - 1) (backward data: the dx pixel reads dy at minus the forward's
// offsets). A column tap's valid pixels are one range a row: set a row's range at a time.
struct MaskedColumns {
  static constexpr i64 kMaxVecs = (kDwMaskedMaxPixels + 15) / 16;
  int sign;
  std::uint16_t mask[kMaxVecs * 3];
  MaskedColumns(const Geo& g, int pass) : sign(pass == 1 ? -1 : 1) {
    const i64 W = g.W, n = g.H * W;
    std::fill(mask, mask + (n + 15) / 16 * 3, std::uint16_t{0});
    for (i64 kw = 0; kw < 3; ++kw) {
      const i64 dc = sign * (kw - 1), lo = std::max<i64>(0, -dc), hi = std::min(W, W - dc);
      for (i64 r = 0; r < g.H; ++r) {
        for (i64 i = r * W + lo, e = r * W + hi; i < e;) {
          const i64 l = i % 16, cnt = std::min<i64>(e - i, 16 - l);
          mask[i / 16 * 3 + kw] |= static_cast<std::uint16_t>(((1u << cnt) - 1u) << l);
          i += cnt;
        }
      }
    }
  }
};

// A lanes item's scratch: the tile (zeroed on the thread's first item), the output (or dy)
// tile, the [tap][8] weights (or sums) and the 8 inits.
struct LanesStage {
  float* tile;
  float* out;
  float* w;
  float* init;
};

LanesStage lanes_stage(const DwPlan& p, const Geo& g, float* scratch, bool first, i64 out_pixels) {
  LanesStage st{scratch, scratch + p.psize, nullptr, nullptr};
  st.w = st.out + round_up(out_pixels, 8) * kDwLanes;
  st.init = st.w + (g.KH * g.KW + 1) * kDwLanes;
  if (first) std::fill(scratch, scratch + p.psize, 0.0f);
  return st;
}

// Brings n floats at p towards the cache (the lanes path's next item).
void prefetch_planes(const float* p, i64 n) {
  for (i64 i = 0; i < n; i += 16) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T0);
}

// A lanes group's filters, [tap][8] (rotated by 180 degrees for backward data), and the 8
// inits (bias, or zero); lanes past nch zero.
void lanes_filters(const LanesStage& st, const float* w, const float* bias, i64 c0, int nch,
                   i64 taps, bool rotated) {
  for (i64 t = 0; t < taps; ++t) {
    const i64 tap = rotated ? taps - 1 - t : t;
    for (int l = 0; l < kDwLanes; ++l)
      st.w[t * kDwLanes + l] = l < nch ? w[(c0 + l) * taps + tap] : 0.0f;
  }
  for (int l = 0; l < kDwLanes; ++l) st.init[l] = l < nch && bias != nullptr ? bias[c0 + l] : 0.0f;
}

// Item `it` (channel group it / N, image it % N) of a lanes pass: its up to 8 source planes
// (src: channels x rows x cols per image) into the tile, then the next item's planes towards
// the cache (they are not adjacent: groups major).
void lanes_load(const DwPlan& p, const DwKernels& kern, const LanesStage& st, const float* src,
                i64 channels, i64 rows, i64 cols, i64 N, i64 it) {
  const i64 plane = rows * cols, c0 = it / N * kDwLanes, n = it % N;
  kern.lanes_in(DwLanesIn{st.tile + (p.tile_r0 * p.tile_q + p.tile_c0) * kDwLanes, p.tile_q,
                          src + (n * channels + c0) * plane, plane, rows, cols,
                          static_cast<int>(std::min<i64>(kDwLanes, channels - c0))});
  if (it + 1 < p.items) {
    const i64 nn = (it + 1) % N, nc0 = (it + 1) / N * kDwLanes;
    prefetch_planes(src + (nn * channels + nc0) * plane,
                    std::min<i64>(kDwLanes, channels - nc0) * plane);
  }
}

template <class Body>
void run_items(const DwPlan& p, Body&& body) {
  run_with_scratch(p.threads, p.run_inline, p.scratch_bytes(),
                   [&](i64 t, i64 nthr, float* scratch) {
                     const i64 a = part_begin(t, nthr, p.items),
                               b = part_begin(t + 1, nthr, p.items);
                     for (i64 it = a; it < b; ++it) body(it, scratch, it == a);
                     if (p.stream) _mm_sfence();  // non-temporal stores done before the join
                   });
}

// Masked planes: each thread's output planes in chunks of about kMaskedChunkFloats, so that
// an activation after the kernel finds the chunk in L1. body(o0, o1): planes [o0, o1).
constexpr i64 kMaskedChunkFloats = 4096;
template <class Body>
void run_masked(const DwPlan& p, i64 plane_floats, Body&& body) {
  const i64 step = std::max<i64>(1, kMaskedChunkFloats / plane_floats);
  run_with_scratch(p.threads, p.run_inline, p.scratch_bytes(), [&](i64 t, i64 nthr, float*) {
    const i64 a = part_begin(t, nthr, p.items), b = part_begin(t + 1, nthr, p.items);
    for (i64 o = a; o < b; o += step) body(o, std::min(b, o + step));
  });
}

}  // namespace

bool is_depthwise(const Conv2dShape& s) { return s.groups == s.in_channels; }

bool is_narrow_grouped(const Conv2dShape& s) {
  return s.groups > 1 && s.in_channels / s.groups <= kDirectMaxGroupChannels &&
         s.out_channels / s.groups <= kDirectMaxGroupFilters;
}

const DwKernels& dw_kernels(Isa isa) {
  switch (isa_clamp(isa)) {
    case Isa::avx512: return dw_kernels_avx512();
    case Isa::avx2: return dw_kernels_avx2();
    case Isa::scalar: break;
  }
  return dw_kernels_scalar();
}

DwPlan plan_depthwise(const Conv2dShape& s, int pass, int threads, Isa isa,
                      const PlanTuning& tuning) {
  const Geo g(s);
  DwPlan p;
  p.k = g.Fg;
  p.vec_margin = kVec;
  const i64 macs = g.N * g.F * g.Cg * g.OH * g.OW * g.KH * g.KW;
  // A path's work items, and the threads (and inline run) that they and the work allow.
  auto set_items = [&](DwPlan& q, i64 items) {
    q.items = items;
    q.threads =
        std::min(plan_threads(macs, threads, tuning), static_cast<int>(std::max<i64>(items, 1)));
    q.run_inline = q.threads == 1 && macs <= kMaxMacsInline;
  };
  set_items(p, pass == 2 ? g.G : g.N * g.G);
  const i64 taps = g.KH * g.KW;
  const i64 out_bytes = 4 * (pass == 0 ? g.N * g.F * g.OH * g.OW : g.N * g.C * g.H * g.W);
  p.stream = pass != 2 && (pass == 0 ? g.Cg : g.Fg) == 1 && out_bytes >= kDwStreamMinBytes;
  if (masked_eligible(g, pass, isa)) {
    p.masked = true;
    p.stream = false;
    set_items(p, pass == 0 ? g.N * g.F : pass == 1 ? g.N * g.C : g.F);
    p.scratch_floats = 0;
    return p;
  }
  if (stride2_data_eligible(g, pass)) {
    p.stride2_data = true;
    set_items(p, g.N * g.C);
    p.scratch_floats = 0;
    return p;
  }
  if (lanes_eligible(g, pass)) {
    DwPlan q = p;
    q.lanes = true;
    q.stream = false;
    q.cgroups = (g.C + kDwLanes - 1) / kDwLanes;
    set_items(q, pass == 2 ? q.cgroups : g.N * q.cgroups);
    // Output pixels (o1, o2) read tile pixels (o1 * S1 + read_r0 + k1 * D1, ...); the source
    // plane of Hs x Ws sits at (tile_r0, tile_c0).
    i64 Hs = g.H, Ws = g.W, Ho = g.OH, Wo = g.OW;
    if (pass == 1) {  // dx = stride-1 correlation of dy with the flipped filter
      const i64 base_h = g.PH - (g.KH - 1) * g.DH, base_w = g.PW - (g.KW - 1) * g.DW;
      Hs = g.OH, Ws = g.OW, Ho = g.H, Wo = g.W;
      q.tile_r0 = std::max<i64>(0, -base_h), q.tile_c0 = std::max<i64>(0, -base_w);
      q.read_r0 = std::max<i64>(0, base_h), q.read_c0 = std::max<i64>(0, base_w);
    } else {
      q.tile_r0 = g.PH, q.tile_c0 = g.PW;
    }
    const i64 S1 = pass == 1 ? 1 : g.SH, S2 = pass == 1 ? 1 : g.SW;
    q.tile_rows = std::max(Hs + q.tile_r0, q.read_r0 + (Ho - 1) * S1 + (g.KH - 1) * g.DH + 1);
    q.tile_q = std::max(Ws + q.tile_c0, q.read_c0 + (Wo - 1) * S2 + (g.KW - 1) * g.DW + 1);
    q.psize = q.tile_rows * q.tile_q * kDwLanes;
    // Tile, output (backward weights: dy) tile, [tap][8] weights or sums, 8 inits.
    q.scratch_floats = q.psize + round_up(Ho * Wo, 8) * kDwLanes + (taps + 2) * kDwLanes + 16;
    // Tall planes (narrow but many rows): the per-plane paths, whose scratch stays bounded.
    if (q.tile_rows * q.tile_q <= kDwLanesMaxTilePixels && Ho * Wo <= kDwLanesMaxTilePixels) {
      return q;
    }
  }
  p.flat = flat_eligible(g) && g.W < (pass == 2 ? kDwFlatMaxWidthWeights : kDwFlatMaxWidth);
  if (p.flat) {
    // Source plane (x, or dy for backward data) of n_src floats, outputs n_out; reads from
    // i + lo to i + hi for i < round_up(n_out, kVec).
    i64 ro[kFlatMaxTaps], co[kFlatMaxTaps];
    flat_taps(g, pass, ro, co);
    const i64 n_src = pass == 1 ? g.OH * g.W : g.H * g.W,
              n_out = pass == 1 ? g.H * g.W : g.OH * g.W;
    const i64 lo = *std::min_element(ro, ro + g.KH) + *std::min_element(co, co + g.KW);
    const i64 hi = *std::max_element(ro, ro + g.KH) + *std::max_element(co, co + g.KW);
    p.flat_lead = round_up(std::max<i64>(0, -lo), 16);
    p.psize =
        round_up(p.flat_lead + std::max(round_up(n_src, kVec), round_up(n_out, kVec) + hi), 16);
    p.planes = pass == 1 ? g.Fg : g.Cg;
    p.scratch_floats = p.planes * p.psize + kVec + table_floats(g.KH + g.KW);
    if (pass == 2) {
      p.chunk = std::max<i64>(1, kDwWeightsChunkFilters / (g.Fg * g.Cg));
      p.scratch_floats += p.chunk * g.Fg * g.Cg * (taps + 1) * 16;
    }
    return p;
  }
  if (pass == 1) {
    // The group's Fg zero-stuffed dy planes; each dx plane sums over them.
    p.rows = g.H + (g.KH - 1) * g.DH;
    p.phases = 1;
    p.row_q = round_up(g.W, kVec) + (g.KW - 1) * g.DW;
    p.ld = round_up(p.row_q, 16);
    p.planes = g.Fg;
    p.psize = p.rows * p.ld;
    p.scratch_floats = p.planes * p.psize + kVec + round_up(g.Fg * g.Cg * taps, 16) +
                       table_floats(g.KW);
  } else {
    // The group's Cg prepared x planes.
    p.rows = (g.OH - 1) * g.SH + (g.KH - 1) * g.DH + 1;
    p.phases = g.SW;
    p.row_q = round_up(g.OW, kVec) + (g.KW - 1) * g.DW / g.SW;
    p.ld = round_up(p.phases * p.row_q, 16);
    p.planes = g.Cg;
    p.psize = p.rows * p.ld;
    p.scratch_floats = p.planes * p.psize + kVec + table_floats(g.KW);
    if (pass == 2) {
      // Per-lane sums of a chunk of groups, whose planes are read image by image.
      p.chunk = std::max<i64>(1, kDwWeightsChunkFilters / (g.Fg * g.Cg));
      p.scratch_floats += p.chunk * g.Fg * g.Cg * (taps + 1) * 16;
    }
  }
  return p;
}

// Channels on lanes: the output tile is convolved and transposed back to planes in chunks of
// rows (about kLanesChunkPixels pixels, 8 KiB of tile), so that lanes_out reads what
// lanes_conv has just written from L1 rather than a whole plane's tile from L2. A chunk is a
// whole number of 8-pixel groups where the row width allows, so its transposes need no
// partial store. body(oh0, oh1, out) runs the chunk's conv into out, the tile's start.
constexpr i64 kLanesChunkPixels = 256;
template <class Body>
void lanes_by_row_chunks(i64 OH, i64 OW, Body&& body) {
  i64 rows = std::max<i64>(1, kLanesChunkPixels / OW);
  const i64 unit = 8 / std::gcd<i64>(OW, 8);  // rows whose pixels make whole 8-groups
  if (rows >= unit) rows -= rows % unit;
  for (i64 oh0 = 0; oh0 < OH; oh0 += rows) body(oh0, std::min(OH, oh0 + rows));
}

void depthwise_forward(Isa isa, int threads, const PlanTuning& tuning, const Conv2dShape& s,
                       const float* x, const float* w, const float* bias, float* y,
                       Activation act) {
  const Geo g(s);
  const DwPlan p = plan_depthwise(s, 0, threads, isa, tuning);
  const DwKernels& kern = dw_kernels(isa);
  const i64 taps = g.KH * g.KW, P = g.OH * g.OW, psize = p.psize;
  const bool relu = act == Activation::relu;  // fused into the store
  // Non-temporal stores unless another activation reads the plane back.
  const bool stream = p.stream && (act == Activation::identity || relu);
  if (p.masked) {
    const MaskedColumns cols(g, 0);
    run_masked(p, P, [&](i64 o0, i64 o1) {
      kern.masked(DwMasked{y, x, P, o0, o1, 1, g.Fg, g.F, w, bias, static_cast<int>(g.W), cols.sign,
                           cols.mask, relu});
      if (!relu) activation_forward_unchecked(act, y + o0 * P, (o1 - o0) * P);
    });
    return;
  }
  if (p.lanes) {
    run_items(p, [&](i64 it, float* scratch, bool first) {
      const i64 cb = it / g.N, n = it % g.N, c0 = cb * kDwLanes;
      const int nch = static_cast<int>(std::min<i64>(kDwLanes, g.C - c0));
      const LanesStage st = lanes_stage(p, g, scratch, first, P);
      if (first || n == 0) lanes_filters(st, w, bias, c0, nch, taps, false);
      lanes_load(p, kern, st, x, g.C, g.H, g.W, g.N, it);
      const float* tile0 = st.tile + (p.read_r0 * p.tile_q + p.read_c0) * kDwLanes;
      lanes_by_row_chunks(g.OH, g.OW, [&](i64 oh0, i64 oh1) {
        const i64 n_px = (oh1 - oh0) * g.OW;
        kern.lanes_conv(DwLanesConv{st.out, oh1 - oh0, g.OW,
                                    tile0 + oh0 * g.SH * p.tile_q * kDwLanes, p.tile_q, g.SH, g.SW,
                                    g.DH, g.DW, st.w, static_cast<int>(g.KH),
                                    static_cast<int>(g.KW), st.init, relu});
        // sigmoid, tanh: on the cached output tile, before the store
        if (!relu) activation_forward_unchecked(act, st.out, n_px * kDwLanes);
        kern.lanes_out(DwLanesOut{y + (n * g.F + c0) * P + oh0 * g.OW, P, n_px, st.out, nch});
      });
    });
    return;
  }
  if (p.flat) {
    run_items(p, [&](i64 it, float* scratch, bool first) {
      const i64 n = it / g.G, gi = it % g.G;
      // The group's Cg x planes, each whole between zero margins.
      const FlatStage st = flat_stage(p, g, kern, 0, scratch, first,
                                      x + (n * g.C + gi * g.Cg) * g.H * g.W, g.Cg, g.H * g.W);
      float* planes = st.planes;
      const i64 *ro = st.ro, *co = st.co;
      for (i64 j = 0; j < g.Fg; ++j) {
        const i64 f = gi * g.Fg + j;
        float* yf = y + (n * g.F + f) * P;
        for (i64 c = 0; c < g.Cg; ++c) {
          kern.flat(DwFlat{yf, P, planes + c * psize + p.flat_lead, g.W, w + (f * g.Cg + c) * taps,
                           static_cast<int>(g.KH), static_cast<int>(g.KW), ro, co,
                           bias != nullptr ? bias[f] : 0.0f, c > 0, stream, relu && c == g.Cg - 1});
        }
        if (!relu) activation_forward_unchecked(act, yf, P);
      }
    });
    return;
  }
  run_items(p, [&](i64 it, float* scratch, bool first) {
    const i64 n = it / g.G, gi = it % g.G;
    float* planes = scratch;  // the group's Cg prepared planes
    auto* off = reinterpret_cast<i64*>(planes + p.planes * psize + kVec);
    if (first) plane_zero(p, planes);
    for (i64 c = 0; c < g.Cg; ++c) {
      prepare_plane(p, g, kern.copy, x + (n * g.C + gi * g.Cg + c) * g.H * g.W, planes + c * psize);
    }
    for (i64 kw = 0; kw < g.KW; ++kw) off[kw] = (kw * g.DW % g.SW) * p.row_q + kw * g.DW / g.SW;
    for (i64 j = 0; j < g.Fg; ++j) {
      const i64 f = gi * g.Fg + j;
      float* yf = y + (n * g.F + f) * P;
      for (i64 c = 0; c < g.Cg; ++c) {  // the plane stays in cache over the channels
        kern.plane(DwPlane{yf, g.OW, g.OH, g.OW, planes + c * psize, p.ld, g.SH, g.DH,
                           w + (f * g.Cg + c) * taps, static_cast<int>(g.KH),
                           static_cast<int>(g.KW), off, bias != nullptr ? bias[f] : 0.0f, c > 0,
                           stream, relu && c == g.Cg - 1});
      }
      if (!relu) activation_forward_unchecked(act, yf, P);  // sigmoid, tanh: on the cached plane
    }
  });
}

void depthwise_backward_data(Isa isa, int threads, const PlanTuning& tuning, const Conv2dShape& s,
                             const float* dy, const float* w, float* dx, Activation act,
                             const float* x) {
  const Geo g(s);
  const DwPlan p = plan_depthwise(s, 1, threads, isa, tuning);
  const DwKernels& kern = dw_kernels(isa);
  const i64 taps = g.KH * g.KW, HW = g.H * g.W, psize = p.psize;
  const bool stream = p.stream && act == Activation::identity;  // else the plane is read back
  if (p.masked) {
    const MaskedColumns cols(g, 1);
    run_masked(p, HW, [&](i64 o0, i64 o1) {
      kern.masked(DwMasked{dx, dy, HW, o0, o1, g.Fg, 1, g.C, w, nullptr, static_cast<int>(g.W),
                           cols.sign, cols.mask, false});
      if (act != Activation::identity) {
        act_backward(act, x + o0 * HW, dx + o0 * HW, (o1 - o0) * HW);
      }
    });
    return;
  }
  if (p.stride2_data) {
    run_masked(p, HW, [&](i64 o0, i64 o1) {
      kern.stride2_data(DwStride2Data{dx, dy, w, g.H, g.W, g.OH, g.OW, g.C, o0, o1, stream});
      if (stream) _mm_sfence();  // non-temporal stores done before the join
      if (act != Activation::identity) {
        act_backward(act, x + o0 * HW, dx + o0 * HW, (o1 - o0) * HW);
      }
    });
    return;
  }
  if (p.lanes) {
    run_items(p, [&](i64 it, float* scratch, bool first) {
      const i64 cb = it / g.N, n = it % g.N, c0 = cb * kDwLanes;
      const int nch = static_cast<int>(std::min<i64>(kDwLanes, g.C - c0));
      const LanesStage st = lanes_stage(p, g, scratch, first, HW);
      if (first || n == 0) lanes_filters(st, w, nullptr, c0, nch, taps, true);
      lanes_load(p, kern, st, dy, g.F, g.OH, g.OW, g.N, it);
      const float* tile0 = st.tile + (p.read_r0 * p.tile_q + p.read_c0) * kDwLanes;
      float* dxc = dx + (n * g.C + c0) * HW;
      lanes_by_row_chunks(g.H, g.W, [&](i64 ih0, i64 ih1) {
        kern.lanes_conv(DwLanesConv{st.out, ih1 - ih0, g.W, tile0 + ih0 * p.tile_q * kDwLanes,
                                    p.tile_q, 1, 1, g.DH, g.DW, st.w, static_cast<int>(g.KH),
                                    static_cast<int>(g.KW), st.init, false});
        kern.lanes_out(DwLanesOut{dxc + ih0 * g.W, HW, (ih1 - ih0) * g.W, st.out, nch});
      });
      if (act != Activation::identity) {  // on the cached planes
        for (int l = 0; l < nch; ++l)
          act_backward(act, x + (n * g.C + c0 + l) * HW, dxc + l * HW, HW);
      }
    });
    return;
  }
  if (p.flat) {
    run_items(p, [&](i64 it, float* scratch, bool first) {
      const i64 n = it / g.G, gi = it % g.G;
      // The group's Fg dy planes, each whole between zero margins.
      const FlatStage st = flat_stage(p, g, kern, 1, scratch, first,
                                      dy + (n * g.F + gi * g.Fg) * g.OH * g.OW, g.Fg, g.OH * g.OW);
      float* planes = st.planes;
      const i64 *ro = st.ro, *co = st.co;
      const float* wg = w + gi * g.Fg * g.Cg * taps;
      for (i64 c = 0; c < g.Cg; ++c) {
        const i64 plane0 = (n * g.C + gi * g.Cg + c) * HW;
        for (i64 j = 0; j < g.Fg; ++j) {
          kern.flat(DwFlat{dx + plane0, HW, planes + j * psize + p.flat_lead, g.W,
                           wg + (j * g.Cg + c) * taps, static_cast<int>(g.KH),
                           static_cast<int>(g.KW), ro, co, 0.0f, j > 0, stream});
        }
        if (act != Activation::identity) act_backward(act, x + plane0, dx + plane0, HW);
      }
    });
    return;
  }
  run_items(p, [&](i64 it, float* scratch, bool first) {
    const i64 n = it / g.G, gi = it % g.G;
    float* planes = scratch;                          // the group's Fg prepared dy planes
    float* wflip = planes + p.planes * psize + kVec;  // [j][c] filters rotated by 180 degrees
    auto* off = reinterpret_cast<i64*>(wflip + round_up(g.Fg * g.Cg * taps, 16));
    const float* wg = w + gi * g.Fg * g.Cg * taps;
    for (i64 t = 0; t < g.Fg * g.Cg * taps; ++t) wflip[t] = wg[t - t % taps + taps - 1 - t % taps];
    for (i64 kw = 0; kw < g.KW; ++kw) off[kw] = kw * g.DW;
    if (first) plane_zero(p, planes);
    for (i64 j = 0; j < g.Fg; ++j) {
      prepare_dy_plane(p, g, kern.copy, dy + (n * g.F + gi * g.Fg + j) * g.OH * g.OW,
                       planes + j * psize);
    }
    for (i64 c = 0; c < g.Cg; ++c) {
      const i64 plane0 = (n * g.C + gi * g.Cg + c) * HW;
      for (i64 j = 0; j < g.Fg; ++j) {
        kern.plane(DwPlane{dx + plane0, g.W, g.H, g.W, planes + j * psize, p.ld, 1, g.DH,
                           wflip + (j * g.Cg + c) * taps, static_cast<int>(g.KH),
                           static_cast<int>(g.KW), off, 0.0f, j > 0, stream});
      }
      if (act != Activation::identity) act_backward(act, x + plane0, dx + plane0, HW);
    }
  });
}

void depthwise_backward_weights(Isa isa, int threads, const PlanTuning& tuning,
                                const Conv2dShape& s, const float* x, const float* dy, float* dw,
                                float* db) {
  const Geo g(s);
  const DwPlan p = plan_depthwise(s, 2, threads, isa, tuning);
  const DwKernels& kern = dw_kernels(isa);
  const i64 taps = g.KH * g.KW, slots = taps + 1, psize = p.psize;
  const i64 per_group = g.Fg * g.Cg * slots * 16;  // floats of sums
  if (p.masked) {
    const MaskedColumns cols(g, 0);
    run_with_scratch(p.threads, p.run_inline, p.scratch_bytes(), [&](i64 t, i64 nthr, float*) {
      const i64 a = part_begin(t, nthr, p.items), b = part_begin(t + 1, nthr, p.items);
      kern.masked_dots(DwMaskedDots{dw, db, dy, x, g.H * g.W, a, b, g.N, g.F, g.C, g.Fg,
                                    static_cast<int>(g.W), cols.mask});
    });
    return;
  }
  if (p.lanes) {
    const i64 HW = g.H * g.W, OP = g.OH * g.OW;
    run_with_scratch(
        p.threads, p.run_inline, p.scratch_bytes(), [&](i64 t, i64 nthr, float* scratch) {
          const i64 a = part_begin(t, nthr, p.items), b = part_begin(t + 1, nthr, p.items);
          for (i64 cb = a; cb < b; ++cb) {
            const i64 c0 = cb * kDwLanes;
            const int nch = static_cast<int>(std::min<i64>(kDwLanes, g.C - c0));
            const LanesStage st = lanes_stage(p, g, scratch, cb == a, OP);
            float* acc = st.w;  // [slot][8]: the taps' sums, then dy's
            std::fill(acc, acc + slots * kDwLanes, 0.0f);
            for (i64 n = 0; n < g.N; ++n) {  // images in order: independent of the threads
              kern.lanes_in(DwLanesIn{st.tile + (p.tile_r0 * p.tile_q + p.tile_c0) * kDwLanes,
                                      p.tile_q, x + (n * g.C + c0) * HW, HW, g.H, g.W, nch});
              kern.lanes_in(DwLanesIn{st.out, g.OW, dy + (n * g.F + c0) * OP, OP, g.OH, g.OW, nch});
              if (n + 1 < g.N) {  // the next image's planes
                prefetch_planes(x + ((n + 1) * g.C + c0) * HW, nch * HW);
                prefetch_planes(dy + ((n + 1) * g.F + c0) * OP, nch * OP);
              }
              kern.lanes_dots(DwLanesDots{st.out, g.OH, g.OW,
                                          st.tile + (p.read_r0 * p.tile_q + p.read_c0) * kDwLanes,
                                          p.tile_q, g.SH, g.SW, g.DH, g.DW, static_cast<int>(g.KH),
                                          static_cast<int>(g.KW), acc});
            }
            for (int l = 0; l < nch; ++l) {
              for (i64 tp = 0; tp < taps; ++tp) dw[(c0 + l) * taps + tp] = acc[tp * kDwLanes + l];
              if (db != nullptr) db[c0 + l] = acc[taps * kDwLanes + l];
            }
          }
        });
    return;
  }
  run_with_scratch(
      p.threads, p.run_inline, p.scratch_bytes(), [&](i64 t, i64 nthr, float* scratch) {
        float* planes = scratch;
        auto* off = reinterpret_cast<i64*>(planes + p.planes * psize + kVec);
        float* vacc = reinterpret_cast<float*>(off) +
                      table_floats(p.flat ? g.KH + g.KW : g.KW);  // [group][j][c] slots
        i64* co = off + g.KH;  // flat: off the row offsets, co the column shifts
        if (p.flat) {
          flat_taps(g, 2, off, co);
        } else {
          for (i64 kw = 0; kw < g.KW; ++kw)
            off[kw] = (kw * g.DW % g.SW) * p.row_q + kw * g.DW / g.SW;
        }
        plane_zero(p, planes);
        const i64 a = part_begin(t, nthr, p.items), b = part_begin(t + 1, nthr, p.items);
        // Chunks of groups, image by image: the planes of a chunk are adjacent in memory. Each
        // group's sums still run over the images in order: independent of threads and chunks.
        for (i64 g0 = a; g0 < b; g0 += p.chunk) {
          const i64 g1 = std::min(b, g0 + p.chunk);
          std::fill(vacc, vacc + (g1 - g0) * per_group, 0.0f);
          for (i64 n = 0; n < g.N; ++n) {
            for (i64 gi = g0; gi < g1; ++gi) {
              for (i64 c = 0; c < g.Cg; ++c) {
                const float* xc = x + (n * g.C + gi * g.Cg + c) * g.H * g.W;
                if (p.flat) {
                  kern.copy(planes + c * psize + p.flat_lead, xc, g.H * g.W, 1);
                } else {
                  prepare_plane(p, g, kern.copy, xc, planes + c * psize);
                }
              }
              for (i64 j = 0; j < g.Fg; ++j) {
                const float* dyf = dy + (n * g.F + gi * g.Fg + j) * g.OH * g.OW;
                for (i64 c = 0; c < g.Cg; ++c) {
                  float* vjc = vacc + (gi - g0) * per_group + (j * g.Cg + c) * slots * 16;
                  if (p.flat) {
                    kern.flat_dots(DwFlatDots{dyf, g.OH * g.OW, planes + c * psize + p.flat_lead,
                                              g.W, static_cast<int>(g.KH), static_cast<int>(g.KW),
                                              off, co, vjc});
                    continue;
                  }
                  kern.dots(DwDots{dyf, planes + c * psize, g.OH, g.OW, p.ld, g.SH, g.DH,
                                   static_cast<int>(g.KH), static_cast<int>(g.KW), off,
                                   vacc + (gi - g0) * per_group + (j * g.Cg + c) * slots * 16});
                }
              }
            }
          }
          auto lanes = [](const float* v) {
            float sum = 0.0f;
            for (int l = 0; l < 16; ++l) sum += v[l];
            return sum;
          };
          for (i64 gi = g0; gi < g1; ++gi) {
            const float* vg = vacc + (gi - g0) * per_group;
            for (i64 j = 0; j < g.Fg; ++j) {
              const i64 f = gi * g.Fg + j;
              for (i64 c = 0; c < g.Cg; ++c) {
                const float* vjc = vg + (j * g.Cg + c) * slots * 16;
                for (i64 tp = 0; tp < taps; ++tp)
                  dw[(f * g.Cg + c) * taps + tp] = lanes(vjc + 16 * tp);
              }
              if (db != nullptr)
                db[f] = lanes(vg + j * g.Cg * slots * 16 + 16 * taps);  // channel 0's
            }
          }
        }
      });
}

}  // namespace im2gemm::detail
