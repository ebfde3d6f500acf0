// The reference convolution loops: the seed's worked example by hand, an independent literal
// port of the seed's algorithms on odd shapes, finite-difference gradients, the adjoint
// identity. Everything the fast paths are later compared against is checked here first.
#include <cmath>
#include <numeric>

#include "seed_literal.hpp"
#include "test_util.hpp"

using namespace im2gemm;
namespace ref = im2gemm::reference;

namespace {

constexpr Activation kActs[] = {Activation::identity, Activation::relu, Activation::sigmoid,
                                Activation::tanh};

Conv2dShape tutorial_shape() {
  Conv2dShape s;  // the seed's example: 3x5x5 input, two 3x3 filters, padding 1, stride 2
  s.in_channels = 3;
  s.in_height = 5;
  s.in_width = 5;
  s.out_channels = 2;
  s.kernel_height = 3;
  s.kernel_width = 3;
  s.stride_height = 2;
  s.stride_width = 2;
  s.pad_height = 1;
  s.pad_width = 1;
  return s;
}

// x[0][i][j] = 5i + j, x[1] = 2, x[2] = -1.
std::vector<float> tutorial_x() {
  std::vector<float> x(75);
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) {
      x[i * 5 + j] = static_cast<float>(5 * i + j);
      x[25 + i * 5 + j] = 2.0f;
      x[50 + i * 5 + j] = -1.0f;
    }
  return x;
}

// Filter 0: zero on channel 0, ones on channels 1 and 2. Filter 1: channel 0 only, centre tap
// 1 and top-left tap 10.
std::vector<float> tutorial_w() {
  std::vector<float> w(2 * 3 * 9, 0.0f);
  for (int k = 9; k < 27; ++k) w[k] = 1.0f;
  w[27 + 4] = 1.0f;   // f1, c0, (1,1)
  w[27 + 0] = 10.0f;  // f1, c0, (0,0)
  return w;
}

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

}  // namespace

TEST_CASE("seed worked example, forward, by hand") {
  const auto s = tutorial_shape();
  REQUIRE(s.out_height() == 3);
  REQUIRE(s.out_width() == 3);
  const auto x = tutorial_x();
  const auto w = tutorial_w();
  const std::vector<float> b{1.0f, -2.0f};
  std::vector<float> y(18, testutil::kSentinel);
  ref::conv2d_forward(s, x, w, b, y);
  // Filter 0 sees (2 - 1) per real cell of its window: the window's real-cell count plus the
  // bias. Windows cover rows {0,1}, {1,2,3}, {3,4}: 2, 3, 2 real rows (same for columns).
  const std::vector<float> y0{5, 7, 5, 7, 10, 7, 5, 7, 5};
  for (int k = 0; k < 9; ++k) CHECK(y[k] == y0[k]);
  // Filter 1: x0[2i][2j] + 10 * x0[2i-1][2j-1] (zero when padded) - 2.
  CHECK(y[9 + 0] == -2.0f);                        // 0 + pad - 2
  CHECK(y[9 + 2] == 2.0f);                         // x0[0][4] = 4, top-left tap in the padding
  CHECK(y[9 + 4] == 12.0f + 60.0f - 2.0f);         // x0[2][2] + 10 x0[1][1]
  CHECK(y[9 + 6] == 18.0f);                        // x0[4][0] = 20, left tap in the padding
  CHECK(y[9 + 8] == 24.0f + 180.0f - 2.0f);        // x0[4][4] + 10 x0[3][3]
  CHECK(y[9 + 5] == 14.0f + 10.0f * 8.0f - 2.0f);  // (i,j)=(1,2): x0[2][4] + 10 x0[1][3]
  // ReLU clips the single negative output.
  ref::conv2d_forward(s, x, w, b, y, Activation::relu);
  CHECK(y[9] == 0.0f);
  CHECK(y[13] == 70.0f);
}

