// Softmax cross-entropy, stable: the row maximum is subtracted before exp, sums in double.
#include <cmath>
#include <string>

#include "common/checks.hpp"
#include "im2gemm/layers.hpp"

namespace im2gemm {

float SoftmaxCrossEntropy::forward(std::span<const float> logits,
                                   std::span<const std::int32_t> labels, std::int64_t classes) {
  if (classes < 1)
    detail::fail("SoftmaxCrossEntropy: classes must be >= 1, got " + std::to_string(classes));
  if (labels.empty()) detail::fail("SoftmaxCrossEntropy: empty batch (no labels)");
  const auto batch = static_cast<std::int64_t>(labels.size());
  const std::int64_t want = detail::checked_mul(batch, classes, "batch * classes");
  if (static_cast<std::uint64_t>(want) != logits.size()) {
    detail::fail("SoftmaxCrossEntropy: logits has " + std::to_string(logits.size()) +
                 " elements, " + std::to_string(batch) + " labels x " + std::to_string(classes) +
                 " classes needs " + std::to_string(want));
  }
  for (std::int64_t n = 0; n < batch; ++n) {
    if (labels[n] < 0 || labels[n] >= classes) {
      detail::fail("SoftmaxCrossEntropy: label " + std::to_string(n) + " is " +
                   std::to_string(labels[n]) + ", must be in [0, " + std::to_string(classes) + ")");
    }
  }
  p_.resize(logits.size());
  labels_.assign(labels.begin(), labels.end());
  classes_ = classes;
  correct_ = 0;
  double total = 0.0;
  for (std::int64_t n = 0; n < batch; ++n) {
    const float* z = logits.data() + n * classes;
    float* p = p_.data() + n * classes;
    std::int64_t best = 0;
    for (std::int64_t k = 1; k < classes; ++k)
      if (z[k] > z[best]) best = k;
    const double m = z[best];
    double s = 0.0;
    for (std::int64_t k = 0; k < classes; ++k) s += std::exp(static_cast<double>(z[k]) - m);
    for (std::int64_t k = 0; k < classes; ++k)
      p[k] = static_cast<float>(std::exp(static_cast<double>(z[k]) - m) / s);
    total += std::log(s) + m - static_cast<double>(z[labels[n]]);
    if (best == labels[n]) ++correct_;
  }
  return static_cast<float>(total / static_cast<double>(batch));
}

std::span<const float> SoftmaxCrossEntropy::backward() {
  if (classes_ == 0) detail::fail("SoftmaxCrossEntropy::backward called before forward");
  const auto batch = static_cast<std::int64_t>(labels_.size());
  const float scale = 1.0f / static_cast<float>(batch);
  dz_.resize(p_.size());
  for (std::int64_t n = 0; n < batch; ++n) {
    for (std::int64_t k = 0; k < classes_; ++k) {
      const float onehot = k == labels_[n] ? 1.0f : 0.0f;
      dz_[n * classes_ + k] = (p_[n * classes_ + k] - onehot) * scale;
    }
  }
  return dz_;
}

}  // namespace im2gemm
