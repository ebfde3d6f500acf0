// im2gemm: 2-D max pooling, fp32, NCHW, forward with argmax and backward.
#pragma once

#include <cstdint>
#include <span>

#include "im2gemm/common.hpp"

namespace im2gemm {

/// Shape of a 2-D max pooling. Plain aggregate.
struct MaxPool2dShape {
  std::int64_t batch = 1, channels = 1, in_height = 1, in_width = 1;
  std::int64_t kernel_height = 2, kernel_width = 2, stride_height = 2, stride_width = 2;
  std::int64_t pad_height = 0, pad_width = 0;  ///< padded cells never win; pad < kernel
  /// PyTorch's ceil mode: out = ceil((in + 2*pad - kernel) / stride) + 1, minus one if that
  /// last window would start at or past in + pad (it must start inside the input or its
  /// top/left padding, so every window holds a real cell). A window running past the bottom
  /// or right edge takes the max of its real cells.
  bool ceil_mode = false;

  /// Floor mode: (in_height + 2*pad_height - kernel_height) / stride_height + 1; ceil mode:
  /// see ceil_mode. Meaningful only for a shape that validate() accepts.
  std::int64_t out_height() const;
  std::int64_t out_width() const;

  /// Throws std::invalid_argument naming the field and its value: counts, kernel and stride
  /// >= 1; 0 <= pad < kernel; strides and pads <= kMaxStridePadDilation (2^31 - 1); at least
  /// one output row and column (floor mode: the kernel fits in the padded input); a plane of
  /// H*W cells indexable by int32_t; every tensor's element count fits in 64 bits.
  void validate() const;

  std::int64_t x_size() const;  ///< N*C*H*W   (valid shapes only)
  std::int64_t y_size() const;  ///< N*C*OH*OW
};

/// y [N][C][OH][OW] and argmax [N][C][OH][OW] are OVERWRITTEN.
/// argmax = h*W + w of the winner inside its own (n, c) input plane.
/// Ties: the first maximum in row-major window order wins. A NaN in the window wins: output
/// NaN, argmax at the first NaN. An all -inf window gives -inf and the index of the window's
/// first real (unpadded) cell. Padded cells never win.
void maxpool2d_forward(const MaxPool2dShape& shape, std::span<const float> x, std::span<float> y,
                       std::span<std::int32_t> argmax);

/// dx [N][C][H][W] is OVERWRITTEN: zero, then dy added at each argmax (overlapping windows add
/// up). An argmax entry outside [0, H*W) is bad input: std::invalid_argument, dx untouched.
void maxpool2d_backward(const MaxPool2dShape& shape, std::span<const float> dy,
                        std::span<const std::int32_t> argmax, std::span<float> dx);

/// Both functions throw std::invalid_argument on bad input, and std::bad_alloc when a thread
/// cannot get the small scratch buffer the streaming paths of large tensors use; in both
/// cases before any output is written.

}  // namespace im2gemm
