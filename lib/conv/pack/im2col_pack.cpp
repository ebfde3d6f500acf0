#include "conv/pack/im2col_pack.hpp"

#include <algorithm>
#include <cassert>

namespace im2gemm::detail {

namespace {

using i64 = std::int64_t;

// ih0 of a zero segment: no kh brings it into [0, H).
constexpr i64 kNoRow = -(i64{1} << 62);

// First lane l >= 0 with base + l*step >= 0, and first lane with base + l*step >= limit
// (step >= 1), both clamped to [0, len].
i64 first_lane_at_least(i64 base, i64 bound, i64 step, i64 len) {
  if (base >= bound) return 0;
  const i64 gap = bound - base;  // > 0
  const i64 l = gap / step + (gap % step != 0);
  return std::min(l, len);
}

}  // namespace

i64 build_pack_segments(const PackGeom& g, i64 j0, i64 j1, int nr, i64 panel_stride,
                        PackSegment* segs, LaneRange* ranges) {
  assert(panel_stride % nr == 0);  // the AVX2 packer reads panel and lane from dst
  const i64 P = g.OH * g.OW;
  i64 count = 0;
  for (i64 j = j0; j < j1;) {
    const i64 n = j / P, pix = j % P, oh = pix / g.OW, ow = pix % g.OW;
    const i64 rel = j - j0, lane = rel % nr;
    const i64 len = std::min({j1 - j, g.OW - ow, nr - lane});
    segs[count++] = PackSegment{n * g.image_stride, oh * g.SH - g.PH, ow * g.SW - g.PW,
                                (rel / nr) * panel_stride + lane, len};
    j += len;
  }
  const i64 rem = (j1 - j0) % nr;
  if (rem != 0) {
    segs[count++] = PackSegment{0, kNoRow, 0, ((j1 - j0) / nr) * panel_stride + rem, nr - rem};
  }
  for (i64 s = 0; s < count; ++s) {
    for (i64 kw = 0; kw < g.KW; ++kw) {
      const i64 base = segs[s].iw0 + kw * g.DW, len = segs[s].len;
      const i64 lo = first_lane_at_least(base, 0, g.SW, len);
      const i64 hi = std::max(lo, first_lane_at_least(base, g.W, g.SW, len));
      ranges[s * g.KW + kw] =
          LaneRange{static_cast<std::int32_t>(lo), static_cast<std::int32_t>(hi)};
    }
  }
  return count;
}

#define PACK_FN_NAME pack_im2col_scalar
#include "conv/pack/im2col_pack_generic.inc"
#undef PACK_FN_NAME

i64 phase_floats(const PackGeom& g) { return g.C * g.SW * g.H * phase_width(g); }

void split_phases_scalar(const PackGeom& g, const float* x, float* xs) {
  const i64 wp = phase_width(g);
  for (i64 c = 0; c < g.C; ++c) {
    for (i64 p = 0; p < g.SW; ++p) {
      // Phase columns j whose input column j*SW + p - PW lies in [0, W): [jlo, jhi).
      const i64 jlo = std::min(wp, first_lane_at_least(p - g.PW, 0, g.SW, wp));
      const i64 jhi = std::max(jlo, first_lane_at_least(p - g.PW, g.W, g.SW, wp));
      for (i64 ih = 0; ih < g.H; ++ih) {
        const float* __restrict src = x + (c * g.H + ih) * g.W;
        float* __restrict d = xs + ((c * g.SW + p) * g.H + ih) * wp;
        i64 j = 0;
        for (; j < jlo; ++j) d[j] = 0.0f;
        for (; j < jhi; ++j) d[j] = src[j * g.SW + p - g.PW];
        for (; j < wp; ++j) d[j] = 0.0f;
      }
    }
  }
}

void to_phase_segments(const PackGeom& g, PackSegment* segs, i64 nseg) {
  for (i64 s = 0; s < nseg; ++s) {
    if (segs[s].ih0 != kNoRow) segs[s].iw0 = (segs[s].iw0 + g.PW) / g.SW;
  }
}

#define PHASE_FN_NAME pack_phases_scalar
#include "conv/pack/im2col_phases_generic.inc"
#undef PHASE_FN_NAME

PhasePacker phase_packer(Isa isa) {
  switch (isa_clamp(isa)) {
    case Isa::avx512: return {&split_phases_avx2, &pack_phases_avx512};
    case Isa::avx2: return {&split_phases_avx2, &pack_phases_avx2};
    case Isa::scalar: break;
  }
  return {&split_phases_scalar, &pack_phases_scalar};
}

PackFn pack_im2col_fn(Isa isa) {
  switch (isa_clamp(isa)) {
    case Isa::avx512: return &pack_im2col_avx512;
    case Isa::avx2: return &pack_im2col_avx2;
    case Isa::scalar: break;
  }
  return &pack_im2col_scalar;
}

}  // namespace im2gemm::detail
