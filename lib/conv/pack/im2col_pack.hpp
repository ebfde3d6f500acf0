// Internal: im2col written straight into the packed B micro-panels of the GEMM engine
// (lib/gemm/gemm.hpp). Row k = (c*KH + kh)*KW + kw of the lowered matrix, column j = a pixel
// of the output (j = image*OH*OW + oh*OW + ow, images side by side when a block spans them).
//
// A block of columns [j0, j1) is first cut into segments: runs of consecutive columns inside
// one output row of one image and one micro-panel. For every k row a segment is then one
// strided copy of an input row (zeros where the padding is), at most NR floats: no division
// per element, and the lane ranges that fall inside the input are tabulated per (segment, kw).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/isa.hpp"

namespace im2gemm::detail {

/// The input of one group as the packer reads it. Pads may be negative (the backward-data
/// convolution of a layer whose pad exceeds its dilated kernel extent crops instead).
struct PackGeom {
  std::int64_t C, H, W;  ///< channels of the group, input plane
  std::int64_t KH, KW, SH, SW, PH, PW, DH, DW;
  std::int64_t OH, OW;        ///< output plane; P = OH*OW columns per image
  std::int64_t image_stride;  ///< floats from one image's group input to the next
};

struct PackSegment {
  std::int64_t src;  ///< image offset (image * image_stride)
  std::int64_t ih0;  ///< input row of kh = 0: oh*SH - PH (kNoRow for a zero tail)
  std::int64_t iw0;  ///< input column of kw = 0, lane 0: ow*SW - PW
  std::int64_t dst;  ///< offset in the packed block: panel * panel_stride + first lane
  std::int64_t len;  ///< lanes, 1..NR
};

/// The next row k + 1 of the lowered matrix as (c, kh, kw), k = (c*KH + kh)*KW + kw.
inline void next_tap(const PackGeom& g, std::int64_t& c, std::int64_t& kh, std::int64_t& kw) {
  if (++kw == g.KW) {
    kw = 0;
    if (++kh == g.KH) {
      kh = 0;
      ++c;
    }
  }
}

/// Lanes [lo, hi) of a segment read the input row for a given kw; the others are zero.
struct LaneRange {
  std::int32_t lo, hi;
};

/// Most segments a block of `ncols` columns can need (one per column, plus the zero tail).
inline std::int64_t max_pack_segments(std::int64_t ncols) { return ncols + 1; }

/// Cuts columns [j0, j1) into segments (written to segs, at most max_pack_segments(j1 - j0))
/// and tabulates their lane ranges (ranges[s*KW + kw]); returns the segment count. Lanes of
/// the last micro-panel past j1 get a zero segment, so every lane of every panel is written.
std::int64_t build_pack_segments(const PackGeom& g, std::int64_t j0, std::int64_t j1, int nr,
                                 std::int64_t panel_stride, PackSegment* segs, LaneRange* ranges);

/// Writes rows [k0, k1) of the block: row kk of segment s at dst + s.dst + (kk-k0)*nr.
/// x points at channel 0 of the group in image 0. panel_stride (of build_pack_segments) must
/// be a multiple of nr and dst 64-byte aligned: the AVX2 packer finds a segment's panel and
/// lane from s.dst and writes whole aligned panel rows.
using PackFn = void (*)(const PackGeom& g, const float* x, const PackSegment* segs,
                        const LaneRange* ranges, std::int64_t nseg, std::int64_t k0,
                        std::int64_t k1, int nr, float* dst);

void pack_im2col_scalar(const PackGeom&, const float*, const PackSegment*, const LaneRange*,
                        std::int64_t, std::int64_t, std::int64_t, int, float*);
void pack_im2col_avx2(const PackGeom&, const float*, const PackSegment*, const LaneRange*,
                      std::int64_t, std::int64_t, std::int64_t, int, float*);
void pack_im2col_avx512(const PackGeom&, const float*, const PackSegment*, const LaneRange*,
                        std::int64_t, std::int64_t, std::int64_t, int, float*);

/// The packer for `isa` (clamped to the CPU).
PackFn pack_im2col_fn(Isa isa);

// Horizontal stride > 1 by column phases. One image's group input is first split so that
// every tap reads a contiguous run: phase plane (c, p) holds, in row ih, the input columns
// j*SW + p - PW for j in [0, phase_width), zeros where they fall in the padding. Tap kw
// (q = kw*DW) then reads plane (c, q % SW) at column ow + q / SW: the packer copies runs of
// consecutive floats, as at stride 1, with no lane outside the plane and no horizontal
// bounds check. Rows keep the order of the lowered matrix, so the weights are unchanged.

/// Columns of a phase row: the output row plus the widest tap's column, OW + (KW-1)*DW / SW
/// (also col2im's phase rows, lib/conv/lowering.cpp).
inline std::int64_t phase_columns(std::int64_t OW, std::int64_t KW, std::int64_t DW,
                                  std::int64_t SW) {
  return OW + (KW - 1) * DW / SW;
}
inline std::int64_t phase_width(const PackGeom& g) { return phase_columns(g.OW, g.KW, g.DW, g.SW); }
/// Floats of an image's phase planes (C*SW*H*phase_width).
std::int64_t phase_floats(const PackGeom& g);
/// Splits one image's group input x (channel 0 of the group) into xs (phase_floats(g)).
using SplitFn = void (*)(const PackGeom& g, const float* x, float* xs);
void split_phases_scalar(const PackGeom& g, const float* x, float* xs);
/// Stride 2 deinterleaves 16 floats into two phase rows per step; other strides: the scalar.
void split_phases_avx2(const PackGeom& g, const float* x, float* xs);
/// Rewrites the segments of build_pack_segments for the phase packers: iw0 becomes the
/// output column of the segment's lane 0 (its phase column at kw = 0).
void to_phase_segments(const PackGeom& g, PackSegment* segs, std::int64_t nseg);

/// Writes rows [k0, k1) of a block from the phase planes xs of the block's image, as PackFn
/// does from x (segments of one image, rewritten by to_phase_segments; ranges unused).
using PhasePackFn = void (*)(const PackGeom& g, const float* xs, const PackSegment* segs,
                             std::int64_t nseg, std::int64_t k0, std::int64_t k1, int nr,
                             float* dst);
void pack_phases_scalar(const PackGeom&, const float*, const PackSegment*, std::int64_t,
                        std::int64_t, std::int64_t, int, float*);
void pack_phases_avx2(const PackGeom&, const float*, const PackSegment*, std::int64_t, std::int64_t,
                      std::int64_t, int, float*);
void pack_phases_avx512(const PackGeom&, const float*, const PackSegment*, std::int64_t,
                        std::int64_t, std::int64_t, int, float*);
struct PhasePacker {
  SplitFn split = nullptr;
  PhasePackFn pack = nullptr;
};
/// The phase split and packer for `isa` (clamped to the CPU); AVX-512 splits with the AVX2
/// code (its 8-column steps) and packs with masked 16-lane copies.
PhasePacker phase_packer(Isa isa);

/// The transposed packer of backward weights: B = col^T for sgemm_nt_with (lib/gemm/gemm.hpp).
/// Rows [k0, k1) of B are output pixels of a run of images (k: image k / (OH*OW), pixel
/// k % (OH*OW), images image_stride floats apart), columns [j0, j1) are rows
/// j = (c*KH + kh)*KW + kw of the column matrix. Written as gemm::pack_b_transposed writes its
/// panels: panel p at dst + p*panel_stride, row kk at + (kk-k0)*nr, lanes past j1 zero. Eight
/// taps by up to eight pixels of one output row at a time: eight loads from x (masked where a
/// tap reaches into the padding), one register transpose, aligned stores. Horizontal stride 1,
/// nr a multiple of 8, dst 32-byte aligned; a CPU with AVX2. x: channel 0 in image 0.
void pack_im2col_transposed_avx2(const PackGeom& g, const float* x, std::int64_t k0,
                                 std::int64_t k1, std::int64_t j0, std::int64_t j1, int nr,
                                 float* dst, std::int64_t panel_stride);
/// The same from column phases: xs holds each image's phase planes (split_phases), images
/// g.image_stride floats apart; any horizontal stride and padding (g as of the layer).
void pack_phases_transposed_avx2(const PackGeom& g, const float* xs, std::int64_t k0,
                                 std::int64_t k1, std::int64_t j0, std::int64_t j1, int nr,
                                 float* dst, std::int64_t panel_stride);

}  // namespace im2gemm::detail
