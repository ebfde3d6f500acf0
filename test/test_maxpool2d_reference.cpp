// The reference pooling loops: the semantics DESIGN.md fixes (ties, NaN, -inf, padding,
// overlapping windows), checked on hand-made planes.
#include <cmath>
#include <limits>

#include "test_util.hpp"

using namespace im2gemm;
namespace ref = im2gemm::reference;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

MaxPool2dShape pool(std::int64_t H, std::int64_t W, std::int64_t K, std::int64_t S,
                    std::int64_t P) {
  MaxPool2dShape s;
  s.in_height = H;
  s.in_width = W;
  s.kernel_height = K;
  s.kernel_width = K;
  s.stride_height = S;
  s.stride_width = S;
  s.pad_height = P;
  s.pad_width = P;
  return s;
}

struct Out {
  std::vector<float> y;
  std::vector<std::int32_t> arg;
};

Out run(const MaxPool2dShape& s, const std::vector<float>& x) {
  Out o{std::vector<float>(s.y_size(), testutil::kSentinel),
        std::vector<std::int32_t>(s.y_size(), 0x7fffffff)};
  ref::maxpool2d_forward(s, x, o.y, o.arg);
  return o;
}

}  // namespace

TEST_CASE("2x2 stride 2: maxima and their plane indices") {
  const auto s = pool(4, 4, 2, 2, 0);
  const std::vector<float> x{1, 2, 5,  0,  //
                             3, 4, 6,  7,  //
                             9, 8, 0,  0,  //
                             8, 9, -1, -2};
  const auto o = run(s, x);
  CHECK(o.y == std::vector<float>{4, 7, 9, 0});
  // 4 at (1,1); 7 at (1,3); 9 at (2,0) ties 9 at (3,1) and comes first; 0 at (2,2) ties 0 at (2,3).
  CHECK(o.arg == std::vector<std::int32_t>{5, 7, 8, 10});
}

TEST_CASE("ties: the first maximum in row-major window order wins") {
  const auto s = pool(3, 3, 3, 1, 0);
  const auto o = run(s, std::vector<float>(9, 2.0f));
  CHECK(o.arg[0] == 0);
  const auto o2 = run(s, {0, 1, 0, 3, 0, 3, 3, 0, 0});
  CHECK(o2.y[0] == 3.0f);
  CHECK(o2.arg[0] == 3);
}

TEST_CASE("NaN wins, at the first NaN, even after a larger value") {
  const auto s = pool(2, 3, 2, 1, 0);  // two windows: columns {0,1} and {1,2}
  const auto o = run(s, {9, 1, kNaN, 2, kNaN, 5});
  CHECK(std::isnan(o.y[0]));
  CHECK(o.arg[0] == 4);
  CHECK(std::isnan(o.y[1]));
  CHECK(o.arg[1] == 2);  // first NaN in row-major order, not the later one
  const auto o2 = run(s, {kNaN, 100, 1, 2, 3, 4});
  CHECK(std::isnan(o2.y[0]));
  CHECK(o2.arg[0] == 0);  // a larger value after a NaN does not take over
  CHECK(o2.y[1] == 100.0f);
}

TEST_CASE("an all -inf window gives -inf at its first real cell; padding never wins") {
  // 3x3 windows, stride 2, padding 1 on a 3x3 plane: the first window starts in the padding.
  const auto s = pool(3, 3, 3, 2, 1);
  REQUIRE(s.out_height() == 2);
  const auto o = run(s, std::vector<float>(9, -kInf));
  for (int k = 0; k < 4; ++k) CHECK(o.y[k] == -kInf);
  // First real cells of the four windows: (0,0), (0,1), (1,0), (1,1).
  CHECK(o.arg == std::vector<std::int32_t>{0, 1, 3, 4});
  // All negative values: padding (an implicit 0 elsewhere) must not win.
  const auto o2 = run(s, {-5, -4, -3, -2, -1, -6, -7, -8, -9});
  CHECK(o2.y == std::vector<float>{-1, -1, -1, -1});
  CHECK(o2.arg == std::vector<std::int32_t>{4, 4, 4, 4});
}

TEST_CASE("stride > kernel skips cells; kernel = input gives one window") {
  const auto s = pool(5, 5, 2, 3, 0);
  REQUIRE(s.out_height() == 2);
  std::vector<float> x(25);
  for (int k = 0; k < 25; ++k) x[k] = static_cast<float>(k);
  const auto o = run(s, x);
  CHECK(o.y == std::vector<float>{6, 9, 21, 24});
  const auto full = pool(5, 5, 5, 1, 0);
  CHECK(run(full, x).arg == std::vector<std::int32_t>{24});
}

TEST_CASE("backward: overlapping windows add up, other cells are zero") {
  const auto s = pool(3, 3, 2, 1, 0);  // four overlapping 2x2 windows
  const std::vector<float> x{0, 0, 0, 0, 9, 0, 0, 0, 0};
  const auto o = run(s, x);
  CHECK(o.arg == std::vector<std::int32_t>{4, 4, 4, 4});
  std::vector<float> dx(9, testutil::kSentinel);
  ref::maxpool2d_backward(s, std::vector<float>{1, 2, 3, 4}, o.arg, dx);
  CHECK(dx == std::vector<float>{0, 0, 0, 0, 10, 0, 0, 0, 0});
}

TEST_CASE("batch and channels: indices are per (n, c) plane") {
  MaxPool2dShape s = pool(2, 2, 2, 2, 0);
  s.batch = 2;
  s.channels = 3;
  std::vector<float> x(24);
  for (int p = 0; p < 6; ++p)
    for (int k = 0; k < 4; ++k) x[p * 4 + k] = static_cast<float>(k == p % 4 ? 10 + p : 0);
  const auto o = run(s, x);
  for (int p = 0; p < 6; ++p) {
    CHECK(o.y[p] == static_cast<float>(10 + p));
    CHECK(o.arg[p] == p % 4);
  }
  std::vector<float> dx(24, testutil::kSentinel);
  std::vector<float> dy{1, 2, 3, 4, 5, 6};
  ref::maxpool2d_backward(s, dy, o.arg, dx);
  for (int p = 0; p < 6; ++p)
    for (int k = 0; k < 4; ++k) CHECK(dx[p * 4 + k] == (k == p % 4 ? dy[p] : 0.0f));
}