TEST_CASE("seed worked example, sensitivity map and gradients, by hand") {
  const auto s = tutorial_shape();
  const auto x = tutorial_x();
  const auto w = tutorial_w();
  SUBCASE("dy = ones on filter 1 only") {
    std::vector<float> dy(18, 0.0f);
    for (int k = 9; k < 18; ++k) dy[k] = 1.0f;
    std::vector<float> dx(75, testutil::kSentinel);
    ref::conv2d_backward_data(s, dy, w, dx);
    // Channel 0: the centre tap lands on the even/even cells (weight 1), the top-left tap on
    // the odd/odd cells (weight 10); every other cell, and channels 1 and 2, get nothing.
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 5; ++j) {
        CAPTURE(i);
        CAPTURE(j);
        const float want = (i % 2 == 0 && j % 2 == 0)   ? 1.0f
                           : (i % 2 == 1 && j % 2 == 1) ? 10.0f
                                                        : 0.0f;
        CHECK(dx[i * 5 + j] == want);
        CHECK(dx[25 + i * 5 + j] == 0.0f);
        CHECK(dx[50 + i * 5 + j] == 0.0f);
      }
    std::vector<float> dw(54, testutil::kSentinel), db(2, testutil::kSentinel);
    ref::conv2d_backward_weights(s, x, dy, dw, db);
    CHECK(db[0] == 0.0f);
    CHECK(db[1] == 9.0f);
    // Filter 1, channel 1 (x = 2): 2 * the number of windows whose tap is a real cell.
    CHECK(dw[27 + 9 + 4] == 18.0f);   // centre tap: all 9 windows
    CHECK(dw[27 + 9 + 0] == 8.0f);    // top-left tap: rows/cols {-1,1,3} -> 2 x 2 real
    CHECK(dw[27 + 18 + 4] == -9.0f);  // channel 2 (x = -1), centre
    // Channel 0, centre tap: sum of x0 at the even/even cells = 0+2+4+10+12+14+20+22+24.
    CHECK(dw[27 + 4] == 108.0f);
    for (int k = 0; k < 27; ++k) CHECK(dw[k] == 0.0f);  // filter 0 got no gradient
  }
  SUBCASE("dy = ones on filter 0 only: each cell counts the windows covering it") {
    std::vector<float> dy(18, 0.0f);
    for (int k = 0; k < 9; ++k) dy[k] = 1.0f;
    std::vector<float> dx(75, testutil::kSentinel);
    ref::conv2d_backward_data(s, dy, w, dx);
    const int r[5] = {1, 2, 1, 2, 1};
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 5; ++j) {
        CHECK(dx[i * 5 + j] == 0.0f);
        CHECK(dx[25 + i * 5 + j] == static_cast<float>(r[i] * r[j]));
        CHECK(dx[50 + i * 5 + j] == static_cast<float>(r[i] * r[j]));
      }
    // With ReLU as the previous layer's activation, cells whose input is <= 0 are cut: x2 = -1.
    std::vector<float> dx2(75, testutil::kSentinel);
    ref::conv2d_backward_data(s, dy, w, dx2, Activation::relu, x);
    for (int k = 50; k < 75; ++k) CHECK(dx2[k] == 0.0f);
    CHECK(dx2[25 + 6] == 4.0f);
  }
}

