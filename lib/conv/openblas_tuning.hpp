// Internal: the constants of plan_conv that follow from OpenBLAS 0.3.21's internals (how its
// sgemm packs, blocks and orients its work), kept apart from the engine's own constants in
// plan.hpp so that a change of BLAS shows what to re-measure. Comments give the reasons; the
// measurements behind the values are in README.md, "Tuning constants".
#pragma once

#include <cstdint>

namespace im2gemm::detail {

/// A column block has at least kPixelsPerFilter * (filters per group) columns, more than the
/// L2 target may give: every sgemm call re-packs the weights (backward weights: re-reads dW),
/// which must be amortised over enough pixels.
inline constexpr std::int64_t kPixelsPerFilter = 8;
/// Forward with a long GEMM inner dimension K splits it by input channels into column chunks
/// of about this many rows: the K block of OpenBLAS 0.3.21's SkylakeX sgemm (GEMM_Q = 448),
/// so that the chunk sgemm calls, accumulating into y, update it no more often than one sgemm
/// would. The column block then covers kPixelsPerFilterChunked * (filters per group) pixels:
/// the weights re-packed half as often, in the same scratch.
inline constexpr std::int64_t kKChunkRows = 448;
inline constexpr std::int64_t kPixelsPerFilterChunked = 16;
/// Backward weights with at most this many filters per group accumulates dW^T = col * dy^T
/// (then transposes it into dW): OpenBLAS runs that orientation faster for narrow dW, and
/// both equally from 256 filters on.
inline constexpr std::int64_t kMaxFiltersTransposedWeights = 128;

}  // namespace im2gemm::detail
