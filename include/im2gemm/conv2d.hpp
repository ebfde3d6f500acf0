// im2gemm: 2-D convolution, fp32, NCHW, forward and both backward passes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "im2gemm/common.hpp"

namespace im2gemm {

/// Shape of a 2-D convolution. Plain aggregate; every field is a count or a length.
struct Conv2dShape {
  std::int64_t batch = 1, in_channels = 1, in_height = 1, in_width = 1;
  std::int64_t out_channels = 1, kernel_height = 1, kernel_width = 1;
  std::int64_t stride_height = 1, stride_width = 1;
  std::int64_t pad_height = 0, pad_width = 0;  ///< zeros on both sides
  std::int64_t dilation_height = 1, dilation_width = 1;
  std::int64_t groups = 1;  ///< in_channels and out_channels both divisible by groups

  /// (in_height + 2*pad_height - ((kernel_height-1)*dilation_height+1)) / stride_height + 1.
  /// Meaningful only for a shape that validate() accepts.
  std::int64_t out_height() const;
  std::int64_t out_width() const;

  /// Throws std::invalid_argument naming the field and its value if the shape is not valid:
  /// counts, kernel, stride, dilation, groups >= 1; pads >= 0; strides, pads and dilations
  /// <= kMaxStridePadDilation (2^31 - 1); groups divides in_channels and
  /// out_channels; the dilated kernel fits in the padded input; every tensor's element count
  /// fits in 64 bits (and in memory: at most 2^62 bytes).
  void validate() const;

  std::int64_t x_size() const;  ///< N*C*H*W          (valid shapes only)
  std::int64_t w_size() const;  ///< F*(C/groups)*KH*KW
  std::int64_t y_size() const;  ///< N*F*OH*OW
  /// Multiply-accumulates of one pass: N*F*OH*OW*(C/groups)*KH*KW. FLOPs are twice this.
  std::int64_t macs() const;
};

/// Forward: y = act(conv(x, w) + bias).
/// x [N][C][H][W], w [F][C/groups][KH][KW], bias [F] or empty (no bias).
/// y [N][F][OH][OW] is OVERWRITTEN (never read).
/// Convolution is cross-correlation with zero padding; filter f sees the input channels of its
/// group only. The padding is zeros that multiply, as in PyTorch: an infinite or NaN weight
/// facing the padding makes that output NaN (0 * inf), here and in reference::conv2d_forward;
/// likewise an infinite dy in backward weights (backward data writes no padding cell). Throws std::invalid_argument (y untouched) on a bad shape, a span of the wrong
/// size, an Activation outside the enum, or y overlapping an input.
void conv2d_forward(const Conv2dShape& shape, std::span<const float> x, std::span<const float> w,
                    std::span<const float> bias, std::span<float> y,
                    Activation act = Activation::identity);

/// Backward data ("sensitivity map"): dx = col2im(W^T dy), then, if input_activation is not
/// identity, dx *= input_activation'(x) computed from x (the layer's input, i.e. the previous
/// layer's activated output). dy = dE/d(pre-activation output) [N][F][OH][OW].
/// dx [N][C][H][W] is OVERWRITTEN. x may be empty only for Activation::identity.
void conv2d_backward_data(const Conv2dShape& shape, std::span<const float> dy,
                          std::span<const float> w, std::span<float> dx,
                          Activation input_activation = Activation::identity,
                          std::span<const float> x = {});

/// Backward weights: dw [F][C/groups][KH][KW] and db [F] are OVERWRITTEN with the gradients
/// summed over the batch. db may be empty (not computed).
///
/// All three passes throw std::invalid_argument on bad input and std::bad_alloc when a thread
/// cannot get its scratch memory (conv2d_scratch_bytes); in both cases before any output is
/// written.
void conv2d_backward_weights(const Conv2dShape& shape, std::span<const float> x,
                             std::span<const float> dy, std::span<float> dw, std::span<float> db);

/// True when no pass of this shape falls back to the reference loops. False only for a shape
/// whose lowered GEMM has a dimension OpenBLAS's int interface cannot take:
/// (C/groups)*KH*KW, OH*OW or F/groups above INT_MAX (a single image plane or filter of over
/// 8 GiB); the passes that run the openblas path on such a shape (backward weights always,
/// the others where the plan or IM2GEMM_GEMM picks it) run the reference loops instead:
/// correct, but slow. Throws std::invalid_argument for an invalid shape.
bool conv2d_fast_path(const Conv2dShape& shape);

/// Bytes of scratch memory one thread needs for a call on this shape with `threads` threads
/// (0 = num_threads()), the maximum over the three passes and both GEMM backends. The passes keep one buffer per
/// thread, allocated on first use, grown to the largest shape seen and reused by later calls
/// (also from other user threads: each thread has its own). At most 8 MiB per thread on every
/// layer of the benchmark suite. Throws std::invalid_argument for an invalid shape or
/// threads < 0.
std::size_t conv2d_scratch_bytes(const Conv2dShape& shape, int threads = 0);

}  // namespace im2gemm
