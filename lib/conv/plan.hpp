// Internal: the one place that decides how a convolution is blocked and threaded.
// plan_conv() reads the shape and the thread count and fills a ConvPlan; the passes in
// conv2d.cpp only read it. Every decision is a named constant below, and the plan also says
// how much per-thread scratch the pass needs (the public conv2d_scratch_bytes reports it).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "conv/openblas_tuning.hpp"
#include "im2gemm/conv2d.hpp"

namespace im2gemm::detail {

/// ceil(a / b) and a rounded up to a multiple of b (a >= 0, b > 0).
constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
constexpr std::int64_t round_up(std::int64_t a, std::int64_t b) { return ceil_div(a, b) * b; }

enum class ConvPass { forward, backward_data, backward_weights };

// Comments give each constant's reason; the measurements behind the values are in README.md,
// "Tuning constants". The constants that follow from OpenBLAS's internals are in
// openblas_tuning.hpp.

/// A column block (plus, for images side by side, the gathered output/dy block) is sized to
/// stay in a core's L2 cache between im2col and sgemm's packing, but has at least
/// kPixelsPerFilter * (filters per group) columns (openblas_tuning.hpp) ...
inline constexpr std::size_t kBlockTargetBytes = std::size_t{1} << 20;
/// ... and is never larger than this, which keeps the per-thread scratch within the bound below.
inline constexpr std::size_t kMaxBlockBytes = std::size_t{6} << 20;
/// Images with fewer pixels than this are put side by side into one column block.
inline constexpr std::int64_t kMinGemmPixels = 448;
/// Per-thread scratch bound the plan keeps on every layer of the suite (asserted by the tests).
inline constexpr std::size_t kMaxScratchBytesPerThread = std::size_t{8} << 20;
/// Each thread gets at least this many multiply-accumulates, else fewer threads run (a fork
/// and join of the team costs about as much as this much work).
inline constexpr std::int64_t kMinMacsPerThread = std::int64_t{1} << 16;
/// A one-thread plan of at most this many multiply-accumulates runs on the calling thread with
/// no OpenMP region: even a region of one costs a team allocation and a futex round trip,
/// more than the arithmetic of such a problem.
/// Every sgemm of such a problem has M*N*K <= this, a quarter of the 262,144 (65,536 times
/// GEMM_MULTITHREAD_THRESHOLD 4) below which OpenBLAS 0.3.21 keeps an sgemm on the calling
/// thread outside a region, whatever its kernel set, so no second pool starts; the meson test
/// conv_inline_single_thread checks it.
inline constexpr std::int64_t kMaxMacsInline = std::int64_t{1} << 16;
/// Narrowest column block worth an sgemm call, in pixels.
inline constexpr std::int64_t kMinBlockPixels = 16;
/// Column blocks wider than this are rounded up to a multiple of kPixelAlign so that every row
/// of the column block starts on a 64-byte boundary.
inline constexpr std::int64_t kPixelAlign = 16;
/// Below this many pixels per split part, batch-1 work is split over filters or channels
/// instead of pixels.
inline constexpr std::int64_t kMinSplitPixels = 64;
/// A forward filter block keeps at least this many filters (the sgemm M dimension).
inline constexpr std::int64_t kMinFiltersPerBlock = 16;
/// Work items are balanced over the threads if their count is a multiple of the thread count
/// or at least this many per thread.
inline constexpr std::int64_t kBalancedItemsPerThread = 4;
/// The busiest thread may have at most this much more work than the mean; where a plan's
/// split does not meet it, fewer threads run if that finishes no later (plan_conv, plan_packed).
inline constexpr double kMaxImbalance = 1.10;
/// plan_conv checks the balance of plans with fewer items than this per thread.
inline constexpr std::int64_t kCheckedItemsPerThread = 16;
/// Backward weights splits images over threads (per-thread partial dW, reduced in a fixed
/// order) only while one partial dW is at most this large; otherwise it splits channels of dW.
inline constexpr std::size_t kMaxWeightPartialBytes = std::size_t{2} << 20;

/// The automatic backend choice (conv_backend) gives a pass to the packed engine only where
/// it measured ahead of the openblas path. Forward: output rows of at least
/// 1/kMinPackedRowPanelFraction of a micro-panel (shorter rows cut the im2col packing into
/// short segments: behind on AVX-512's 48-lane panels, ahead on AVX2's 16), and 1x1 stride-1
/// layers only on panels of at most kMaxNarrowPanelLanes lanes. Backward data: rows of at
/// least kMinPackedRowPixels input pixels, never 1x1 stride-1 unpadded. Both: a GEMM K of at
/// least kMinPackedK (below it the set-up and store of a tile weigh), and for backward data
/// at least kMinPackedBackwardDataChannels input channels per group (its M: fewer fill too
/// few rows of a tile).
inline constexpr std::int64_t kMinPackedRowPanelFraction = 3;
/// Forward on the packed engine up to this horizontal stride, and above stride 1 only where
/// the plan packs from column phases (PackedPlan::phases: one image per block, the split
/// image within its bound, an ISA with a phase packer): packing with strided loads measured
/// behind the openblas path (the strided loads cost about half the micro-kernel's time),
/// packing from the phases ahead.
inline constexpr std::int64_t kMaxPackedForwardStride = 4;
/// ... and where each float of the split image feeds at least this many multiply-adds,
/// F/groups*KH*KW / (SH*SW): the split's cost is over the input, the GEMM's over this
/// factor.
inline constexpr std::int64_t kMinPhaseMacsPerInput = 256;
inline constexpr std::int64_t kMaxNarrowPanelLanes = 16;
inline constexpr std::int64_t kMinPackedRowPixels = 16;
inline constexpr std::int64_t kMinPackedK = 64;
/// Backward weights on the packed engine without the fused pack (sgemm_nt on im2col blocks:
/// strided and 1x1 shapes) needs output planes of at least this many pixels: ahead of the
/// openblas path on large planes, level or behind on 8x8 and 7x7 ones.
inline constexpr std::int64_t kMinPackedWeightsPixels = 256;
inline constexpr std::int64_t kMinPackedBackwardDataChannels = 16;
/// Backward weights on panels wider than kMaxNarrowPanelLanes, with the fused pack or not:
/// the GEMM's lane dimension must fill at least num/den of the 16-lane vectors its tiles
/// compute (conv_backend).
struct Fraction {
  std::int64_t num, den;
};
inline constexpr Fraction kMinWidePanelFill{7, 8};
/// Backward data as a transposed convolution computes H*W/(OH*OW) times the GEMM's
/// multiply-adds (a full correlation over dy's zero border); above this factor the packed
/// backend runs col2im with the engine's GEMMs instead (lenet_conv2, 12x12 -> 8x8, is 2.25;
/// 'same'-padded layers are 1).
inline constexpr std::int64_t kMaxPackedBackwardDataInflation = 2;

/// [begin, end) of images, image runs, pixels, groups, filters or channels.
struct Part {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
};

/// [begin, end) of part i when `total` is cut into `parts` balanced runs.
inline std::int64_t part_begin(std::int64_t i, std::int64_t parts, std::int64_t total) {
  return i * (total / parts) + (i < total % parts ? i : total % parts);
}
inline Part part(std::int64_t i, std::int64_t parts, std::int64_t total) {
  return Part{part_begin(i, parts, total), part_begin(i + 1, parts, total)};
}

/// One work item of a ConvPlan: the unit the pass deals to its threads, decoded in one place
/// (ConvPlan::item) for the passes, the balance model and the tests. Items are dealt in
/// contiguous ranges (ConvPlan::thread_items), consecutive items sharing what they can:
///   forward          one image run x group x pixel block x filter block (the innermost index,
///                    so a thread's consecutive filter blocks reuse one column block);
///   backward data    one image run x group x channel block, all pixels; the item owns its
///                    dx planes;
///   backward weights group x channel block over every image run (the item owns those dW
///                    columns), or, with weight_partials, one image run (one pixel part of
///                    it when pixel_parts > 1) over every group and channel, added into its
///                    thread's partial dW.
struct WorkItem {
  Part runs;    ///< image runs, [r0, r1)
  Part images;  ///< their images
  Part groups;
  std::int64_t pixel_block = 0;
  /// Of each image: the pixel block's (forward), the pixel part's (backward weights with
  /// partials), all of them (otherwise).
  Part pixels;
  std::int64_t block = 0;  ///< the filter block (forward) or channel block (backward)
  /// Equal for items that share one column block (forward: the filter blocks of one image
  /// run, group and pixel block); the item's index in the other passes.
  std::int64_t columns_key = 0;
  Part filters;   ///< of a group: the filter block's (forward), all (backward)
  Part channels;  ///< of a group: the channel block's (backward), all (forward)
};

struct ConvPlan {
  ConvPass pass = ConvPass::forward;
  int threads = 1;  ///< threads the pass runs on (<= the requested count)
  /// One thread and at most kMaxMacsInline: run on the calling thread, no OpenMP region.
  bool run_inline = false;
  std::int64_t groups = 1, Cg = 1, Fg = 1, khw = 1, K = 1, P = 1, N = 1;
  std::int64_t OW = 1;  ///< output width (P = output height * OW)
  /// 1x1 kernel, stride 1, no padding, dilation 1: a plane of x is already the column matrix.
  bool pointwise = false;
  /// The batch is cut into image_runs runs (image_run) of at most images_per_block images; a
  /// run of more than one image is lowered side by side into one column block (only when
  /// pixel_blocks == 1, i.e. one image is smaller than a block).
  std::int64_t image_runs = 1;
  std::int64_t images_per_block = 1;
  /// One image's pixels are cut into blocks of block_pixels (the last one shorter).
  std::int64_t block_pixels = 1;
  std::int64_t pixel_blocks = 1;
  /// Forward: filters of a group split into filter_blocks parts (batch-1 small images).
  std::int64_t filter_blocks = 1;
  /// Forward, one image per block: the group's input channels split into k_chunks parts, each
  /// lowered and multiplied in turn into the same output block (1: the whole K at once).
  std::int64_t k_chunks = 1;
  /// Backward passes: input channels of a group split into channel_blocks parts; a part owns
  /// its dx channels (backward data) or its dW columns (backward weights): no write races.
  std::int64_t channel_blocks = 1;
  /// Backward weights: images split over threads, each thread a partial dW, reduced in a
  /// fixed order (thread 0 + 1 + ...). Otherwise channel_blocks parts of dW, no reduction.
  bool weight_partials = false;
  /// Backward weights with partials and fewer images than threads: each image's pixels cut
  /// into this many parts (pixel_part_range), an item each, so that the threads share the
  /// images' pixels instead of splitting dW's channels (then every thread reads all of dy).
  std::int64_t pixel_parts = 1;
  /// Backward weights: accumulate dW^T (rows x filters) in scratch and transpose at the end.
  bool weights_transposed = false;
  /// Scratch of one thread, in floats: column block, gathered block, partial dW (or the dW^T
  /// slice accumulated by a channel block when weights_transposed).
  std::int64_t col_floats = 0, tmp_floats = 0, partial_floats = 0;
  /// Backward weights on the packed engine: its transposing B-packing buffer (gemm::sgemm_nt).
  std::int64_t pack_floats = 0;

