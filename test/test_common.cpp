#include <algorithm>
// Activations, threads, the BLAS self-report and shape validation.
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "common/crc32.hpp"
#include "test_util.hpp"

using namespace im2gemm;

TEST_CASE("activation_forward computes each activation") {
  std::vector<float> v{-2.0f, -0.5f, 0.0f, 0.5f, 2.0f};
  auto r = v;
  activation_forward(Activation::relu, r);
  CHECK(r == std::vector<float>{0.0f, 0.0f, 0.0f, 0.5f, 2.0f});
  auto s = v;
  activation_forward(Activation::sigmoid, s);
  for (std::size_t i = 0; i < v.size(); ++i)
    CHECK(s[i] == doctest::Approx(1.0 / (1.0 + std::exp(-v[i]))));
  auto t = v;
  activation_forward(Activation::tanh, t);
  for (std::size_t i = 0; i < v.size(); ++i) CHECK(t[i] == doctest::Approx(std::tanh(v[i])));
  auto id = v;
  activation_forward(Activation::identity, id);
  CHECK(id == v);
}

TEST_CASE("activation_backward multiplies by the derivative computed from the output") {
  const std::vector<float> u{-2.0f, -0.5f, 0.25f, 0.5f, 2.0f};
  for (Activation a :
       {Activation::identity, Activation::relu, Activation::sigmoid, Activation::tanh}) {
    CAPTURE(static_cast<int>(a));
    std::vector<float> y = u;
    activation_forward(a, y);
    std::vector<float> d(u.size(), 3.0f);
    activation_backward(a, y, d);
    for (std::size_t i = 0; i < u.size(); ++i) {
      // central difference of f at u
      const double h = 1e-3;
      auto f = [&](double z) {
        switch (a) {
          case Activation::relu: return z > 0 ? z : 0.0;
          case Activation::sigmoid: return 1.0 / (1.0 + std::exp(-z));
          case Activation::tanh: return std::tanh(z);
          default: return z;
        }
      };
      const double fd = (f(u[i] + h) - f(u[i] - h)) / (2 * h);
      CHECK(d[i] == doctest::Approx(3.0 * fd).epsilon(1e-3));
    }
  }
}

TEST_CASE("activation functions reject bad input and write nothing") {
  std::vector<float> v{1.0f, 2.0f};
  CHECK_THROWS_AS(activation_forward(static_cast<Activation>(4), v), std::invalid_argument);
  CHECK_THROWS_AS(activation_forward(static_cast<Activation>(-1), v), std::invalid_argument);
  CHECK(v == std::vector<float>{1.0f, 2.0f});
  std::vector<float> y{0.5f, 0.5f, 0.5f};
  CHECK_THROWS_AS(activation_backward(Activation::relu, y, v), std::invalid_argument);
  CHECK_THROWS_AS(activation_backward(static_cast<Activation>(9),
                                      std::span<const float>(y).first(2), v),
                  std::invalid_argument);
  CHECK(v == std::vector<float>{1.0f, 2.0f});
  try {
    activation_backward(Activation::relu, y, v);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("3") != std::string::npos);
    CHECK(std::string(e.what()).find("2") != std::string::npos);
  }
}

TEST_CASE("set_num_threads and num_threads") {
  const int before = num_threads();
  CHECK(before >= 1);
  set_num_threads(1);
  CHECK(num_threads() == 1);
  set_num_threads(3);
  CHECK(num_threads() == 3);
  CHECK_THROWS_AS(set_num_threads(-1), std::invalid_argument);
  CHECK(num_threads() == 3);
  set_num_threads(0);
  CHECK(num_threads() >= 1);
}

