// The Layer base (update, argument checks), Shape3, Rng, Sgd and gradient_check.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <sstream>
#include <string>

#include "common/checks.hpp"
#include "im2gemm/layers.hpp"
#include "layers/layers_impl.hpp"

namespace im2gemm {

std::string Shape3::str() const {
  return std::to_string(channels) + "x" + std::to_string(height) + "x" + std::to_string(width);
}

// ---------------------------------------------------------------------------------------------
// Rng: xoshiro256** (Blackman and Vigna), state filled by splitmix64.

namespace {
std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(std::uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

std::uint64_t Rng::next() {
  const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const std::uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1 = 0.0;
  while (u1 <= 0.0) u1 = uniform();  // log(0) excluded
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double a = 2.0 * std::numbers::pi * u2;
  spare_ = r * std::sin(a);
  has_spare_ = true;
  return r * std::cos(a);
}

std::uint64_t Rng::below(std::uint64_t n) {
  if (n == 0) detail::fail("Rng::below: n must be >= 1, got 0");
  // Rejection: accept only values below the largest multiple of n.
  const std::uint64_t limit = (~std::uint64_t{0} / n) * n;
  for (;;) {
    const std::uint64_t v = next();
    if (v < limit) return v % n;
  }
}

// ---------------------------------------------------------------------------------------------

void Sgd::validate() const {
  auto bad = [](const char* field, float v, const char* want) {
    std::ostringstream o;
    o << "Sgd: " << field << " = " << v << ", must be " << want;
    detail::fail(o.str());
  };
  if (!(std::isfinite(learning_rate) && learning_rate > 0.0f))
    bad("learning_rate", learning_rate, "> 0");
  if (!(momentum >= 0.0f && momentum < 1.0f)) bad("momentum", momentum, "in [0, 1)");
  if (!(std::isfinite(weight_decay) && weight_decay >= 0.0f))
    bad("weight_decay", weight_decay, ">= 0");
}

namespace {
constexpr float kFlush = 1e-30f;                   // far below any useful velocity, above denormals
constexpr std::int64_t kParallelUpdate = 1 << 16;  // parameters worth two threads
}  // namespace

void Layer::update(const Sgd& sgd) {
  sgd.validate();
  auto params = parameters();
  if (velocity_.size() != params.size()) {
    velocity_.assign(params.size(), {});
    for (std::size_t i = 0; i < params.size(); ++i)
      velocity_[i].assign(params[i].value.size(), 0.0f);
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    float* w = params[i].value.data();
    const float* g = params[i].grad.data();
    float* v = velocity_[i].data();
    const float mu = sgd.momentum, lr = sgd.learning_rate;
    const float wd = params[i].decay ? sgd.weight_decay : 0.0f;
    const auto n = static_cast<std::int64_t>(params[i].value.size());
    // Element-wise, so the result does not depend on the thread count. A velocity that only
    // decays (a dead unit's zero gradient) would sink into denormals after ~800 steps and
    // make every later update ~50x slower: below kFlush it is set to zero.
#pragma omp parallel for simd num_threads(num_threads()) if (n >= kParallelUpdate) schedule(static)
    for (std::int64_t k = 0; k < n; ++k) {
      float vk = mu * v[k] + (g[k] + wd * w[k]);
      vk = std::fabs(vk) < kFlush ? 0.0f : vk;
      v[k] = vk;
      w[k] -= lr * vk;
    }
  }
}

void ParameterBuffer::place_in(std::span<float> dst) {
  if (dst.size() != n_) {
    detail::fail("ParameterBuffer::place_in: destination holds " + std::to_string(dst.size()) +
                 " floats, the buffer " + std::to_string(n_));
  }
  std::copy(begin(), end(), dst.begin());
  std::vector<float>().swap(own_);
  p_ = dst.data();
}

void Layer::place_parameters(std::span<float> values, std::span<float> grads) {
  if (!parameters().empty() || !values.empty() || !grads.empty()) {
    detail::fail("Layer::place_parameters: layer '" + name() +
                 "' has parameters but does not implement place_parameters");
  }
}

void Layer::init(Rng& rng, Init scheme) {
  detail::check_init_scheme("Layer::init", scheme);
  do_init(rng, scheme);
}

void Layer::check_forward(const char* who, std::span<const float> x, std::int64_t batch) const {
  if (batch < 1)
    detail::fail(std::string(who) + "::forward: batch must be >= 1, got " + std::to_string(batch));
  const std::int64_t per = input_shape().size();
  const std::int64_t want = detail::checked_mul(batch, per, "batch * input size");
  if (static_cast<std::uint64_t>(want) != x.size()) {
    detail::fail(std::string(who) + " '" + name() + "'::forward: x has " +
                 std::to_string(x.size()) + " elements, batch " + std::to_string(batch) +
                 " x input " + input_shape().str() + " needs " + std::to_string(want));
  }
}

void Layer::check_backward(const char* who, std::span<const float> dy) const {
  if (batch_ == 0)
    detail::fail(std::string(who) + " '" + name() + "'::backward called before forward");
  const std::int64_t want = batch_ * output_shape().size();
  if (static_cast<std::uint64_t>(want) != dy.size()) {
    detail::fail(std::string(who) + " '" + name() + "'::backward: dy has " +
                 std::to_string(dy.size()) + " elements, batch " + std::to_string(batch_) +
                 " x output " + output_shape().str() + " needs " + std::to_string(want));
  }
}

// ---------------------------------------------------------------------------------------------
// gradient_check

namespace {

/// Indices to check in a tensor of n entries: all, or max_per distinct seeded ones.
std::vector<std::size_t> pick(std::size_t n, std::int64_t max_per, Rng& rng) {
  std::vector<std::size_t> idx(n);
  for (std::size_t i = 0; i < n; ++i) idx[i] = i;
  const auto m = static_cast<std::size_t>(std::max<std::int64_t>(max_per, 0));
  if (n <= m) return idx;
  for (std::size_t i = 0; i < m; ++i) {  // partial Fisher-Yates
    const std::size_t j = i + rng.below(n - i);
    std::swap(idx[i], idx[j]);
  }
  idx.resize(m);
  return idx;
}

/// The two one-sided differences of a smooth function differ by about eps * f'' plus rounding
/// noise, far below 5% of the gradient; across a kink they differ by the jump of the slope.
constexpr double kKinkGap = 0.05;

struct Comparer {
  const GradientCheckOptions& opt;
  GradientCheckResult& res;
  double err(double a, double n) const {
    return std::fabs(a - n) / std::max({std::fabs(a), std::fabs(n), opt.scale_floor});
  }
  /// e0, ep, em: E at v, v + eps, v - eps.
  void compare(double analytic, double e0, double ep, double em, const std::string& what) {
    const double eps = opt.epsilon;
    const double central = (ep - em) / (2 * eps);
    const double fwd = (ep - e0) / eps, bwd = (e0 - em) / eps;
    double e = err(analytic, central);
    const double one_sided = std::min(err(analytic, fwd), err(analytic, bwd));
    // A one-sided difference explains the analytic value much better than the central one:
    // the step crossed a kink (and the sides disagree by more than rounding).
    if (one_sided < e && err(fwd, bwd) > kKinkGap) {
      e = one_sided;
      ++res.kinks;
    }
    ++res.checked;
    if (res.worst.empty() || e > res.max_error) {
      res.max_error = e;
      std::ostringstream o;
      o << what << ": analytic " << analytic << ", numeric " << central << " (one-sided " << fwd
        << ", " << bwd << ")";
      res.worst = o.str();
    }
  }
};

double weighted_sum(std::span<const float> y, const std::vector<float>& r) {
  double e = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) e += static_cast<double>(y[i]) * r[i];
  return e;
}

}  // namespace

GradientCheckResult gradient_check(Layer& layer, std::span<const float> x, std::int64_t batch,
                                   const GradientCheckOptions& opt) {
  if (!(opt.epsilon > 0.0) || !(opt.scale_floor > 0.0)) {
    detail::fail("gradient_check: epsilon and scale_floor must be > 0, got " +
                 std::to_string(opt.epsilon) + " and " + std::to_string(opt.scale_floor));
  }
  Rng rng(opt.seed);
  std::vector<float> xv(x.begin(), x.end());
  const auto y0 = layer.forward(xv, batch);  // validates x and batch
  std::vector<float> r(y0.size());
  for (auto& v : r) v = static_cast<float>(rng.normal());
  const double e0 = weighted_sum(y0, r);

  // Analytic gradients.
  const auto dx_span = layer.backward(r, true);
  const std::vector<float> dx(dx_span.begin(), dx_span.end());
  auto params = layer.parameters();
  std::vector<std::vector<float>> grads;
  for (auto& p : params) grads.emplace_back(p.grad.begin(), p.grad.end());

  GradientCheckResult res;
  Comparer cmp{opt, res};
  const float eps = static_cast<float>(opt.epsilon);
  auto probe = [&](float& v, double analytic, const std::string& what) {
    const float saved = v;
    v = saved + eps;
    const double ep = weighted_sum(layer.forward(xv, batch), r);
    v = saved - eps;
    const double em = weighted_sum(layer.forward(xv, batch), r);
    v = saved;
    cmp.compare(analytic, e0, ep, em, what);
  };
  for (std::size_t i : pick(xv.size(), opt.max_per_tensor, rng)) {
    probe(xv[i], dx[i], layer.name() + " input[" + std::to_string(i) + "]");
  }
  for (std::size_t p = 0; p < params.size(); ++p) {
    for (std::size_t i : pick(params[p].value.size(), opt.max_per_tensor, rng)) {
      probe(params[p].value[i], grads[p][i],
            layer.name() + " " + params[p].name + "[" + std::to_string(i) + "]");
    }
  }
  // Leave the layer as after forward(x), backward(r).
  layer.forward(xv, batch);
  layer.backward(r, true);
  return res;
}

GradientCheckResult gradient_check(SoftmaxCrossEntropy& loss, std::span<const float> logits,
                                   std::span<const std::int32_t> labels, std::int64_t classes,
                                   const GradientCheckOptions& opt) {
  if (!(opt.epsilon > 0.0) || !(opt.scale_floor > 0.0)) {
    detail::fail("gradient_check: epsilon and scale_floor must be > 0");
  }
  Rng rng(opt.seed);
  std::vector<float> z(logits.begin(), logits.end());
  const double e0 = loss.forward(z, labels, classes);
  const auto g = loss.backward();
  const std::vector<float> dz(g.begin(), g.end());
  GradientCheckResult res;
  Comparer cmp{opt, res};
  const float eps = static_cast<float>(opt.epsilon);
  for (std::size_t i : pick(z.size(), opt.max_per_tensor, rng)) {
    const float saved = z[i];
    z[i] = saved + eps;
    const double ep = loss.forward(z, labels, classes);
    z[i] = saved - eps;
    const double em = loss.forward(z, labels, classes);
    z[i] = saved;
    cmp.compare(dz[i], e0, ep, em, "softmax cross-entropy logit[" + std::to_string(i) + "]");
  }
  loss.forward(z, labels, classes);
  loss.backward();
  return res;
}

}  // namespace im2gemm
