// im2gemm: the naive loops of the seed, shipped as the oracle of every fast path.
// Same signatures, same validation and same meaning as the functions in namespace im2gemm.
// They are slow on purpose: direct loops, no lowering, no threads.
#pragma once

#include "im2gemm/avgpool2d.hpp"
#include "im2gemm/conv2d.hpp"
#include "im2gemm/maxpool2d.hpp"

namespace im2gemm::reference {

void conv2d_forward(const Conv2dShape& shape, std::span<const float> x, std::span<const float> w,
                    std::span<const float> bias, std::span<float> y,
                    Activation act = Activation::identity);

void conv2d_backward_data(const Conv2dShape& shape, std::span<const float> dy,
                          std::span<const float> w, std::span<float> dx,
                          Activation input_activation = Activation::identity,
                          std::span<const float> x = {});

void conv2d_backward_weights(const Conv2dShape& shape, std::span<const float> x,
                             std::span<const float> dy, std::span<float> dw, std::span<float> db);

void maxpool2d_forward(const MaxPool2dShape& shape, std::span<const float> x, std::span<float> y,
                       std::span<std::int32_t> argmax);

void maxpool2d_backward(const MaxPool2dShape& shape, std::span<const float> dy,
                        std::span<const std::int32_t> argmax, std::span<float> dx);

void avgpool2d_forward(const AvgPool2dShape& shape, std::span<const float> x, std::span<float> y);

void avgpool2d_backward(const AvgPool2dShape& shape, std::span<const float> dy,
                        std::span<float> dx);

}  // namespace im2gemm::reference