namespace {

struct Case {
  Conv2dShape s;
  const char* what;
};

Conv2dShape make(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t F,
                 std::int64_t KH, std::int64_t KW, std::int64_t SH, std::int64_t SW,
                 std::int64_t PH, std::int64_t PW, std::int64_t DH = 1, std::int64_t DW = 1,
                 std::int64_t G = 1) {
  Conv2dShape s;
  s.batch = N;
  s.in_channels = C;
  s.in_height = H;
  s.in_width = W;
  s.out_channels = F;
  s.kernel_height = KH;
  s.kernel_width = KW;
  s.stride_height = SH;
  s.stride_width = SW;
  s.pad_height = PH;
  s.pad_width = PW;
  s.dilation_height = DH;
  s.dilation_width = DW;
  s.groups = G;
  return s;
}

// Odd shapes on purpose (STYLE.md): each one exercises a way the index arithmetic can go wrong.
std::vector<Case> odd_shapes() {
  return {
      {make(1, 23, 27, 37, 5, 3, 3, 1, 1, 1, 1), "27x37 with 23 channels"},
      {make(2, 3, 9, 11, 4, 1, 7, 1, 1, 0, 3), "1x7 kernel"},
      {make(2, 3, 11, 9, 4, 7, 1, 1, 1, 3, 0), "7x1 kernel"},
      {make(1, 2, 13, 14, 3, 2, 3, 4, 5, 0, 1), "stride > kernel"},
      {make(2, 3, 5, 6, 4, 5, 6, 1, 1, 0, 0), "kernel = input"},
      {make(2, 5, 9, 8, 3, 1, 1, 2, 2, 0, 0), "1x1 with stride 2"},
      {make(1, 3, 7, 8, 2, 3, 4, 2, 1, 2, 3), "pad = kernel - 1"},
      {make(1, 3, 12, 13, 2, 3, 3, 1, 2, 2, 1, 2, 2), "dilation 2"},
      {make(1, 2, 14, 11, 3, 3, 2, 2, 1, 1, 3, 3, 3), "dilation 3"},
      {make(2, 6, 8, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2), "groups 2"},
      {make(1, 6, 7, 7, 12, 3, 3, 2, 2, 1, 1, 1, 1, 6), "groups = channels (depthwise x2)"},
      {make(3, 4, 10, 1, 2, 3, 1, 1, 1, 1, 0), "width 1"},
      {make(5, 2, 6, 7, 3, 3, 3, 2, 2, 1, 1), "batch 5"},
      {make(1, 3, 9, 9, 2, 3, 3, 3, 3, 0, 0), "stride = kernel"},
      {make(2, 4, 10, 7, 6, 4, 2, 3, 2, 2, 1, 2, 1, 2), "everything at once"},
  };
}

}  // namespace

TEST_CASE("reference matches the literal seed port on odd shapes, every activation") {
  std::uint32_t seed = 1;
  for (const auto& c : odd_shapes()) {
    const auto& s = c.s;
    CAPTURE(c.what);
    CAPTURE(testutil::describe(s));
    s.validate();
    // Small integers: both sides are exact, so equality is exact.
    const auto x = testutil::random_ints(s.x_size(), seed++);
    const auto w = testutil::random_ints(s.w_size(), seed++);
    const auto b = testutil::random_ints(s.out_channels, seed++);
    const auto dy = testutil::random_ints(s.y_size(), seed++);
    std::vector<float> y(s.y_size(), testutil::kSentinel);
    ref::conv2d_forward(s, x, w, b, y);
    CHECK(testutil::bitwise_equal(y, to_float(seed::forward(s, x, w, b, Activation::identity))));
    ref::conv2d_forward(s, x, w, {}, y);
    CHECK(testutil::bitwise_equal(y, to_float(seed::forward(s, x, w, {}, Activation::identity))));

    std::vector<float> dx(s.x_size(), testutil::kSentinel);
    ref::conv2d_backward_data(s, dy, w, dx);
    CHECK(testutil::bitwise_equal(dx, to_float(
                                          seed::backward_data(s, dy, w, Activation::identity, x))));

    std::vector<float> dw(s.w_size(), testutil::kSentinel), db(s.out_channels, testutil::kSentinel);
    ref::conv2d_backward_weights(s, x, dy, dw, db);
    std::vector<double> sdw, sdb;
    seed::backward_weights(s, x, dy, sdw, sdb);
    CHECK(testutil::bitwise_equal(dw, to_float(sdw)));
    CHECK(testutil::bitwise_equal(db, to_float(sdb)));
    std::vector<float> dw2(s.w_size(), testutil::kSentinel);
    ref::conv2d_backward_weights(s, x, dy, dw2, {});
    CHECK(testutil::bitwise_equal(dw2, dw));

    // Float data and the non-linear activations, within rounding.
    const auto xf = testutil::random_floats(s.x_size(), seed++);
    const auto wf = testutil::random_floats(s.w_size(), seed++);
    const auto bf = testutil::random_floats(s.out_channels, seed++);
    const auto dyf = testutil::random_floats(s.y_size(), seed++);
    for (Activation a : kActs) {
      CAPTURE(static_cast<int>(a));
      ref::conv2d_forward(s, xf, wf, bf, y, a);
      const auto want = to_float(seed::forward(s, xf, wf, bf, a));
      CHECK_CLOSE_SPANS(std::span<const float>(y), std::span<const float>(want), 1e-5f, 1e-5f);
      // The previous layer's output: any activation's range, from xf.
      auto xa = xf;
      activation_forward(a, xa);
      ref::conv2d_backward_data(s, dyf, wf, dx, a, xa);
      const auto wantdx = to_float(seed::backward_data(s, dyf, wf, a, xa));
      CHECK_CLOSE_SPANS(std::span<const float>(dx), std::span<const float>(wantdx), 1e-5f, 1e-5f);
    }
  }
}

