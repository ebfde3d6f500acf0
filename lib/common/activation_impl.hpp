// Internal: activation kernels without argument checks, for the fused passes.
#pragma once

#include <cstdint>

#include "im2gemm/common.hpp"

namespace im2gemm::detail {

/// v[i] = f(v[i]) for i < n.
void activation_forward_unchecked(Activation act, float* v, std::int64_t n);
/// d[i] *= f'(from y[i]) for i < n.
void activation_backward_unchecked(Activation act, const float* y, float* d, std::int64_t n);

}  // namespace im2gemm::detail
