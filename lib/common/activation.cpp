#include <cmath>
#include <string>

#include "common/activation_impl.hpp"
#include "common/checks.hpp"

namespace im2gemm::detail {

void activation_forward_unchecked(Activation act, float* v, std::int64_t n) {
  switch (act) {
    case Activation::identity: return;
    case Activation::relu:
      for (std::int64_t i = 0; i < n; ++i) v[i] = v[i] > 0.0f ? v[i] : 0.0f;
      return;
    case Activation::sigmoid:
      for (std::int64_t i = 0; i < n; ++i) v[i] = 1.0f / (1.0f + std::exp(-v[i]));
      return;
    case Activation::tanh:
      for (std::int64_t i = 0; i < n; ++i) v[i] = std::tanh(v[i]);
      return;
  }
}

void activation_backward_unchecked(Activation act, const float* y, float* d, std::int64_t n) {
  switch (act) {
    case Activation::identity: return;
    case Activation::relu:
      for (std::int64_t i = 0; i < n; ++i) d[i] = y[i] > 0.0f ? d[i] : 0.0f;
      return;
    case Activation::sigmoid:
      for (std::int64_t i = 0; i < n; ++i) d[i] *= y[i] * (1.0f - y[i]);
      return;
    case Activation::tanh:
      for (std::int64_t i = 0; i < n; ++i) d[i] *= 1.0f - y[i] * y[i];
      return;
  }
}

}  // namespace im2gemm::detail

namespace im2gemm {

void activation_forward(Activation act, std::span<float> values) {
  detail::check_activation(act, "activation_forward: act");
  detail::activation_forward_unchecked(act, values.data(),
                                       static_cast<std::int64_t>(values.size()));
}

void activation_backward(Activation act, std::span<const float> y, std::span<float> d) {
  detail::check_activation(act, "activation_backward: act");
  if (y.size() != d.size()) {
    detail::fail("activation_backward: y has " + std::to_string(y.size()) + " elements but d has " +
                 std::to_string(d.size()));
  }
  detail::check_no_overlap("activation_backward", "d", d, "y", y);
  detail::activation_backward_unchecked(act, y.data(), d.data(),
                                        static_cast<std::int64_t>(d.size()));
}

}  // namespace im2gemm