  /// True when this plan never runs im2col/col2im: pointwise shape, one image per block.
  bool skips_im2col() const { return pointwise && images_per_block == 1; }
  /// Work items the pass deals to its threads, item `it` of them, and the items of thread t
  /// of nthr (a contiguous range).
  std::int64_t items() const;
  WorkItem item(std::int64_t it) const;
  Part thread_items(std::int64_t t, std::int64_t nthr) const { return part(t, nthr, items()); }
  /// The images of image run r < image_runs; the pixels of pixel block b < pixel_blocks.
  Part image_run(std::int64_t r) const;
  Part pixel_block_range(std::int64_t b) const {
    return Part{std::min(P, b * block_pixels), std::min(P, (b + 1) * block_pixels)};
  }
  /// The pixels of pixel part i < pixel_parts (whole output rows).
  Part pixel_part_range(std::int64_t i) const;
  /// Work of the busiest thread over the mean (1: perfectly balanced), each thread's items
  /// counted as the passes deal them (backward weights' reduction not counted).
  double imbalance() const;
  /// Bytes of scratch one thread needs (each part rounded up to 64 bytes).
  std::size_t scratch_bytes() const;
};

/// What a planner is told besides the shape, the ISA and the threads: by default the measured
/// constants above. Passed by value with each call (ConvOptions::tuning), never set for the
/// process: tests shrink the column blocks, split K into small chunks or give small shapes
/// every thread, to reach on small shapes the blockings that only large ones get by default.
struct PlanTuning {
  /// Column blocks of about this many bytes, without the kPixelsPerFilter / kMaxBlockBytes
  /// limits and with images side by side whatever their size (0: kBlockTargetBytes with them).
  std::size_t block_target_bytes = 0;
  /// Forward K split into chunks of about this many rows on images of any size (0:
  /// kKChunkRows, on images of at least kMinGemmPixels).
  std::int64_t k_chunk_rows = 0;
  /// Multiply-adds each thread must get before another thread is woken (>= 1).
  std::int64_t min_macs_per_thread = kMinMacsPerThread;

  bool operator==(const PlanTuning&) const = default;
};

/// The threads a problem of `macs` multiply-adds runs on: at most `threads`, at least one, and
/// at least tuning.min_macs_per_thread multiply-adds each.
inline int plan_threads(std::int64_t macs, int threads, const PlanTuning& tuning) {
  const std::int64_t per = std::max<std::int64_t>(tuning.min_macs_per_thread, 1);
  return static_cast<int>(
      std::max<std::int64_t>(1, std::min<std::int64_t>(std::max(threads, 1), macs / per)));
}

/// The exact condition of the path without im2col: 1x1 kernel, stride 1, pad 0, dilation 1.
bool is_conv1x1_s1_p0_d1(const Conv2dShape& s);

/// s must be valid (validate() accepted it); threads >= 1.
ConvPlan plan_conv(const Conv2dShape& s, ConvPass pass, int threads, const PlanTuning& tuning = {});

}  // namespace im2gemm::detail
