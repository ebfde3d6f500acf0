// Internal: the direct path of depthwise convolution (groups == in_channels, out_channels = k *
// in_channels for any channel multiplier k) and of narrow groups (at most
// kDirectMaxGroupChannels channels and kDirectMaxGroupFilters filters a group, ResNeXt's 4 and
// 4), all three passes, as direct NCHW kernels over each plane instead of im2col + GEMM
// (whose GEMMs would have M = filters a group and K = channels a group * KH * KW).
//
// Every pass first lays one source plane out in the thread's scratch ("prepared plane": zero
// padding included, columns split into stride phases, a vector of margin on the right), so
// that the kernels read every tap of an output row as one contiguous run of any stride (the
// zeros sit at the same places for every plane of a call: a thread zeroes its plane once and
// then copies only the data of each source plane):
//   prepared[r][p][q] = padded_source[r][q * stride + p]
// and the tap at column offset o = kw * dilation reads phase o % stride from q = ow + o / stride.
//   forward          y[n][c*k+j]  = act(bias + sum taps w * x-plane)         rows of y
//   backward data    dx[n][c]     = sum_j full correlation of dy[n][c*k+j] with the flipped
//                                   filter (dy zero-stuffed along the row by the stride,
//                                   rows chosen by the stride), times act'(x)   rows of dx
//   backward weights dw[c*k+j][kh][kw] = sum over n, in order, of the plane dot products
//                                   dy[n][c*k+j] . (x-plane shifted by the tap); db the sums of dy
// With Cg channels a group (1: depthwise), an output plane sums Cg (forward) or Fg (backward
// data) plane correlations, added in order into the plane while it is in cache.
// Depthwise groups with stride 1, output rows as wide as the source rows (3x3 pad 1, 5x5 pad
// 2, ...) and rows narrower than kDwFlatMaxWidth take "flat" planes instead (DwFlat): the
// source plane copied whole between zero margins, read as one run of floats (vectors cross
// the row ends, the taps at flat offsets, the lanes whose tap column falls outside the row
// masked to zero): no per-row set-up, no idle lanes at the row ends (a 7x7 plane: 7 vectors,
// not 7 rows of 7 lanes each).
// Small planes of depthwise layers with one filter a channel (k = 1) take "channels on lanes"
// (DwLanes*, DwPlan::lanes) instead: 8 channels at a time, their planes transposed into a
// channel-interleaved, zero-padded tile (tile[(r * Q + q) * 8 + lane]), so that every tap of
// every output pixel is one vector FMA with the 8 channels' weights of that tap (transposed
// per channel group into [tap][8]): no masks, no per-row or per-plane set-up. The 8 outputs
// of a pixel go to an interleaved output tile, transposed back to NCHW planes. Work items:
// (group of 8 channels, image), groups major (backward weights: groups, images summed in
// order); the last group's lanes past C hold zeros. Channel multipliers k > 1 and backward
// data with a stride > 1 keep the per-plane path.
// Under AVX-512, 3x3 "same" depthwise planes 7, 14, 28, 56 or 112 wide take "masked planes"
// ahead of all of these (DwMasked, DwMaskedDots, DwPlan::masked): each source plane read in
// place, every tap one valignd of two of its vectors and a merge-masked FMA (see DwMasked).
// Backward data of 3x3 depthwise layers at stride 2 with one row and column of padding takes
// "phases" (DwStride2Data, every ISA): each dx pixel sums only the taps of its row's and
// column's parity, a quarter of the zero-stuffed correlation's multiply-adds.
// Work items are (image, group) (backward weights: groups, images summed in order for each
// group, chunks of groups read image by image), dealt in contiguous ranges to the threads:
// every output has one writer, no atomics, and the result does not depend on the thread
// count at all.
#pragma once

#include <cstdint>
#include <span>

#include "common/isa.hpp"
#include "conv/plan.hpp"
#include "im2gemm/common.hpp"
#include "im2gemm/conv2d.hpp"

