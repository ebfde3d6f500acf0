// Every bad input the contract names, for the public functions and the reference loops alike:
// std::invalid_argument with a message, and every output exactly as it was (sentinels).
#include <limits>
#include <string>

#include "test_util.hpp"

using namespace im2gemm;

namespace {

struct ConvApi {
  const char* name;
  void (*fwd)(const Conv2dShape&, std::span<const float>, std::span<const float>,
              std::span<const float>, std::span<float>, Activation);
  void (*bwd_data)(const Conv2dShape&, std::span<const float>, std::span<const float>,
                   std::span<float>, Activation, std::span<const float>);
  void (*bwd_weights)(const Conv2dShape&, std::span<const float>, std::span<const float>,
                      std::span<float>, std::span<float>);
};

struct PoolApi {
  const char* name;
  void (*fwd)(const MaxPool2dShape&, std::span<const float>, std::span<float>,
              std::span<std::int32_t>);
  void (*bwd)(const MaxPool2dShape&, std::span<const float>, std::span<const std::int32_t>,
              std::span<float>);
};

const ConvApi kConvApis[] = {
    {"im2gemm", &im2gemm::conv2d_forward, &im2gemm::conv2d_backward_data,
     &im2gemm::conv2d_backward_weights},
    {"reference", &reference::conv2d_forward, &reference::conv2d_backward_data,
     &reference::conv2d_backward_weights},
};
const PoolApi kPoolApis[] = {
    {"im2gemm", &im2gemm::maxpool2d_forward, &im2gemm::maxpool2d_backward},
    {"reference", &reference::maxpool2d_forward, &reference::maxpool2d_backward},
};

bool all_sentinel(std::span<const float> v) {
  for (float f : v)
    if (!(f == testutil::kSentinel)) return false;
  return true;
}

// Runs f, which must throw std::invalid_argument with a message containing `needle`.
template <class F>
void expect_invalid(F&& f, const std::string& needle) {
  CAPTURE(needle);
  bool threw = false;
  try {
    f();
  } catch (const std::invalid_argument& e) {
    threw = true;
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK_FALSE(msg.empty());
    CHECK(msg.find(needle) != std::string::npos);
  }
  CHECK(threw);
}

Conv2dShape conv_shape() {
  Conv2dShape s;
  s.batch = 2;
  s.in_channels = 4;
  s.in_height = 6;
  s.in_width = 5;
  s.out_channels = 6;
  s.kernel_height = 3;
  s.kernel_width = 2;
  s.pad_height = 1;
  s.groups = 2;
  return s;
}

}  // namespace

TEST_CASE("convolution: bad input throws and writes nothing") {
  for (const auto& api : kConvApis) {
    CAPTURE(api.name);
    const auto s = conv_shape();
    const auto x = testutil::random_floats(s.x_size(), 1);
    const auto w = testutil::random_floats(s.w_size(), 2);
    const auto b = testutil::random_floats(s.out_channels, 3);
    const auto dy = testutil::random_floats(s.y_size(), 4);
    std::vector<float> y(s.y_size(), testutil::kSentinel);
    std::vector<float> dx(s.x_size(), testutil::kSentinel);
    std::vector<float> dw(s.w_size(), testutil::kSentinel);
    std::vector<float> db(s.out_channels, testutil::kSentinel);
    const std::span<const float> X(x), W(w), B(b), DY(dy);
    auto untouched = [&] {
      CHECK(all_sentinel(y));
      CHECK(all_sentinel(dx));
      CHECK(all_sentinel(dw));
      CHECK(all_sentinel(db));
    };
    auto bad = s;
    bad.stride_width = 0;
    expect_invalid([&] { api.fwd(bad, X, W, B, y, Activation::identity); }, "stride_width");
    expect_invalid([&] { api.bwd_data(bad, DY, W, dx, Activation::identity, {}); }, "stride_width");
    expect_invalid([&] { api.bwd_weights(bad, X, DY, dw, db); }, "stride_width");
    bad = s;
    bad.groups = 4;
    expect_invalid([&] { api.fwd(bad, X, W, B, y, Activation::identity); }, "groups 4");

    // Forward: each span one short, one long, and the optional bias.
    expect_invalid([&] { api.fwd(s, X.first(X.size() - 1), W, B, y, Activation::identity); },
                   "x has 239");
    expect_invalid([&] { api.fwd(s, X, W.first(W.size() - 1), B, y, Activation::identity); },
                   "w has");
    expect_invalid([&] { api.fwd(s, X, W, B.first(5), y, Activation::identity); }, "bias has 5");
    expect_invalid(
        [&] { api.fwd(s, X, W, B, std::span<float>(y).first(y.size() - 1), Activation::identity); },
        "y has");
    std::vector<float> ylong(s.y_size() + 1, testutil::kSentinel);
    expect_invalid([&] { api.fwd(s, X, W, B, ylong, Activation::identity); }, "y has");
    CHECK(all_sentinel(ylong));
    expect_invalid([&] { api.fwd(s, X, W, B, y, static_cast<Activation>(17)); }, "value 17");

    // Backward data.
    expect_invalid([&] { api.bwd_data(s, DY.first(3), W, dx, Activation::identity, {}); },
                   "dy has 3");
    expect_invalid([&] { api.bwd_data(s, DY, W.first(1), dx, Activation::identity, {}); },
                   "w has 1");
    expect_invalid(
        [&] { api.bwd_data(s, DY, W, std::span<float>(dx).first(7), Activation::identity, {}); },
        "dx has 7");
    expect_invalid([&] { api.bwd_data(s, DY, W, dx, Activation::relu, {}); }, "input_activation");
    expect_invalid([&] { api.bwd_data(s, DY, W, dx, Activation::tanh, X.first(9)); }, "x has 9");
    expect_invalid([&] { api.bwd_data(s, DY, W, dx, Activation::identity, X.first(9)); },
                   "x has 9");
    expect_invalid([&] { api.bwd_data(s, DY, W, dx, static_cast<Activation>(-2), X); }, "value -2");

    // Backward weights.
    expect_invalid([&] { api.bwd_weights(s, X.first(1), DY, dw, db); }, "x has 1");
    expect_invalid([&] { api.bwd_weights(s, X, DY.first(2), dw, db); }, "dy has 2");
    expect_invalid([&] { api.bwd_weights(s, X, DY, std::span<float>(dw).first(4), db); },
                   "dw has 4");
    expect_invalid([&] { api.bwd_weights(s, X, DY, dw, std::span<float>(db).first(4)); },
                   "db has 4");
    untouched();

    // Outputs overlapping inputs.
    std::vector<float> buf(s.y_size() + s.x_size(), testutil::kSentinel);
    std::span<float> whole(buf);
    expect_invalid(
        [&] {
          api.fwd(s, std::span<const float>(whole).subspan(s.y_size() - 1, s.x_size()), W, B,
                  whole.first(s.y_size()), Activation::identity);
        },
        "overlaps");
    std::vector<float> wbuf(w.begin(), w.end());
    expect_invalid(
        [&] { api.bwd_weights(s, X, DY, wbuf, std::span<float>(wbuf).first(s.out_channels)); },
        "overlaps");
    std::vector<float> dxbuf(s.x_size(), testutil::kSentinel);
    expect_invalid([&] { api.bwd_data(s, DY, W, dxbuf, Activation::relu, dxbuf); }, "overlaps");
    CHECK(all_sentinel(dxbuf));
  }
}

