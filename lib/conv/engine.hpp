// Internal: the per-call engine choice of the convolution passes. The public functions read
// the environment (IM2GEMM_GEMM, IM2GEMM_ISA, set_num_threads) once into a ConvOptions; the
// tests and benchmarks pass their own, one call at a time, with no process-wide switches.
#pragma once

#include <span>
#include <string>

#include "common/isa.hpp"
#include "conv/plan.hpp"
#include "im2gemm/conv2d.hpp"

namespace im2gemm::detail {

struct ConvOptions {
  GemmBackend backend = GemmBackend::automatic;
  Isa isa = Isa::avx512;  ///< cap (clamped to the CPU)
  int threads = 1;        ///< >= 1
  /// Tests: the direct kernels wherever they apply (conv_path), over the measured preference
  /// that gives narrow groups' backward data to the GEMM path on AVX-512.
  bool prefer_direct = false;
  /// The planners' tuning (plan.hpp): the measured constants unless a test shrinks blocks or
  /// gives small shapes every thread.
  PlanTuning tuning{};
};

/// The options of a public call: the environment's backend and ISA, num_threads().
ConvOptions default_conv_options();

/// Which backend a pass of this (valid) shape runs under the options: packed or openblas
/// (never automatic). The packed engine serves forward, backward data (as a transposed
/// convolution where backward_data_transposed holds, else col2im with its GEMMs on the engine)
/// and the GEMMs of backward weights.
/// Automatic: packed where it measured ahead, on an AVX2 or AVX-512 CPU (openblas elsewhere);
/// plan.hpp gives the measurements. Forward: output rows of at least 1/3 of a micro-panel,
/// horizontal stride 1 (or up to 4 where the plan packs from column phases and
/// F/groups*KH*KW/(SH*SW) >= kMinPhaseMacsPerInput), K >= kMinPackedK,
/// 1x1 stride-1 unpadded only on 16-lane panels.
/// Backward data: kMinPackedBackwardDataChannels channels a group, F/groups*KH*KW >=
/// kMinPackedK, and where backward_data_transposed holds input rows of kMinPackedRowPixels and
/// not 1x1 stride-1 unpadded, elsewhere (col2im) 16-lane panels. Backward weights:
/// weights_fused_pack, or C/groups*KH*KW >= kMinPackedK with output planes of at least
/// kMinPackedWeightsPixels pixels (on wider panels also a lane dimension that fills the
/// 16-lane vectors of their tiles to kMinWidePanelFill).
GemmBackend conv_backend(const Conv2dShape& s, ConvPass pass, const ConvOptions& o);

/// True when backward data on the packed engine runs as the forward machinery on dy with the
/// filters transposed and flipped (stride 1, input plane at most kMaxPackedBackwardDataInflation
/// times the output's); else, and for non-finite weights, it runs the col2im path with its
/// GEMMs on the engine (gemm::sgemm_nn).
bool backward_data_transposed(const Conv2dShape& s);

/// True when backward weights on the packed engine (configuration of `isa`) packs its B =
/// col^T straight from x (pack_im2col_transposed_avx2, dW = dy * col^T, no column block):
/// AVX2 or AVX-512 configuration, horizontal stride 1, not 1x1 stride-1 unpadded (whose
/// input planes are the column block already).
bool weights_fused_pack(const Conv2dShape& s, Isa isa);
/// The same at horizontal strides 2..kMaxPackedForwardStride on a vector configuration, from
/// column phases: each run's images are split (split_phases) into the column block's room of
/// plan p, so where that room holds them (pack_phases_transposed_avx2).
bool weights_fused_phases(const Conv2dShape& s, const ConvPlan& p, Isa isa);

/// The options the GEMM lowering of a forward pass runs under: o, except on an AVX-512 CPU
/// under the automatic backend, where output rows too short for the 48-lane panels
/// (kMinPackedRowPanelFraction) but on the packed engine under AVX2's rules, in batches of
/// more than one image, run the AVX2 configuration (16-lane panels, sgemm_ukernel_6x16_avx2,
/// its packers): measured ahead on lenet_conv2 and resnet_l4_b8; behind on resnet_l4_b1 (one
/// 49-pixel image, whose last 48-lane tile is one vector wide), which keeps AVX-512.
ConvOptions forward_engine_options(const Conv2dShape& s, const ConvOptions& o);

/// Which kind of code runs a pass: the GEMM lowering (im2col / col2im + a GEMM backend) or a
/// direct kernel named by the shapes it serves.
enum class ConvPath { gemm, depthwise };

/// The path of a pass of this (valid) shape under the options (`w`: the weights, needed by
/// backward data only; empty: assume finite). depthwise (the direct kernels, depthwise.hpp):
/// groups == in_channels > 1 or narrow groups (is_narrow_grouped), stride
/// width <= kDwMaxStrideWidth, the
/// automatic backend (a forced backend runs its GEMMs), a prepared plane within
/// kMaxScratchBytesPerThread, and for backward data finite weights (depthwise.hpp); narrow
/// groups' (not depthwise) backward data under the AVX-512 ISA only with o.prefer_direct.
ConvPath conv_path(const Conv2dShape& s, ConvPass pass, const ConvOptions& o,
                   std::span<const float> w = {});

/// The public passes with explicit options and the same contract, for a call that has
/// already passed the public checks (detail::check_conv2d_*): these check nothing.
void conv2d_forward_with(const ConvOptions& o, const Conv2dShape& s, std::span<const float> x,
                         std::span<const float> w, std::span<const float> bias, std::span<float> y,
                         Activation act);
void conv2d_backward_data_with(const ConvOptions& o, const Conv2dShape& s,
                               std::span<const float> dy, std::span<const float> w,
                               std::span<float> dx, Activation input_activation,
                               std::span<const float> x);
void conv2d_backward_weights_with(const ConvOptions& o, const Conv2dShape& s,
                                  std::span<const float> x, std::span<const float> dy,
                                  std::span<float> dw, std::span<float> db);

}  // namespace im2gemm::detail