TEST_CASE("blas_info reports OpenBLAS and the kernel it runs") {
  const auto info = blas_info();
  MESSAGE(info.summary());
  CHECK(info.library.find("OpenBLAS") != std::string::npos);
  CHECK_FALSE(info.core.empty());
  CHECK(info.parallel == "OpenMP");
  CHECK(info.threads >= 1);
  CHECK(info.summary().find(info.core) != std::string::npos);
  auto lower = [](std::string v) {
    for (auto& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return v;
  };
  if (std::getenv("IM2GEMM_EXPECT_FALLBACK")) {
    // Run by meson with OPENBLAS_CORETYPE=Prescott: the generic kernel on a CPU that can do
    // better must be reported, with the kernel to choose instead.
    CHECK(lower(info.core) == "prescott");
    if (!info.cpu_best.empty()) {
      CHECK(info.fallback);
      CHECK(info.summary().find("OPENBLAS_CORETYPE=" + info.cpu_best) != std::string::npos);
    }
  } else if (const char* ct = std::getenv("OPENBLAS_CORETYPE")) {
    // The scripts export OPENBLAS_CORETYPE when OpenBLAS falls back; under them the test suite
    // runs the kernel they chose, and that kernel is not a fallback.
    CHECK(lower(info.core) == lower(ct));
    CHECK_FALSE(info.fallback);
  }
}

TEST_CASE("engine_info: what the kernels run; a bad IM2GEMM_ISA or IM2GEMM_GEMM is an error") {
  if (std::getenv("IM2GEMM_EXPECT_BAD_ENV")) {
    // Run by meson with IM2GEMM_ISA=avx1024 IM2GEMM_GEMM=fastest: every entry point that
    // depends on them throws std::invalid_argument naming the variable and the allowed values,
    // and writes nothing.
    auto message = [](auto&& f) {
      try {
        f();
      } catch (const std::invalid_argument& e) {
        return std::string(e.what());
      }
      return std::string("no exception");
    };
    const std::string m = message([] { (void)im2gemm::engine_info(); });
    CHECK(m.find("IM2GEMM_ISA='avx1024'") != std::string::npos);
    CHECK(m.find("scalar, avx2, avx512") != std::string::npos);
    im2gemm::Conv2dShape s{
        .batch = 1, .in_channels = 2, .in_height = 5, .in_width = 5, .out_channels = 3};
    std::vector<float> x(static_cast<std::size_t>(s.x_size()), 1.0f),
        w(static_cast<std::size_t>(s.w_size()), 1.0f);
    std::vector<float> y(static_cast<std::size_t>(s.y_size()), testutil::kSentinel);
    const std::string mc = message([&] { im2gemm::conv2d_forward(s, x, w, {}, y); });
    CHECK((mc.find("IM2GEMM_ISA") != std::string::npos ||
           mc.find("IM2GEMM_GEMM") != std::string::npos));
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == testutil::kSentinel; }));
    im2gemm::MaxPool2dShape ps{.batch = 1, .channels = 1, .in_height = 4, .in_width = 4};
    std::vector<float> px(16, 1.0f), py(4, testutil::kSentinel);
    std::vector<std::int32_t> arg(4, -7);
    CHECK(message([&] { im2gemm::maxpool2d_forward(ps, px, py, arg); }).find("IM2GEMM_ISA") !=
          std::string::npos);
    CHECK(py[0] == testutil::kSentinel);
    return;
  }
  const im2gemm::EngineInfo e = im2gemm::engine_info();
  CHECK((e.isa == "scalar" || e.isa == "avx2" || e.isa == "avx512"));
  CHECK((e.conv_gemm == "auto" || e.conv_gemm == "packed" || e.conv_gemm == "openblas"));
  CHECK(e.summary().find(e.isa) != std::string::npos);
  if (const char* cap = std::getenv("IM2GEMM_ISA")) {
    // The cap holds unless the CPU has less.
    const std::string c = cap;
    CHECK(
        (e.isa == c || (c == "avx512" && e.isa != "avx512") || (c == "avx2" && e.isa == "scalar")));
  }
}