TEST_CASE("convolution: a shape whose sizes overflow is rejected before any access") {
  for (const auto& api : kConvApis) {
    CAPTURE(api.name);
    Conv2dShape s;
    s.batch = std::int64_t{1} << 31;
    s.in_channels = std::int64_t{1} << 31;
    s.in_height = 1 << 20;
    s.in_width = 1 << 20;
    std::vector<float> y(4, testutil::kSentinel);
    expect_invalid([&] { api.fwd(s, {}, {}, {}, y, Activation::identity); }, "overflows");
    CHECK(all_sentinel(y));
  }
}

TEST_CASE("pooling: bad input throws and writes nothing") {
  for (const auto& api : kPoolApis) {
    CAPTURE(api.name);
    MaxPool2dShape s;
    s.batch = 2;
    s.channels = 3;
    s.in_height = 7;
    s.in_width = 6;
    s.kernel_height = 3;
    s.kernel_width = 3;
    s.pad_height = 1;
    s.pad_width = 1;
    const auto x = testutil::random_floats(s.x_size(), 5);
    const auto dy = testutil::random_floats(s.y_size(), 6);
    std::vector<float> y(s.y_size(), testutil::kSentinel);
    std::vector<std::int32_t> arg(s.y_size(), -7);
    std::vector<float> dx(s.x_size(), testutil::kSentinel);
    const std::span<const float> X(x), DY(dy);

    auto bad = s;
    bad.pad_height = 3;
    expect_invalid([&] { api.fwd(bad, X, y, arg); }, "pad_height 3");
    expect_invalid([&] { api.fwd(s, X.first(5), y, arg); }, "x has 5");
    expect_invalid([&] { api.fwd(s, X, std::span<float>(y).first(3), arg); }, "y has 3");
    expect_invalid([&] { api.fwd(s, X, y, std::span<std::int32_t>(arg).first(2)); },
                   "argmax has 2");
    CHECK(all_sentinel(y));
    for (auto a : arg) CHECK(a == -7);

    // A valid argmax, then corrupted one entry at a time.
    std::vector<float> y2(s.y_size());
    std::vector<std::int32_t> good(s.y_size());
    api.fwd(s, X, y2, good);
    for (std::int32_t badval :
         {-1, static_cast<std::int32_t>(s.in_height * s.in_width),
          std::numeric_limits<std::int32_t>::max(), std::numeric_limits<std::int32_t>::min()}) {
      auto corrupt = good;
      corrupt[corrupt.size() - 1] = badval;
      expect_invalid([&] { api.bwd(s, DY, corrupt, dx); }, "argmax[" +
                                                               std::to_string(corrupt.size() - 1) +
                                                               "] = " + std::to_string(badval));
      corrupt = good;
      corrupt[0] = badval;
      expect_invalid([&] { api.bwd(s, DY, corrupt, dx); }, "argmax[0]");
    }
    expect_invalid([&] { api.bwd(s, DY.first(1), good, dx); }, "dy has 1");
    expect_invalid([&] { api.bwd(s, DY, std::span<const std::int32_t>(good).first(1), dx); },
                   "argmax has 1");
    expect_invalid([&] { api.bwd(s, DY, good, std::span<float>(dx).first(1)); }, "dx has 1");
    CHECK(all_sentinel(dx));
    // Overlap: y written over x.
    std::vector<float> xy(x.begin(), x.end());
    expect_invalid([&] { api.fwd(s, xy, std::span<float>(xy).first(s.y_size()), arg); },
                   "overlaps");
  }
}

TEST_CASE("pooling: a plane too large for an int32_t index is rejected") {
  for (const auto& api : kPoolApis) {
    MaxPool2dShape s;
    s.in_height = 65536;
    s.in_width = 32768;
    std::vector<float> y(1, testutil::kSentinel);
    std::vector<std::int32_t> arg(1, 3);
    expect_invalid([&] { api.fwd(s, {}, y, arg); }, "int32_t");
    CHECK(y[0] == testutil::kSentinel);
    CHECK(arg[0] == 3);
  }
}
