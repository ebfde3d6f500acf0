// Internal: convolution on the packed GEMM engine (lib/gemm/) with im2col fused into the B
// packing (lib/conv/pack/). One executor serves
//   forward:             y  = act(W * im2col(x) + bias)
//   backward data (stride 1): dx = W' * im2col(dy) with W' the filters transposed (F <-> C)
//                        and flipped 180 degrees, pad' = (K-1)*dilation - pad, then
//                        dx *= act'(x): the forward machinery, no column buffer, no col2im.
// Tiles are MR filters x NR output pixels, stored straight into the output rows; bias starts
// the accumulators and ReLU is applied in registers before the only store.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/isa.hpp"
#include "conv/pack/im2col_pack.hpp"
#include "conv/plan.hpp"
#include "gemm/gemm.hpp"
#include "im2gemm/conv2d.hpp"

namespace im2gemm::detail {

/// A convolution as the engine computes it (any pads, stride, dilation; groups).
struct PackedConv {
  std::int64_t N = 1, C = 1, H = 1, W = 1, F = 1, G = 1;
  std::int64_t KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PW = 0, DH = 1, DW = 1, OH = 1, OW = 1;
  const float* x = nullptr;                 ///< [N][C][H][W]
  const float* w = nullptr;                 ///< [F][C/G][KH][KW]
  const float* bias = nullptr;              ///< [F] or null
  float* y = nullptr;                       ///< [N][F][OH][OW], overwritten
  Activation act = Activation::identity;    ///< applied to y
  Activation deriv = Activation::identity;  ///< then y *= deriv'(from xd[same index])
  const float* xd = nullptr;
};

/// The forward problem of a shape.
PackedConv packed_forward_problem(const Conv2dShape& s);
/// The stride-1 backward-data problem of a shape (the caller supplies the transformed
/// weights: see transform_weights_for_backward_data).
PackedConv packed_backward_data_problem(const Conv2dShape& s);
/// wt[(g*Cg + c)*Fg*KHW + f*KHW + r] = w[((g*Fg + f)*Cg + c)*KHW + KHW-1-r], for channels
/// [c0, c1) of every group (threads transform disjoint channel ranges).
void transform_weights_for_backward_data(const Conv2dShape& s, const float* w, float* wt,
                                         std::int64_t c0, std::int64_t c1);

/// One work item of a PackedPlan, decoded in one place (PackedPlan::item) for run_packed and
/// the balance model: a block of columns of one group (of one image, unless fold) times an
/// MR-aligned block of the group's filters. Items are dealt to the threads in contiguous
/// ranges; the filter block is the innermost index, so a thread's consecutive items share one
/// packed B block (same `columns_key`).
struct PackedItem {
  std::int64_t group = 0;
  std::int64_t image = 0;  ///< the image of the columns (0 when fold)
  /// Columns [begin, end) of the group's GEMM: image * P + pixel, or (fold) over the images.
  Part cols;
  Part filters;                  ///< of the group
  std::int64_t columns_key = 0;  ///< equal for the items of one column block
};

/// How one call is blocked and threaded (filled by plan_packed, read by run_packed).
struct PackedPlan {
  Isa isa = Isa::scalar;
  int threads = 1;
  bool run_inline = false;
  /// Columns run over images (j = image*P + pixel): P wastes too many lanes of the last
  /// micro-panel of an image, so images are side by side and the tiles go through cbuf.
  bool fold = false;
  std::int64_t cols = 1;              ///< columns per group (fold) or per image
  std::int64_t nc = 1;                ///< columns per block (a multiple of NR)
  std::int64_t col_blocks = 1;        ///< blocks per group (fold) or per image
  std::int64_t filter_blocks = 1;     ///< filters of a group split into this many MR-aligned parts
  std::int64_t kc = 1, k_blocks = 1;  ///< K blocking: the B block holds kc rows
  /// Horizontal stride > 1, one image per block: each thread splits the image it packs into
  /// column phases (phase_floats of its scratch) and packs runs of consecutive floats.
  bool phases = false;
  std::int64_t b_floats = 0, c_floats = 0, phase_floats = 0, segments = 0, range_entries = 0;
  /// Work items: groups x (col_blocks, times images unless fold) x filter_blocks; item `it`;
  /// the items of thread t of nthr.
  std::int64_t items(const PackedConv& pc) const;
  PackedItem item(const PackedConv& pc, std::int64_t it) const;
  Part thread_items(const PackedConv& pc, std::int64_t t, std::int64_t nthr) const {
    return part(t, nthr, items(pc));
  }
  /// Work of the busiest thread over the mean (1: perfectly balanced), items weighed by size.
  double imbalance(const PackedConv& pc) const;
  std::size_t scratch_bytes() const;
};

/// threads >= 1; tuning.min_macs_per_thread as in plan_conv (the packed plans read no other
/// field). The last 8 plans of each thread are kept and returned again for the same problem,
/// ISA, thread count and tuning.
PackedPlan plan_packed(const PackedConv& pc, Isa isa, int threads, const PlanTuning& tuning = {});

/// Runs the plan (throws std::bad_alloc before writing anything if scratch cannot be had).
/// wt_fill: for backward data, a function the threads call first to fill transformed weights
/// (channel ranges split over threads, then a barrier); null for forward.
using WeightFill = void (*)(const void* ctx, std::int64_t t, std::int64_t nthr);
void run_packed(const PackedConv& pc, const PackedPlan& plan, WeightFill fill = nullptr,
                const void* fill_ctx = nullptr);

}  // namespace im2gemm::detail