namespace {
Conv2dShape good_conv() {
  Conv2dShape s;
  s.batch = 2;
  s.in_channels = 4;
  s.in_height = 9;
  s.in_width = 7;
  s.out_channels = 6;
  s.kernel_height = 3;
  s.kernel_width = 2;
  s.stride_height = 2;
  s.stride_width = 1;
  s.pad_height = 1;
  s.pad_width = 0;
  s.dilation_height = 1;
  s.dilation_width = 2;
  s.groups = 2;
  return s;
}

void check_rejects(const Conv2dShape& s, const std::string& needle) {
  CAPTURE(needle);
  try {
    s.validate();
    FAIL("validate() accepted a bad shape");
  } catch (const std::invalid_argument& e) {
    CAPTURE(e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}
}  // namespace

TEST_CASE("Conv2dShape: output size and sizes") {
  const auto s = good_conv();
  s.validate();
  CHECK(s.out_height() == (9 + 2 - 3) / 2 + 1);
  CHECK(s.out_width() == (7 - 3) / 1 + 1);
  CHECK(s.x_size() == 2 * 4 * 9 * 7);
  CHECK(s.w_size() == 6 * 2 * 3 * 2);
  CHECK(s.y_size() == 2 * 6 * 5 * 5);
  CHECK(s.macs() == 2 * 6 * 5 * 5 * 2 * 3 * 2);
}

TEST_CASE("Conv2dShape::validate names the field and value") {
  auto s = good_conv();
  s.batch = 0;
  check_rejects(s, "batch");
  s = good_conv();
  s.in_channels = -1;
  check_rejects(s, "in_channels must be >= 1, got -1");
  s = good_conv();
  s.in_height = 0;
  check_rejects(s, "in_height");
  s = good_conv();
  s.in_width = 0;
  check_rejects(s, "in_width");
  s = good_conv();
  s.out_channels = 0;
  check_rejects(s, "out_channels");
  s = good_conv();
  s.kernel_height = 0;
  check_rejects(s, "kernel_height");
  s = good_conv();
  s.kernel_width = -3;
  check_rejects(s, "kernel_width must be >= 1, got -3");
  s = good_conv();
  s.stride_height = 0;
  check_rejects(s, "stride_height");
  s = good_conv();
  s.stride_width = 0;
  check_rejects(s, "stride_width");
  s = good_conv();
  s.pad_height = -1;
  check_rejects(s, "pad_height must be >= 0, got -1");
  s = good_conv();
  s.pad_width = -2;
  check_rejects(s, "pad_width");
  s = good_conv();
  s.dilation_height = 0;
  check_rejects(s, "dilation_height");
  s = good_conv();
  s.dilation_width = 0;
  check_rejects(s, "dilation_width");
  s = good_conv();
  s.groups = 0;
  check_rejects(s, "groups");
  s = good_conv();
  s.groups = 3;
  check_rejects(s, "in_channels 4 is not divisible by groups 3");
  s = good_conv();
  s.groups = 4;
  check_rejects(s, "out_channels 6 is not divisible by groups 4");
  s = good_conv();
  s.kernel_height = 12;
  check_rejects(s, "height kernel extent 12");
  s = good_conv();
  s.dilation_width = 9;
  check_rejects(s, "width kernel extent 10");
  s = good_conv();
  s.in_height = std::int64_t{1} << 40;
  s.in_width = std::int64_t{1} << 40;
  check_rejects(s, "overflows");
  s = good_conv();
  // Strides, pads and dilations above 2^31 - 1 are rejected by name before any arithmetic.
  s.pad_height = std::numeric_limits<std::int64_t>::max() / 2 + 1;
  check_rejects(s, "pad_height must be <= 2147483647 (2^31 - 1), got 4611686018427387904");
  s = good_conv();
  s.kernel_height = std::int64_t{1} << 40;
  s.dilation_height = std::int64_t{1} << 40;
  check_rejects(s, "dilation_height must be <= 2147483647");
  s = good_conv();
  s.kernel_height = std::int64_t{1} << 40;
  s.dilation_height = im2gemm::kMaxStridePadDilation;
  check_rejects(s, "overflows");
}

TEST_CASE("MaxPool2dShape::validate") {
  MaxPool2dShape p;
  p.batch = 2;
  p.channels = 3;
  p.in_height = 7;
  p.in_width = 6;
  p.kernel_height = 3;
  p.kernel_width = 2;
  p.stride_height = 2;
  p.stride_width = 3;
  p.pad_height = 1;
  p.pad_width = 1;
  p.validate();
  CHECK(p.out_height() == (7 + 2 - 3) / 2 + 1);
  CHECK(p.out_width() == (6 + 2 - 2) / 3 + 1);
  auto bad = [&](auto mutate, const std::string& needle) {
    auto q = p;
    mutate(q);
    CAPTURE(needle);
    try {
      q.validate();
      FAIL("validate() accepted a bad shape");
    } catch (const std::invalid_argument& e) {
      CAPTURE(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  bad([](auto& q) { q.batch = 0; }, "batch");
  bad([](auto& q) { q.channels = 0; }, "channels");
  bad([](auto& q) { q.in_height = 0; }, "in_height");
  bad([](auto& q) { q.kernel_width = 0; }, "kernel_width");
  bad([](auto& q) { q.stride_height = -1; }, "stride_height must be >= 1, got -1");
  bad([](auto& q) { q.pad_height = 3; }, "pad_height 3 must be smaller than kernel_height 3");
  bad([](auto& q) { q.pad_width = 2; }, "pad_width 2");
  bad([](auto& q) { q.pad_width = -1; }, "pad_width must be >= 0");
  bad(
      [](auto& q) {
        q.kernel_height = 10;
        q.pad_height = 1;
      },
      "kernel extent 10");
  bad(
      [](auto& q) {
        q.in_height = 50000;
        q.in_width = 50000;
      },
      "int32_t");
}

TEST_CASE("crc32: the standard check values") {
  using im2gemm::detail::crc32;
  const std::string check = "123456789";
  CHECK(crc32(0, check.data(), check.size()) == 0xCBF43926u);
  CHECK(crc32(0, check.data(), 0) == 0u);
  CHECK(crc32(0, "a", 1) == 0xE8B7BE43u);
  const std::string fox = "The quick brown fox jumps over the lazy dog";
  CHECK(crc32(0, fox.data(), fox.size()) == 0x414FA339u);
  CHECK(crc32(crc32(0, check.data(), 4), check.data() + 4, 5) == 0xCBF43926u);  // continued
  const std::vector<unsigned char> zeros(32, 0), ones(32, 0xFF);
  CHECK(crc32(0, zeros.data(), zeros.size()) == 0x190A55ADu);
  CHECK(crc32(0, ones.data(), ones.size()) == 0xFF6CAB0Bu);
}