namespace {

// E = <act(conv(x) + b), r> for a fixed random r: dE/d(pre-activation) = r * act'(.).
double loss(const Conv2dShape& s, const std::vector<float>& x, const std::vector<float>& w,
            const std::vector<float>& b, const std::vector<float>& r, Activation a) {
  const auto y = seed::forward(s, x, w, b, a);  // double precision, independent of ref
  double e = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) e += y[i] * r[i];
  return e;
}

}  // namespace

TEST_CASE("finite-difference gradient check of backward data and weights (seed's gradient_check)") {
  std::uint32_t seed = 100;
  const std::vector<Conv2dShape> shapes = {
      tutorial_shape(),
      make(2, 4, 7, 6, 4, 3, 2, 2, 1, 1, 1, 1, 2, 2),
      make(1, 3, 8, 9, 2, 2, 3, 1, 3, 1, 2, 2, 1),
  };
  for (const auto& s : shapes) {
    CAPTURE(testutil::describe(s));
    for (Activation a : kActs) {
      CAPTURE(static_cast<int>(a));
      const auto x = testutil::random_floats(s.x_size(), seed++);
      const auto w = testutil::random_floats(s.w_size(), seed++);
      const auto b = testutil::random_floats(s.out_channels, seed++);
      const auto r = testutil::random_floats(s.y_size(), seed++);
      // dE/du = r * act'(u), computed from the activated output.
      std::vector<float> y(s.y_size());
      ref::conv2d_forward(s, x, w, b, y, a);
      std::vector<float> dy = r;
      activation_backward(a, y, dy);

      std::vector<float> dx(s.x_size()), dw(s.w_size()), db(s.out_channels);
      ref::conv2d_backward_data(s, dy, w, dx);
      ref::conv2d_backward_weights(s, x, dy, dw, db);

      const double h = 1e-3;
      auto check_grad = [&](const char* what, std::vector<float> xx, std::vector<float> ww,
                            std::vector<float> bb, int which, const std::vector<float>& grad) {
        CAPTURE(what);
        std::vector<float>& v = which == 0 ? xx : which == 1 ? ww : bb;
        for (std::size_t i = 0; i < v.size(); i += 1 + v.size() / 13) {
          const float keep = v[i];
          v[i] = static_cast<float>(keep + h);
          const double ep = loss(s, xx, ww, bb, r, a);
          v[i] = static_cast<float>(keep - h);
          const double em = loss(s, xx, ww, bb, r, a);
          v[i] = keep;
          const double fd = (ep - em) / (2 * h);
          CAPTURE(i);
          CHECK(grad[i] == doctest::Approx(fd).epsilon(2e-2).scale(1.0));
        }
      };
      // ReLU has a kink at 0; random data almost never lands within h of it, and a
      // failure there would show as a single index.
      check_grad("dE/dx", x, w, b, 0, dx);
      check_grad("dE/dw", x, w, b, 1, dw);
      check_grad("dE/db", x, w, b, 2, db);
    }
  }
}