namespace im2gemm::detail {

using i64 = std::int64_t;

/// One output plane of the direct kernels (forward, and backward data on the prepared dy):
///   out[oh * ld_out + i] = (accumulate ? out[oh * ld_out + i] : init)
///     + sum over kh < KH, kw < KW of w[kh * KW + kw] * src[(oh * SH + kh * DH) * ld + off[kw] + i]
/// for oh < OH, i < OW. The source rows must be readable up to off[kw] + round_up(OW, 16)
/// (the prepared planes' margin); out is written at i < OW only.
struct DwPlane {
  float* out;
  i64 ld_out, OH, OW;
  const float* src;
  i64 ld, SH, DH;
  const float* w;
  int KH, KW;
  const i64* off;
  float init;
  bool accumulate;
  /// Non-temporal stores where a full vector is 16-byte aligned: the caller fences (sfence)
  /// before the output is read by another thread.
  bool stream = false;
  /// The output stored as sum > 0 ? sum : 0 (the relu activation fused into the store, NaN
  /// giving 0 as in activation_forward). Only on the last accumulation into a plane.
  bool relu = false;
};

/// Backward weights of one plane: vacc[16 * (kh * KW + kw) + lane] += the lane's share of the
/// sum over oh < OH, ow < OW of dy[oh * OW + ow] * src[(oh * SH + kh * DH) * ld + off[kw] + ow]
/// (src: the prepared x plane, padding rows included), and vacc[16 * KH * KW + lane] the
/// lane's share of the sum of dy. Lanes are summed (in lane order) once all images are in:
/// per-lane float sums in a fixed order, independent of the thread count.
struct DwDots {
  const float* dy;
  const float* src;
  i64 OH, OW, ld, SH, DH;
  int KH, KW;
  const i64* off;
  float* vacc;  ///< (KH * KW + 1) slots of 16 floats
};

/// One output plane of the flat kernels (stride 1, output rows as wide as the source rows,
/// W): the planes are runs of floats, output i at row i / W, column i % W, and tap (kh, kw)
/// reads the source at the flat offset row_off[kh] + col[kw], masked by the column:
///   out[i] = (accumulate ? out[i] : init) + sum over kh < KH, kw < KW of w[kh * KW + kw] *
///            (0 <= i % W + col[kw] < W ? src[i + row_off[kh] + col[kw]] : 0)
/// for i < n. The masked taps multiply a zero, as the padding does. src must be readable over
/// [i + row_off[kh] + col[kw]] for every tap and every i < round_up(n, 16) (zero margins
/// around the prepared plane); out is written at i < n only.
struct DwFlat {
  float* out;
  i64 n;
  const float* src;
  i64 W;
  const float* w;
  int KH, KW;
  const i64* row_off;
  const i64* col;
  float init;
  bool accumulate;
  bool stream = false;  ///< as DwPlane::stream
  bool relu = false;    ///< as DwPlane::relu
};

/// Backward weights of one flat plane: vacc[16 * (kh * KW + kw) + lane] += the lane's share of
/// the sum over i < n of dy[i] * (the masked source of DwFlat at tap (kh, kw)), and
/// vacc[16 * KH * KW + lane] the lane's share of the sum of dy (lanes: as DwDots).
struct DwFlatDots {
  const float* dy;
  i64 n;
  const float* src;
  i64 W;
  int KH, KW;
  const i64* row_off;
  const i64* col;
  float* vacc;  ///< (KH * KW + 1) slots of 16 floats
};

/// Lanes of the channel-interleaved tiles (DwLanes*): channels a group, floats a tile pixel.
inline constexpr int kDwLanes = 8;

/// Planes into a tile: tile[((p / W) * Q + p % W) * 8 + l] = l < nch ? src[l * stride + p] : 0
/// for p < H * W, l < 8 (tile: at the plane's first pixel; nothing else written).
struct DwLanesIn {
  float* tile;
  i64 Q;
  const float* src;
  i64 stride, H, W;
  int nch;
};

/// A tile back to planes: dst[l * stride + p] = tile[p * 8 + l] for p < n, l < nch (tile
/// readable up to round_up(n, 8) pixels).
struct DwLanesOut {
  float* dst;
  i64 stride, n;
  const float* tile;
  int nch;
};

/// Forward (and backward data on the dy tile with the flipped filter) over a tile, overwriting:
///   out[(oh * OW + ow) * 8 + l] = act(init[l] + sum over kh < KH, kw < KW, in that order, of
///     w[(kh * KW + kw) * 8 + l] * tile[((oh * SH + kh * DH) * Q + ow * SW + kw * DW) * 8 + l])
/// (act: relu if set, else none).
struct DwLanesConv {
  float* out;
  i64 OH, OW;
  const float* tile;
  i64 Q, SH, SW, DH, DW;
  const float* w;  ///< [tap][8]
  int KH, KW;
  const float* init;  ///< 8 floats
  bool relu;
};

/// Backward weights over a tile, accumulating, pixels in order (oh, then ow) for every lane:
///   acc[t * 8 + l] += dy[p * 8 + l] * tile[(tap t's position of pixel p, as DwLanesConv) * 8 + l]
///   acc[KH * KW * 8 + l] += dy[p * 8 + l]
struct DwLanesDots {
  const float* dy;  ///< OH * OW pixels of 8
  i64 OH, OW;
  const float* tile;
  i64 Q, SH, SW, DH, DW;
  int KH, KW;
  float* acc;  ///< (KH * KW + 1) x 8 floats
};

/// Masked planes (DwMasked; AVX-512): depthwise 3x3, stride 1, one row and column of padding,
/// dilation 1, planes W wide (W one of kDwMaskedWidths), so that source and output planes have
/// the same n = H * W floats and output pixel i reads tap t of the source plane in place at
/// i + sign * ((t / 3 - 1) W + t % 3 - 1) (sign +1 forward, -1 backward data): no copy, no
/// transpose. Taps above the first row or below the last read nothing; the column taps
/// (t % 3 = kw) are limited by a table of column masks shared by every plane of the call:
///   bit l of colmask[v * 3 + kw] set <=> pixel i = 16 v + l < n, and column
///   i % W + sign * (kw - 1) lies in [0, W)
/// (kw = 1: the pixels of the plane). Forward (J = 1) and backward data (J = k filters a
/// channel) over output planes [o0, o1):
///   out[o * n + i] = act(init + sum over j < J, then the taps that read a pixel, of
///     w[f * 9 + t] * src[s * n + i + offset of tap t])
/// with s = (o * J + j) / sdiv, f = (o % fmod) * J + j, init = bias ? bias[f] : 0 (J = 1 when
/// bias is set), act: relu if set, else none. Nothing outside the planes is read.
struct DwMasked {
  float* out;
  const float* src;
  i64 n, o0, o1, J, sdiv, fmod;
  const float* w;
  const float* bias;
  int W, sign;
  const std::uint16_t* colmask;
  bool relu;
};

/// Backward weights over masked planes (as DwMasked, forward taps and column masks), filters
/// [f0, f1): lane l < 16 of tap t sums, over images n' < N in order and then the plane's
/// vectors in order, over the pixels i (i % 16 == l) whose tap t reads a pixel,
/// dy[(n' * F + f) * n + i] * x[(n' * C + f / k) * n + i + offset of tap t] (fused
/// multiply-adds); dw[f * 9 + t] = the 16 lane sums added pairwise (halves, then quarters,
/// ...). db (if set): db[f] the same over dy alone. Whole 7 x 7 planes (n = 49): pixel 48's
/// products (and dy values) summed over the images apart, added to those sums last.
struct DwMaskedDots {
  float* dw;
  float* db;
  const float* dy;
  const float* x;
  i64 n, f0, f1, N, F, C, k;
  int W;
  const std::uint16_t* colmask;
};

/// Plane widths of the masked kernels (MobileNet's), and their most pixels a plane (the
/// column-mask table, 3 x 2 bytes a vector, on the caller's stack).
inline constexpr i64 kDwMaskedWidths[] = {7, 14, 28, 56, 112};
inline constexpr i64 kDwMaskedMaxPixels = 112 * 112;

/// Stride-2 backward data by phases (DwStride2Data; every ISA): depthwise 3x3, stride 2, one
/// row and column of padding, dilation 1, one filter a channel. A dx pixel reads dy only at
/// the taps of its row's and column's parity (even r: kh = 1; odd r: kh = 0 at dy row
/// (r + 1) / 2 if it is < OH, kh = 2 at row (r - 1) / 2; columns alike), a quarter of the
/// multiply-adds of the zero-stuffed stride-1 correlation. Planes [p0, p1) of the N * C:
///   dx[p H W + r W + c] = the sum over those taps of w[(p % C) 9 + 3 kh + kw] *
///     dy[p OH OW + (r + 1 - kh) / 2 * OW + (c + 1 - kw) / 2]
/// (dy read in place, no scratch); stream: non-temporal stores of whole 64-byte lines (the
/// caller fences).
struct DwStride2Data {
  float* dx;
  const float* dy;
  const float* w;
  i64 H, W, OH, OW, C, p0, p1;
  bool stream;
};

using DwMaskedFn = void (*)(const DwMasked&);
using DwMaskedDotsFn = void (*)(const DwMaskedDots&);
using DwStride2DataFn = void (*)(const DwStride2Data&);

using DwLanesInFn = void (*)(const DwLanesIn&);
using DwLanesOutFn = void (*)(const DwLanesOut&);
using DwLanesConvFn = void (*)(const DwLanesConv&);
using DwLanesDotsFn = void (*)(const DwLanesDots&);

using DwPlaneFn = void (*)(const DwPlane&);
using DwDotsFn = void (*)(const DwDots&);
using DwFlatFn = void (*)(const DwFlat&);
using DwFlatDotsFn = void (*)(const DwFlatDots&);
/// d[q] = src[q * stride] for q < n, the data of one prepared row (or stride phase of a row);
/// may also write zeros to d[n, round_up(n, 16)) (the prepared planes' padding is zero, and
/// later rows and phases are written after: the spill is harmless there).
using DwCopyFn = void (*)(float* d, const float* src, i64 n, i64 stride);

struct DwKernels {
  DwPlaneFn plane;
  DwDotsFn dots;
  DwCopyFn copy;
  DwFlatFn flat;
  DwFlatDotsFn flat_dots;
  DwLanesInFn lanes_in;
  DwLanesOutFn lanes_out;
  DwLanesConvFn lanes_conv;
  DwLanesDotsFn lanes_dots;
  DwMaskedFn masked;           ///< nullptr where the ISA has none (AVX2, scalar)
  DwMaskedDotsFn masked_dots;  ///< likewise
  DwStride2DataFn stride2_data;
  const char* isa;
};

/// The kernels of one ISA (scalar: portable C++), clamped to the CPU.
const DwKernels& dw_kernels(Isa isa);
const DwKernels& dw_kernels_scalar();
const DwKernels& dw_kernels_avx2();
const DwKernels& dw_kernels_avx512();
/// The AVX2 lanes kernels (8 lanes), which the AVX-512 table reuses.
void dw_lanes_in_avx2(const DwLanesIn& a);
void dw_lanes_out_avx2(const DwLanesOut& a);
void dw_lanes_conv_avx2(const DwLanesConv& a);
void dw_lanes_dots_avx2(const DwLanesDots& a);

/// The reference twins of the kernels: the same contract, one scalar multiply-add at a time
/// in the obvious order (the tests compare every ISA's kernels against them; dots: in double,
/// everything into lane 0).
void dw_plane_twin(const DwPlane& a);
void dw_dots_twin(const DwDots& a);
void dw_copy_twin(float* d, const float* src, i64 n, i64 stride);
void dw_flat_twin(const DwFlat& a);
void dw_flat_dots_twin(const DwFlatDots& a);
// The lanes kernels' twins are the scalar ISA's (dw_kernels_scalar().lanes_*): the same
// algorithm over 8 floats in arrays, the same order of operations in every lane.

/// Outputs from this size on are written with non-temporal stores (larger than the 8 MiB that
/// the suite's layers in cache fill; mbv1_dw1's 12.8 MB y, mbv1_dw2_s2's 25.7 MB dx).
inline constexpr i64 kDwStreamMinBytes = i64{8} << 20;

/// Backward weights reads the planes of about this many (filter, channel) pairs image by image
/// (adjacent in memory, unlike one channel's planes of successive images), their per-lane
/// sums in scratch (64 x 10 slots x 64 bytes for 3x3: 40 KiB).
inline constexpr i64 kDwWeightsChunkFilters = 64;

/// Flat planes (DwFlat) for stride 1 and rows as wide in the output as in the source, up to
/// these widths (exclusive): narrower rows leave most lanes of their last vector idle in the
/// row kernels, and their per-row set-up is a large part of a small plane. Backward weights
/// only for the narrowest rows: its flat kernel masks nine loads a vector, the row kernel none
/// (measured on the grouped suite: mbv1_dw_7 and _28, mbv2_dw_b1). Depthwise k = 1 planes
/// that fit a lanes tile take channels on lanes instead (kDwLanesMaxWidth).
inline constexpr i64 kDwFlatMaxWidth = 64;
inline constexpr i64 kDwFlatMaxWidthWeights = 16;

/// Channels on lanes (DwLanes*) for depthwise k = 1 planes narrower than this (stride 1 for
/// backward data; the tile also bounded in pixels, depthwise.cpp): measured ahead of the flat
/// and row paths on the grouped suite's 7x7, 28x28 and 56x56 layers (mbv1_dw_7, mbv1_dw_28,
/// mbv2_dw_b1), all three passes.
inline constexpr i64 kDwLanesMaxWidth = 64;

/// Widest stride the prepared planes split into phases (wider: the GEMM path, conv_path).
inline constexpr i64 kDwMaxStrideWidth = 16;

/// groups == in_channels (one input channel per group, any number k of filters per group).
bool is_depthwise(const Conv2dShape& s);
/// Narrow groups that the direct kernels serve: groups > 1, at most these many channels and
/// filters a group (ResNeXt's 4 and 4 measured ahead of the GEMM lowering: see conv_path).
inline constexpr i64 kDirectMaxGroupChannels = 8;
inline constexpr i64 kDirectMaxGroupFilters = 8;
bool is_narrow_grouped(const Conv2dShape& s);

/// How a depthwise pass runs: a pure function of the (valid) shape, the thread count and the ISA.
struct DwPlan {
  int threads = 1;
  bool run_inline = false;  ///< one thread, tiny: no OpenMP region
  i64 k = 1;                ///< filters a group (depthwise: the channel multiplier)
  i64 items = 1;            ///< forward / backward data: N * groups; backward weights: groups
  i64 planes = 1;           ///< prepared planes of an item: Cg (backward data: Fg)
  i64 chunk = 1;            ///< backward weights: groups whose planes are read image by image
  i64 vec_margin = 16;      ///< floats of margin on the right of every prepared row
  /// Prepared source plane: rows x (phases * row_q) floats, row stride ld.
  i64 rows = 0, phases = 1, row_q = 0, ld = 0;
  i64 scratch_floats = 0;  ///< per thread: prepared plane + flipped taps / sums + offsets
  /// Flat planes (DwFlat; stride 1 and rows as wide in the output as in the source): each
  /// prepared plane is the source plane copied whole, flat_lead zeros before it and zeros
  /// after it up to psize floats.
  bool flat = false;
  i64 flat_lead = 0;
  i64 psize = 0;  ///< floats of one prepared plane (rows * ld, or the flat plane)
  /// Forward and backward data with one plane correlation an output plane (depthwise, k = 1
  /// for backward data) and an output above kDwStreamMinBytes: non-temporal stores (a write
  /// without its read for ownership; the output is not read back soon).
  bool stream = false;
  /// Channels on lanes (DwLanes*): items are (group of 8 channels, image), groups major
  /// (backward weights: groups). The source plane (x; backward data: dy) sits in a zeroed
  /// tile_rows x tile_q tile at (tile_r0, tile_c0); output pixel (0, 0)'s first tap reads tile
  /// pixel (read_r0, read_c0).
  bool lanes = false;
  i64 cgroups = 0;
  i64 tile_rows = 0, tile_q = 0, tile_r0 = 0, tile_c0 = 0, read_r0 = 0, read_c0 = 0;
  /// Masked planes (DwMasked, DwMaskedDots; ISAs that have them): planes read in place.
  /// Items: output planes in memory order (backward weights: filters).
  bool masked = false;
  /// Stride-2 backward data by phases (DwStride2Data): dx planes in memory order, dy read
  /// in place.
  bool stride2_data = false;
  std::size_t scratch_bytes() const { return static_cast<std::size_t>(scratch_floats) * 4 + 64; }
};
DwPlan plan_depthwise(const Conv2dShape& s, int pass /*0 fwd, 1 bwd data, 2 bwd weights*/,
                      int threads, Isa isa, const PlanTuning& tuning = {});

/// The passes (shape valid, spans checked; nothing else is checked here). Same contract as
/// the public functions. Backward data requires finite weights (the zero-stuffed dy would turn
/// an infinite weight into NaN where the reference adds nothing): the caller checks.
void depthwise_forward(Isa isa, int threads, const PlanTuning& tuning, const Conv2dShape& s,
                       const float* x, const float* w, const float* bias, float* y, Activation act);
void depthwise_backward_data(Isa isa, int threads, const PlanTuning& tuning, const Conv2dShape& s,
                             const float* dy, const float* w, float* dx, Activation act,
                             const float* x);
void depthwise_backward_weights(Isa isa, int threads, const PlanTuning& tuning,
                                const Conv2dShape& s, const float* x, const float* dy, float* dw,
                                float* db);

}  // namespace im2gemm::detail
