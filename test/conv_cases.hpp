// Shared by the convolution suites: random odd shapes, deterministic data, every pass of an
// implementation against the reference loops (exact on small integers, tolerance on floats).
#pragma once

#include <random>

#include "conv/engine.hpp"
#include "test_util.hpp"

namespace convcases {

using im2gemm::Activation;
using im2gemm::Conv2dShape;
using std::int64_t;

// The planners' own constants, except that small shapes run on every requested thread too
// (the plans would otherwise give tiny problems one thread).
inline constexpr im2gemm::detail::PlanTuning kEveryThread{.min_macs_per_thread = 1};

inline constexpr Activation kActs[] = {Activation::identity, Activation::relu, Activation::sigmoid,
                                       Activation::tanh};

// kernels 1-7 (non-square), strides 1-4, pads 0-3, dilations 1-3, groups 1-3, batch 1-4,
// odd sizes; small enough for a sanitizer build.
inline Conv2dShape random_shape(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Conv2dShape s;
  s.groups = pick(1, 4) == 1 ? pick(2, 3) : 1;
  s.batch = pick(1, 4);
  s.in_channels = s.groups * pick(1, 5);
  s.out_channels = s.groups * pick(1, 6);
  s.kernel_height = pick(1, 7);
  s.kernel_width = pick(1, 7);
  s.stride_height = pick(1, 4);
  s.stride_width = pick(1, 4);
  if (pick(0, 2) == 0) s.stride_height = s.stride_width = 1;  // the stride-1 kernels, more often
  s.pad_height = pick(0, 3);
  s.pad_width = pick(0, 3);
  s.dilation_height = pick(1, 3);
  s.dilation_width = pick(1, 3);
  const int64_t need_h = (s.kernel_height - 1) * s.dilation_height + 1 - 2 * s.pad_height;
  const int64_t need_w = (s.kernel_width - 1) * s.dilation_width + 1 - 2 * s.pad_width;
  s.in_height = std::max<int64_t>(1, need_h) + pick(0, 13);
  s.in_width = std::max<int64_t>(1, need_w) + pick(0, 13);
  s.validate();
  return s;
}

struct Data {
  std::vector<float> x, w, bias, dy, xact;
};

inline Data make_data(const Conv2dShape& s, std::uint32_t seed, bool ints) {
  Data d;
  auto fill = [&](std::size_t n, std::uint32_t k) {
    return ints ? testutil::random_ints(n, seed * 8 + k) : testutil::random_floats(n, seed * 8 + k);
  };
  d.x = fill(static_cast<std::size_t>(s.x_size()), 1);
  d.w = fill(static_cast<std::size_t>(s.w_size()), 2);
  d.bias = fill(static_cast<std::size_t>(s.out_channels), 3);
  d.dy = fill(static_cast<std::size_t>(s.y_size()), 4);
  // The layer input as an activation output: values in the range of sigmoid/tanh/relu.
  d.xact = ints ? testutil::random_ints(static_cast<std::size_t>(s.x_size()), seed * 8 + 5, -2, 2)
                : testutil::random_floats(static_cast<std::size_t>(s.x_size()), seed * 8 + 5);
  return d;
}

struct Outputs {
  std::vector<float> y, dx, dw, db;
};

// The public passes with explicit options (backend, ISA cap, threads).
inline Outputs run_with(const im2gemm::detail::ConvOptions& opt, const Conv2dShape& s,
                        const Data& d, Activation act, bool with_bias) {
  Outputs o;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  o.y.assign(static_cast<std::size_t>(s.y_size()), nan);
  o.dx.assign(static_cast<std::size_t>(s.x_size()), nan);
  o.dw.assign(static_cast<std::size_t>(s.w_size()), nan);
  o.db.assign(static_cast<std::size_t>(s.out_channels), nan);
  const std::span<const float> bias = with_bias ? std::span<const float>(d.bias)
                                                : std::span<const float>();
  im2gemm::detail::conv2d_forward_with(opt, s, d.x, d.w, bias, o.y, act);
  im2gemm::detail::conv2d_backward_data_with(opt, s, d.dy, d.w, o.dx, act, d.xact);
  im2gemm::detail::conv2d_backward_weights_with(opt, s, d.x, d.dy, o.dw,
                                                with_bias ? std::span<float>(o.db)
                                                          : std::span<float>());
  if (!with_bias) o.db.clear();
  return o;
}

inline Outputs run_ref(const Conv2dShape& s, const Data& d, Activation act, bool with_bias) {
  Outputs o;
  o.y.assign(static_cast<std::size_t>(s.y_size()), 0.0f);
  o.dx.assign(static_cast<std::size_t>(s.x_size()), 0.0f);
  o.dw.assign(static_cast<std::size_t>(s.w_size()), 0.0f);
  o.db.assign(with_bias ? static_cast<std::size_t>(s.out_channels) : 0, 0.0f);
  const std::span<const float> bias = with_bias ? std::span<const float>(d.bias)
                                                : std::span<const float>();
  im2gemm::reference::conv2d_forward(s, d.x, d.w, bias, o.y, act);
  im2gemm::reference::conv2d_backward_data(s, d.dy, d.w, o.dx, act, d.xact);
  im2gemm::reference::conv2d_backward_weights(s, d.x, d.dy, o.dw, o.db);
  return o;
}

// Compares all three passes: exact, or max(atol, rtol*|ref|) with atol growing with the
// number of terms summed. Returns the number of passes that matched.
inline int compare(const Conv2dShape& s, const Outputs& got, const Outputs& want, bool exact) {
  const int64_t k = s.in_channels / s.groups * s.kernel_height * s.kernel_width;
  const int64_t red_fwd = k,
                red_bwd_data = s.out_channels / s.groups * s.kernel_height * s.kernel_width;
  const int64_t red_w = s.batch * s.out_height() * s.out_width();
  auto tol = [&](int64_t terms) {
    return exact ? 0.0f : 2e-6f * static_cast<float>(terms) + 1e-5f;
  };
  const float rtol = exact ? 0.0f : 1e-4f;
  int ok = 0;
  const auto m1 = testutil::first_mismatch(got.y, want.y, tol(red_fwd), rtol);
  const auto m2 = testutil::first_mismatch(got.dx, want.dx, tol(red_bwd_data), rtol);
  const auto m3 = testutil::first_mismatch(got.dw, want.dw, tol(red_w), rtol);
  const auto m4 = testutil::first_mismatch(got.db, want.db, tol(red_w), rtol);
  if (m1 >= 0) INFO("forward mismatch at " << m1 << ": " << got.y[m1] << " vs " << want.y[m1]);
  CHECK(m1 == -1);
  if (m2 >= 0)
    INFO("backward data mismatch at " << m2 << ": " << got.dx[m2] << " vs " << want.dx[m2]);
  CHECK(m2 == -1);
  if (m3 >= 0)
    INFO("backward weights mismatch at " << m3 << ": " << got.dw[m3] << " vs " << want.dw[m3]);
  CHECK(m3 == -1);
  if (m4 >= 0)
    INFO("bias gradient mismatch at " << m4 << ": " << got.db[m4] << " vs " << want.db[m4]);
  CHECK(m4 == -1);
  ok += (m1 == -1) + (m2 == -1) + (m3 == -1 && m4 == -1);
  return ok;
}

}  // namespace convcases