TEST_CASE("adjoint identity <conv(x), y> == <x, backward_data(y)> on random shapes") {
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int t = 0; t < 40; ++t) {
    Conv2dShape s;
    s.groups = pick(1, 3);
    s.batch = pick(1, 3);
    s.in_channels = s.groups * pick(1, 3);
    s.out_channels = s.groups * pick(1, 3);
    s.kernel_height = pick(1, 5);
    s.kernel_width = pick(1, 5);
    s.dilation_height = pick(1, 3);
    s.dilation_width = pick(1, 3);
    s.stride_height = pick(1, 4);
    s.stride_width = pick(1, 4);
    s.pad_height = pick(0, 3);
    s.pad_width = pick(0, 3);
    s.in_height = std::max<std::int64_t>(1, (s.kernel_height - 1) * s.dilation_height + 1 -
                                                2 * s.pad_height) +
                  pick(0, 9);
    s.in_width =
        std::max<std::int64_t>(1, (s.kernel_width - 1) * s.dilation_width + 1 - 2 * s.pad_width) +
        pick(0, 9);
    CAPTURE(testutil::describe(s));
    s.validate();
    // Integers: both inner products are exact.
    const auto x = testutil::random_ints(s.x_size(), 1000 + t);
    const auto w = testutil::random_ints(s.w_size(), 2000 + t);
    const auto r = testutil::random_ints(s.y_size(), 3000 + t);
    std::vector<float> y(s.y_size()), dx(s.x_size());
    ref::conv2d_forward(s, x, w, {}, y);
    ref::conv2d_backward_data(s, r, w, dx);
    double lhs = 0, rhs = 0;
    for (std::size_t i = 0; i < y.size(); ++i) lhs += double(y[i]) * r[i];
    for (std::size_t i = 0; i < x.size(); ++i) rhs += double(x[i]) * dx[i];
    CHECK(lhs == rhs);
    // And the weight gradient is the adjoint in w: <conv(x; w), r> == <w, dW(x, r)>.
    std::vector<float> dw(s.w_size());
    ref::conv2d_backward_weights(s, x, r, dw, {});
    double rw = 0;
    for (std::size_t i = 0; i < w.size(); ++i) rw += double(w[i]) * dw[i];
    CHECK(lhs == rw);
  }
}

TEST_CASE("finite differences through the input activation of backward data") {
  // E(u) = <conv(f(u)) + b, r>: the previous layer's pre-activation u, its output x = f(u).
  // backward_data(r, input_activation = f, x) must be dE/du.
  std::uint32_t seed = 500;
  const std::vector<Conv2dShape> shapes = {tutorial_shape(),
                                           make(2, 4, 6, 7, 2, 2, 3, 1, 2, 1, 0, 2, 1, 2)};
  for (const auto& s : shapes) {
    CAPTURE(testutil::describe(s));
    for (Activation a : kActs) {
      CAPTURE(static_cast<int>(a));
      const auto u = testutil::random_floats(s.x_size(), seed++);
      const auto w = testutil::random_floats(s.w_size(), seed++);
      const auto b = testutil::random_floats(s.out_channels, seed++);
      const auto r = testutil::random_floats(s.y_size(), seed++);
      auto x = u;
      activation_forward(a, x);
      std::vector<float> du(s.x_size(), testutil::kSentinel);
      ref::conv2d_backward_data(s, r, w, du, a, x);
      auto energy = [&](const std::vector<float>& uu) {
        std::vector<float> xx(uu.size());
        for (std::size_t i = 0; i < uu.size(); ++i) xx[i] = static_cast<float>(seed::act(a, uu[i]));
        return loss(s, xx, w, b, r, Activation::identity);
      };
      const double h = 1e-3;
      for (std::size_t i = 0; i < u.size(); i += 1 + u.size() / 17) {
        CAPTURE(i);
        CAPTURE(u[i]);
        // ReLU has no derivative at 0: a finite difference across the kink measures nothing.
        if (a == Activation::relu && std::fabs(u[i]) < 2 * h) continue;
        auto up = u, um = u;
        up[i] = static_cast<float>(u[i] + h);
        um[i] = static_cast<float>(u[i] - h);
        const double fd = (energy(up) - energy(um)) / (2 * h);
        CHECK(du[i] == doctest::Approx(fd).epsilon(2e-2).scale(1.0));
      }
    }
  }
}
