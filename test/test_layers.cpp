// The layer API: every backward against finite differences, training on a tiny set,
// parameter files (round trip and every kind of bad file), seeding, shapes.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "common/crc32.hpp"
#include "test_util.hpp"

using namespace im2gemm;
namespace fs = std::filesystem;

namespace {

// Tolerances of the finite-difference checks. The layers compute in fp32; the check takes
// central differences with a step of 3e-3, E accumulated in double. The worst errors observed
// on these shapes are below 3e-3 (rounding of the fp32 outputs); 2e-2 leaves a factor of ~7,
// while a real mistake (a wrong index, a missing activation derivative, a factor of 2) gives
// 0.3 and more (see the broken layer below).
constexpr double kGradTol = 2e-2;

const Activation kActs[] = {Activation::identity, Activation::relu, Activation::sigmoid,
                            Activation::tanh};

const char* act_str(Activation a) {
  switch (a) {
    case Activation::identity: return "identity";
    case Activation::relu: return "relu";
    case Activation::sigmoid: return "sigmoid";
    case Activation::tanh: return "tanh";
  }
  return "?";
}

void check_gradients(Layer& layer, const std::vector<float>& x, std::int64_t batch) {
  Rng rng(7);
  layer.init(rng);
  // Non-zero biases so that bias gradients and activation kinks are exercised.
  for (auto& p : layer.parameters()) {
    if (p.name == "bias") {
      for (std::size_t i = 0; i < p.value.size(); ++i)
        p.value[i] = 0.1f * static_cast<float>(i % 5) - 0.2f;
    }
  }
  const auto r = gradient_check(layer, x, batch);
  INFO(layer.name() << ": worst " << r.worst << "; checked " << r.checked << ", kinks " << r.kinks);
  CHECK(r.checked > 0);
  CHECK(r.max_error < kGradTol);
  CHECK(r.kinks * 10 <= r.checked);  // a kink now and then, not the rule
}

/// The small network of the training and file tests: conv 3x3 4 relu -> pool 2 -> dense 3.
Sequential small_net(std::int64_t dense_out = 3) {
  Sequential net(Shape3{1, 6, 6});
  net.add_conv2d(4, 3, Activation::relu);
  net.add_maxpool2d(2);
  net.add_dense(dense_out, Activation::identity);
  return net;
}

std::vector<std::vector<float>> snapshot(Sequential& net) {
  std::vector<std::vector<float>> s;
  for (auto& p : net.parameters()) s.emplace_back(p.value.begin(), p.value.end());
  return s;
}

bool same(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!testutil::bitwise_equal(a[i], b[i])) return false;
  return true;
}

}  // namespace

TEST_CASE("Conv2dLayer backward matches finite differences, every activation") {
  for (Activation a : kActs) {
    CAPTURE(act_str(a));
    {  // stride 1, no padding, batch 2
      Conv2dLayer conv(Shape3{3, 6, 5}, 4, 3, a);
      check_gradients(conv, testutil::random_floats(2 * 3 * 6 * 5, 11), 2);
    }
    {  // stride 2, padding 1, non-square kernel through the general constructor
      Conv2dShape g;
      g.in_channels = 2, g.in_height = 7, g.in_width = 6, g.out_channels = 3;
      g.kernel_height = 3, g.kernel_width = 2, g.stride_height = 2, g.stride_width = 1;
      g.pad_height = 1, g.pad_width = 1;
      Conv2dLayer conv(g, a);
      CHECK(conv.output_shape() == Shape3{3, 4, 7});
      check_gradients(conv, testutil::random_floats(3 * 2 * 7 * 6, 12), 3);
    }
  }
}

namespace {
/// y = 3x, with a backward that is wrong on purpose (2 dy): the check must catch it.
class BrokenScale : public Layer {
 public:
  std::string name() const override { return "broken scale"; }
  Shape3 input_shape() const override { return {2, 2, 2}; }
  Shape3 output_shape() const override { return {2, 2, 2}; }
  std::span<const float> forward(std::span<const float> x, std::int64_t batch) override {
    check_forward("BrokenScale", x, batch);
    batch_ = batch;
    y_.resize(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y_[i] = 3 * x[i];
    return y_;
  }
  std::span<const float> backward(std::span<const float> dy, bool) override {
    check_backward("BrokenScale", dy);
    dx_.resize(dy.size());
    for (std::size_t i = 0; i < dy.size(); ++i) dx_[i] = 2 * dy[i];
    return dx_;
  }

 private:
  std::vector<float> y_, dx_;
};
}  // namespace

TEST_CASE("gradient_check catches a wrong backward") {
  BrokenScale broken;
  const auto r = gradient_check(broken, testutil::random_floats(16, 1), 2);
  INFO(r.worst);
  CHECK(r.checked == 16);
  CHECK(r.max_error > 0.3);
}

TEST_CASE("MaxPool2dLayer backward matches finite differences") {
  // Distinct values 0.05 apart: a +-1e-3 step never changes a window's winner.
  auto distinct = [](std::size_t n, std::uint32_t seed) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = 0.05f * static_cast<float>(i) - 1.0f;
    Rng rng(seed);
    for (std::size_t i = n; i-- > 1;) std::swap(v[i], v[rng.below(i + 1)]);
    return v;
  };
  MaxPool2dLayer pool(Shape3{3, 6, 7}, 2);
  CHECK(pool.output_shape() == Shape3{3, 3, 3});
  check_gradients(pool, distinct(2 * 3 * 6 * 7, 3), 2);
  MaxPool2dLayer overlap(Shape3{2, 7, 7}, 3, 2);  // overlapping windows: gradients add up
  const auto x = distinct(2 * 7 * 7, 4);
  check_gradients(overlap, x, 1);
  // Every checked input entry: the check compares all 98 (max_per_tensor 48 -> use a bigger one)
  GradientCheckOptions all;
  all.max_per_tensor = 1000;
  const auto r = gradient_check(overlap, x, 1, all);
  CHECK(r.checked == 98);
  CHECK(r.max_error < kGradTol);
  CHECK(r.kinks == 0);
}

TEST_CASE("DenseLayer backward matches finite differences, every activation") {
  for (Activation a : kActs) {
    CAPTURE(act_str(a));
    DenseLayer dense(Shape3{2, 3, 2}, 5, a);
    CHECK(dense.output_shape() == Shape3{5, 1, 1});
    check_gradients(dense, testutil::random_floats(4 * 12, 21), 4);
  }
}

TEST_CASE("softmax cross-entropy: gradient, value, stability") {
  SoftmaxCrossEntropy loss;
  const auto z = testutil::random_floats(4 * 5, 31, -3.0f, 3.0f);
  const std::vector<std::int32_t> labels{0, 4, 2, 2};
  GradientCheckOptions all;
  all.max_per_tensor = 100;
  const auto r = gradient_check(loss, z, labels, 5, all);
  INFO(r.worst);
  CHECK(r.checked == 20);
  CHECK(r.max_error < kGradTol);

  // Value: two classes with equal logits cost log 2; huge logits stay finite.
  const std::vector<float> z2{1000.0f, 1000.0f, -1e4f, 1e4f};
  const std::vector<std::int32_t> l2{0, 1};
  const float e = loss.forward(z2, l2, 2);
  CHECK(e == doctest::Approx(std::log(2.0) / 2).epsilon(1e-6));
  CHECK(loss.correct() == 2);  // a tie goes to the first class (label 0), the 2nd is clear
  const auto g = loss.backward();
  CHECK(g[0] == doctest::Approx(-0.25));
  CHECK(g[1] == doctest::Approx(0.25));
  CHECK(g[2] == 0.0f);
  CHECK(g[3] == 0.0f);

  const std::vector<std::int32_t> bad{0, 2};
  CHECK(testutil::error_of([&] { loss.forward(z2, bad, 2); }).find("label 1 is 2") !=
        std::string::npos);
  CHECK(testutil::error_of([&] { loss.forward(z2, l2, 3); }).find("logits has 4 elements") !=
        std::string::npos);
}

TEST_CASE("SGD with momentum and weight decay follows PyTorch's formula") {
  DenseLayer d(Shape3{2, 1, 1}, 1, Activation::identity);
  d.weights()[0] = 1.0f, d.weights()[1] = -2.0f, d.bias()[0] = 0.5f;
  const std::vector<float> x{1.0f, 1.0f};
  const std::vector<float> dy{1.0f};
  Sgd sgd{0.1f, 0.5f, 0.01f};
  d.forward(x, 1);
  d.backward(dy);  // grad w = x = (1, 1), grad b = 1
  d.update(sgd);
  // v = g + wd*w = (1.01, 0.98), b: 1 (no decay); w -= 0.1 v
  CHECK(d.weights()[0] == doctest::Approx(1.0 - 0.101));
  CHECK(d.weights()[1] == doctest::Approx(-2.0 - 0.098));
  CHECK(d.bias()[0] == doctest::Approx(0.4));
  const float w0 = d.weights()[0];
  d.forward(x, 1);
  d.backward(dy);
  d.update(sgd);  // v = 0.5*1.01 + 1 + 0.01*w0
  CHECK(d.weights()[0] == doctest::Approx(w0 - 0.1 * (0.5 * 1.01 + 1.0 + 0.01 * w0)));
  CHECK(d.bias()[0] == doctest::Approx(0.4 - 0.1 * 1.5));
  CHECK_THROWS_AS(d.update(Sgd{0.1f, 1.0f, 0.0f}), std::invalid_argument);
  CHECK_THROWS_AS(d.update(Sgd{-0.1f, 0.9f, 0.0f}), std::invalid_argument);
}

TEST_CASE("a small network learns a tiny synthetic set: the loss falls at least 10-fold") {
  // Three classes of 6x6 images: a bright vertical bar, a horizontal bar, a diagonal, at
  // random places, plus noise. 48 images, minibatches of 16, 60 epochs.
  const std::int64_t n = 48, batch = 16;
  std::vector<float> x(static_cast<std::size_t>(n * 36));
  std::vector<std::int32_t> y(static_cast<std::size_t>(n));
  Rng rng(5);
  for (std::int64_t i = 0; i < n; ++i) {
    const int c = static_cast<int>(i % 3);
    y[i] = c;
    float* img = &x[i * 36];
    for (int k = 0; k < 36; ++k) img[k] = static_cast<float>(0.2 * rng.normal());
    const int at = 1 + static_cast<int>(rng.below(4));
    for (int k = 0; k < 6; ++k) {
      if (c == 0) img[k * 6 + at] += 1.0f;
      if (c == 1) img[at * 6 + k] += 1.0f;
      if (c == 2) img[k * 6 + k] += 1.0f;
    }
  }
  Sequential net = small_net();
  net.init(3);
  SoftmaxCrossEntropy loss;
  const Sgd sgd{0.05f, 0.9f, 0.0f};
  auto epoch_loss = [&](bool train) {
    double total = 0;
    for (std::int64_t b = 0; b < n; b += batch) {
      std::span<const float> xb(&x[b * 36], static_cast<std::size_t>(batch * 36));
      std::span<const std::int32_t> yb(&y[b], static_cast<std::size_t>(batch));
      if (train) {
        total += net.train_step(xb, yb, batch, loss, sgd);
      } else {
        total += loss.forward(net.forward(xb, batch), yb, 3);
      }
    }
    return total / (n / batch);
  };
  const double before = epoch_loss(false);
  for (int e = 0; e < 60; ++e) epoch_loss(true);
  const double after = epoch_loss(false);
  INFO("loss before " << before << ", after " << after);
  CHECK(before > 0.5);
  CHECK(after * 10 < before);
  // Every layer was timed.
  for (const auto& t : net.timings()) {
    CHECK(t.forward_calls > 0);
    CHECK(t.backward_calls > 0);
  }
}

TEST_CASE("training is deterministic: same seed, same data, bitwise the same weights") {
  auto run = [] {
    Sequential net = small_net();
    net.init(9);
    SoftmaxCrossEntropy loss;
    const auto x = testutil::random_floats(8 * 36, 2);
    const std::vector<std::int32_t> y{0, 1, 2, 0, 1, 2, 0, 1};
    for (int i = 0; i < 5; ++i) net.train_step(x, y, 8, loss, Sgd{});
    return snapshot(net);
  };
  CHECK(same(run(), run()));
}

TEST_CASE("seeded initialisation: same seed, same weights; another seed, others") {
  Sequential a = small_net(), b = small_net(), c = small_net();
  a.init(42);
  b.init(42);
  c.init(43);
  CHECK(same(snapshot(a), snapshot(b)));
  CHECK(!same(snapshot(a), snapshot(c)));
  // He normal for the relu conv: the sample deviation is near sqrt(2/9).
  Conv2dLayer big(Shape3{8, 9, 9}, 64, 3, Activation::relu);
  Rng rng(1);
  big.init(rng);
  double s2 = 0;
  for (float w : big.weights()) s2 += double(w) * w;
  const double sd = std::sqrt(s2 / static_cast<double>(big.weights().size()));
  CHECK(sd == doctest::Approx(std::sqrt(2.0 / 72)).epsilon(0.05));
  for (float b0 : big.bias()) CHECK(b0 == 0.0f);
  // PyTorch's default: uniform in +-1/sqrt(fan_in), biases too; variance 1/(3 fan_in).
  big.init(rng, Init::pytorch);
  const double bound = 1.0 / std::sqrt(72.0);
  s2 = 0;
  for (float w : big.weights()) {
    CHECK(std::fabs(w) <= bound);
    s2 += double(w) * w;
  }
  CHECK(s2 / static_cast<double>(big.weights().size()) ==
        doctest::Approx(bound * bound / 3).epsilon(0.05));
  int nonzero = 0;
  for (float b0 : big.bias()) {
    CHECK(std::fabs(b0) <= bound);
    nonzero += b0 != 0.0f;
  }
  CHECK(nonzero == 64);
  Sequential p1 = small_net(), p2 = small_net();
  p1.init(42, Init::pytorch);
  p2.init(42, Init::pytorch);
  CHECK(same(snapshot(p1), snapshot(p2)));
  CHECK(!same(snapshot(p1), snapshot(a)));
  const auto before = snapshot(p1);
  CHECK_THROWS_AS(p1.init(1, static_cast<Init>(7)), std::invalid_argument);
  CHECK(same(snapshot(p1), before));
  // The generator itself: fixed output for a fixed seed (portable across standard libraries).
  Rng r1(123), r2(123);
  for (int i = 0; i < 10; ++i) CHECK(r1.next() == r2.next());
  Rng r3(0);
  CHECK(r3.next() == 0x99ec5f36cb75f2b4ull);  // xoshiro256** from splitmix64(0)
}

TEST_CASE("Sequential's fused conv -> pool backward gives the layers' own gradients") {
  for (Activation a : kActs) {
    CAPTURE(act_str(a));
    auto build = [&] {
      Sequential net(Shape3{2, 9, 8});
      net.add_conv2d(3, 3, a);                                           // -> 3x7x6
      net.add(std::make_unique<MaxPool2dLayer>(Shape3{3, 7, 6}, 3, 2));  // overlapping -> 3x3x2
      net.add_dense(4, Activation::identity);
      net.init(11);
      return net;
    };
    Sequential fused = build(), plain = build();
    const auto x = testutil::random_floats(2 * 2 * 9 * 8, 8);
    const auto dy = testutil::random_floats(2 * 4, 9);
    fused.forward(x, 2);
    const auto dxf = fused.backward(dy, true);
    const std::vector<float> dx_fused(dxf.begin(), dxf.end());
    plain.forward(x, 2);
    std::span<const float> d = dy;
    for (std::size_t i = plain.size(); i-- > 0;) d = plain.layer(i).backward(d, true);
    const bool exact = a == Activation::identity || a == Activation::relu;
    auto pf = fused.parameters(), pp = plain.parameters();
    REQUIRE(pf.size() == pp.size());
    for (std::size_t i = 0; i < pf.size(); ++i) {
      CAPTURE(pf[i].name);
      if (exact) CHECK(testutil::bitwise_equal(pf[i].grad, pp[i].grad));
      else CHECK_CLOSE_SPANS(pf[i].grad, pp[i].grad, 1e-6f, 1e-5f);
    }
    if (exact) CHECK(testutil::bitwise_equal(dx_fused, d));
    else CHECK_CLOSE_SPANS(std::span<const float>(dx_fused), d, 1e-6f, 1e-5f);
  }
}

namespace {
/// A layer with parameters that does not implement place_parameters.
class UnplaceableLayer : public Layer {
 public:
  explicit UnplaceableLayer(Shape3 s) : s_(s), w_(1, 0.5f), g_(1, 0.0f) {}
  std::string name() const override { return "unplaceable"; }
  Shape3 input_shape() const override { return s_; }
  Shape3 output_shape() const override { return s_; }
  std::span<const float> forward(std::span<const float> x, std::int64_t batch) override {
    batch_ = batch;
    y_.assign(x.begin(), x.end());
    return y_;
  }
  std::span<const float> backward(std::span<const float> dy, bool) override {
    y_.assign(dy.begin(), dy.end());
    return y_;
  }
  std::vector<Parameter> parameters() override { return {Parameter{"scale", {1}, w_, g_, true}}; }

 private:
  Shape3 s_;
  std::vector<float> w_, g_, y_;
};
}  // namespace

TEST_CASE("Sequential's contiguous views hold every parameter and gradient in parameters() order") {
  Sequential net = small_net();
  net.init(4);
  const auto before = snapshot(net);
  const auto values = net.parameter_values();
  const auto grads = net.parameter_gradients();
  REQUIRE(static_cast<std::int64_t>(values.size()) == net.parameter_count());
  REQUIRE(grads.size() == values.size());
  CHECK(same(snapshot(net), before));  // moving them kept every value
  // parameters() now views the buffers, one tensor after another.
  std::size_t at = 0;
  for (auto& p : net.parameters()) {
    CHECK(p.value.data() == values.data() + at);
    CHECK(p.grad.data() == grads.data() + at);
    at += p.value.size();
  }
  CHECK(at == values.size());
  CHECK(net.parameter_offset(0) == 0);
  CHECK(net.parameter_offset(1) == 4 * 9 + 4);  // conv 3x3x4 with bias
  CHECK(net.parameter_offset(2) == 40);         // pooling has none
  CHECK(net.parameter_offset(3) == net.parameter_count());
  CHECK_THROWS_AS(net.parameter_offset(4), std::invalid_argument);

  // backward writes the gradients into the view: the same numbers as a network never viewed.
  Sequential plain = small_net();
  plain.init(4);
  const auto x = testutil::random_floats(5 * 36, 11);
  std::fill(grads.begin(), grads.end(), std::numeric_limits<float>::quiet_NaN());
  const auto dy = testutil::random_floats(5 * 3, 12);
  net.forward(x, 5);
  net.backward(dy);
  plain.forward(x, 5);
  plain.backward(dy);
  std::vector<float> expect;
  for (auto& p : plain.parameters()) expect.insert(expect.end(), p.grad.begin(), p.grad.end());
  CHECK(testutil::bitwise_equal(std::vector<float>(grads.begin(), grads.end()), expect));

  // Writing the view sets the parameters; set_parameters copies a whole buffer.
  values[0] = 7.0f;
  CHECK(net.parameters()[0].value[0] == 7.0f);
  std::vector<float> other(values.size());
  for (std::size_t i = 0; i < other.size(); ++i) other[i] = static_cast<float>(i) * 0.001f;
  net.set_parameters(other);
  CHECK(testutil::bitwise_equal(std::vector<float>(values.begin(), values.end()), other));
  std::vector<float> short_buf(other.size() - 1, 1.0f);
  const std::string msg = testutil::error_of([&] { net.set_parameters(short_buf); });
  CHECK(msg.find(std::to_string(short_buf.size()) + " values for " +
                 std::to_string(other.size())) != std::string::npos);
  CHECK(testutil::bitwise_equal(std::vector<float>(values.begin(), values.end()), other));
}

TEST_CASE(
    "Sequential's views: training through them, adding a layer after, a layer that cannot move") {
  // Training a network whose parameters live in the views gives bitwise the same weights.
  auto train = [](bool viewed) {
    Sequential net = small_net();
    net.init(9);
    if (viewed) net.parameter_values();
    SoftmaxCrossEntropy loss;
    const auto x = testutil::random_floats(8 * 36, 2);
    const std::vector<std::int32_t> y{0, 1, 2, 0, 1, 2, 0, 1};
    for (int i = 0; i < 5; ++i) net.train_step(x, y, 8, loss, Sgd{});
    return snapshot(net);
  };
  CHECK(same(train(true), train(false)));

  // add() after the views were made: the next call moves everything again, values kept.
  Sequential net(Shape3{1, 6, 6});
  net.add_conv2d(2, 3, Activation::relu);
  net.init(1);
  const std::int64_t first = net.parameter_count();
  const std::vector<float> conv(net.parameter_values().begin(), net.parameter_values().end());
  net.add_dense(3, Activation::identity);
  net.layer(1).parameters()[0].value[0] = 2.5f;
  const auto values = net.parameter_values();
  REQUIRE(static_cast<std::int64_t>(values.size()) == net.parameter_count());
  CHECK(testutil::bitwise_equal(std::vector<float>(values.begin(), values.begin() + first), conv));
  CHECK(values[static_cast<std::size_t>(first)] == 2.5f);
  CHECK(net.layer(1).parameters()[0].value.data() == values.data() + first);

  // A layer type without place_parameters: a clear error, and the network keeps working.
  Sequential mixed(Shape3{1, 6, 6});
  mixed.add_conv2d(2, 3, Activation::relu);
  mixed.add(std::make_unique<UnplaceableLayer>(mixed.output_shape()));
  mixed.add_dense(3, Activation::identity);
  mixed.init(2);
  const auto kept = snapshot(mixed);
  const std::string msg = testutil::error_of([&] { mixed.parameter_values(); });
  CHECK(msg.find("'unplaceable' has parameters but does not implement place_parameters") !=
        std::string::npos);
  CHECK(same(snapshot(mixed), kept));
  CHECK_THROWS_AS(mixed.parameter_gradients(), std::invalid_argument);
  CHECK(same(snapshot(mixed), kept));
  const auto x = testutil::random_floats(2 * 36, 3);
  CHECK(mixed.forward(x, 2).size() == 6);
}

TEST_CASE("Sequential::backward's gradients_ready: every layer, last first, gradients final") {
  Sequential net(Shape3{1, 10, 10});
  net.add_conv2d(3, 3, Activation::relu);  // fused with the pool after it
  net.add_maxpool2d(2);
  net.add_dense(6, Activation::tanh);
  net.add_dense(3, Activation::identity);
  net.init(6);
  const auto grads = net.parameter_gradients();
  const auto x = testutil::random_floats(4 * 100, 21);
  const auto dy = testutil::random_floats(4 * 3, 22);
  net.forward(x, 4);
  std::vector<std::size_t> order;
  std::vector<std::vector<float>> seen(net.size());  // layer i's gradient slice when reported
  net.backward(dy, false, [&](std::size_t i) {
    order.push_back(i);
    seen[i].assign(grads.begin() + net.parameter_offset(i),
                   grads.begin() + net.parameter_offset(i + 1));
  });
  CHECK(order == std::vector<std::size_t>{3, 2, 1, 0});
  for (std::size_t i = 0; i < net.size(); ++i) {
    CAPTURE(i);
    CHECK(testutil::bitwise_equal(seen[i],
                                  std::vector<float>(grads.begin() + net.parameter_offset(i),
                                                     grads.begin() + net.parameter_offset(i + 1))));
  }
  CHECK(!seen[0].empty());
}

TEST_CASE("Sequential rejects a layer whose input shape does not match") {
  Sequential net(Shape3{1, 28, 28});
  net.add_conv2d(20, 5, Activation::relu);  // -> 20x24x24
  net.add_maxpool2d(2);                     // -> 20x12x12
  const std::string msg = testutil::error_of([&] {
    net.add(std::make_unique<Conv2dLayer>(Shape3{10, 12, 12}, 50, 5, Activation::relu));
  });
  CHECK(msg.find("takes 10x12x12") != std::string::npos);
  CHECK(msg.find("gives 20x12x12") != std::string::npos);
  CHECK(net.size() == 2);
  CHECK_THROWS_AS(net.add(
                      std::make_unique<DenseLayer>(Shape3{2880, 1, 1}, 10, Activation::identity)),
                  std::invalid_argument);
  net.add(std::make_unique<DenseLayer>(Shape3{20, 12, 12}, 10, Activation::identity));
  CHECK(net.size() == 3);
  CHECK(net.output_shape() == Shape3{10, 1, 1});

  // Wrong sizes at run time.
  std::vector<float> x(2 * 784);
  CHECK(testutil::error_of([&] { net.forward(x, 3); }).find("x has 1568 elements") !=
        std::string::npos);
  Conv2dLayer fresh(Shape3{1, 4, 4}, 1, 3, Activation::relu);
  std::vector<float> dy(4);
  CHECK(testutil::error_of([&] { fresh.backward(dy); }).find("before forward") !=
        std::string::npos);
  CHECK_THROWS_AS(Conv2dLayer(Shape3{1, 4, 4}, 1, 5, Activation::relu), std::invalid_argument);
}

TEST_CASE("parameter files: round trip bit for bit") {
  testutil::TempDir dir("layers");
  Sequential a = small_net(), b = small_net();
  a.init(1);
  b.init(2);
  const auto want = snapshot(a);
  const std::string path = (dir.path / "p.bin").string();
  a.save(path);
  b.load(path);
  CHECK(same(snapshot(b), want));
  CHECK(!fs::exists(path + ".tmp"));
  // Same parameters, same outputs.
  const auto x = testutil::random_floats(2 * 36, 5);
  const auto ya = a.forward(x, 2);
  const std::vector<float> yav(ya.begin(), ya.end());
  const auto yb = b.forward(x, 2);
  CHECK(testutil::bitwise_equal(yav, yb));
  // Size: header 16 + shapes + layer list ("conv 3x3 4 relu", "maxpool 2x2", "dense 16->3")
  // + values + crc.
  const auto bytes = a.save_bytes();
  const std::int64_t values = a.parameter_count();
  CHECK(bytes.size() == 16 + (4 + 4 * 8) + (4 + 8) + (4 + 2 * 8) + (4 + 8) +
                            (4 + (4 + 15) + (4 + 11) + (4 + 11)) + 4 * values + 4);
  CHECK(std::string(bytes.begin(), bytes.begin() + 8) == "I2GPARAM");
}

TEST_CASE("parameter files: wrong, truncated or corrupted files are rejected, network unchanged") {
  Sequential src = small_net();
  src.init(1);
  const auto good = src.save_bytes();
  Sequential net = small_net();
  net.init(2);
  const auto before = snapshot(net);
  auto rejected = [&](const std::vector<std::uint8_t>& bytes, const char* expect) {
    const std::string msg = testutil::error_of([&] { net.load_bytes(bytes); });
    INFO(msg);
    CHECK(msg.find(expect) != std::string::npos);
    CHECK(same(snapshot(net), before));
  };
  for (std::size_t at : {std::size_t{3}, std::size_t{20}, good.size() / 2, good.size() - 1}) {
    CAPTURE(at);
    auto bad = good;
    bad[at] ^= 0x10;  // one flipped bit: magic, shape, value or checksum
    rejected(bad, at < 8 ? "wrong magic" : "checksum mismatch");
  }
  rejected(std::vector<std::uint8_t>(good.begin(), good.end() - 10), "checksum mismatch");
  rejected(std::vector<std::uint8_t>(good.begin(), good.begin() + 10), "truncated");
  rejected({}, "truncated");
  {
    auto bad = good;
    bad[8] = 3;  // version 3
    rejected(bad, "version 3 is not supported");
    bad[8] = 0;
    rejected(bad, "version 0 is not supported");
  }
  {
    Sequential other = small_net(4);  // dense 3 -> dense 4: same tensor count, other shapes
    other.init(1);
    rejected(other.save_bytes(), "has shape [4,16] in the file, the network has [3,16]");
  }
  {
    Sequential fewer(Shape3{1, 6, 6});
    fewer.add_conv2d(4, 3, Activation::relu);
    rejected(fewer.save_bytes(), "holds 2 tensors, the network has 4");
  }
  testutil::TempDir dir("layers");
  CHECK(testutil::error_of([&] {
          net.load((dir.path / "missing.bin").string());
        }).find("cannot open") != std::string::npos);
  CHECK(same(snapshot(net), before));
  net.load_bytes(good);  // and the good one still loads
  CHECK(same(snapshot(net), snapshot(src)));
}

namespace {

std::uint32_t crc_of(const std::vector<std::uint8_t>& b, std::size_t n) {
  return detail::crc32(0, b.data(), n);
}

// A version-1 file of the same parameters: the version-2 bytes without the layer list, with
// version 1 and the checksum recomputed (the layout parameter files had before version 2).
std::vector<std::uint8_t> as_version1(Sequential& net) {
  auto v2 = net.save_bytes();
  std::size_t pos = 16;
  for (auto& p : net.parameters()) pos += 4 + 8 * p.shape.size();
  std::size_t list = 4;
  for (std::size_t i = 0; i < net.size(); ++i) list += 4 + net.layer(i).name().size();
  std::vector<std::uint8_t> v1(v2.begin(), v2.begin() + static_cast<std::ptrdiff_t>(pos));
  v1.insert(v1.end(), v2.begin() + static_cast<std::ptrdiff_t>(pos + list), v2.end() - 4);
  v1[8] = 1;
  const std::uint32_t c = crc_of(v1, v1.size());
  for (int i = 0; i < 4; ++i) v1.push_back(static_cast<std::uint8_t>(c >> (8 * i)));
  return v1;
}

Sequential pool_net(bool ceil, bool avg, bool include_pad = true) {
  Sequential net(Shape3{1, 8, 8});
  net.add_conv2d(2, 3, Activation::relu, 1, 1);  // 2x8x8
  if (avg) {
    net.add_avgpool2d(2, 2, 0, ceil, include_pad);
  } else {
    net.add_maxpool2d(2, 2, 0, ceil);  // 8 is even: ceil and floor give the same 4x4
  }
  net.add_dense(3, Activation::identity);
  return net;
}

}  // namespace

TEST_CASE("parameter files: version 1 files still load; version 2 keeps the pool fields") {
  Sequential src = small_net();
  src.init(1);
  Sequential dst = small_net();
  dst.init(2);
  const auto v1 = as_version1(src);
  CHECK(v1[8] == 1);
  dst.load_bytes(v1);
  CHECK(same(snapshot(dst), snapshot(src)));
  // The layer names record ceil mode and count_include_pad: a file of a network whose pools
  // differ only there (same parameter shapes) is rejected, naming the layer.
  for (int avg = 0; avg < 2; ++avg) {
    CAPTURE(avg);
    Sequential ceil = pool_net(true, avg != 0), floor = pool_net(false, avg != 0);
    ceil.init(1);
    floor.init(2);
    const auto before = snapshot(floor);
    REQUIRE(ceil.parameter_count() == floor.parameter_count());
    const std::string msg = testutil::error_of([&] { floor.load_bytes(ceil.save_bytes()); });
    CHECK(msg.find(
              avg ? "layer 1 is 'avgpool 2x2 ceil' in the file, the network has 'avgpool 2x2'"
                  : "layer 1 is 'maxpool 2x2 ceil' in the file, the network has 'maxpool 2x2'") !=
          std::string::npos);
    CHECK(same(snapshot(floor), before));
    floor.load_bytes(as_version1(ceil));  // version 1 has no names to compare: loads
    CHECK(same(snapshot(floor), snapshot(ceil)));
    Sequential again = pool_net(true, avg != 0);
    again.load_bytes(ceil.save_bytes());
    CHECK(same(snapshot(again), snapshot(ceil)));
  }
  Sequential incl = pool_net(false, true, true), excl = pool_net(false, true, false);
  incl.init(3);
  CHECK(testutil::error_of([&] {
          excl.load_bytes(incl.save_bytes());
        }).find("the network has 'avgpool 2x2 excl-pad'") != std::string::npos);
  // A layer list cut short is reported as such, not read past.
  auto cut = small_net();
  cut.init(1);
  auto bytes = cut.save_bytes();
  std::size_t list = 16;
  for (auto& p : cut.parameters()) list += 4 + 8 * p.shape.size();
  bytes[list] = 9;  // claims 9 layers
  bytes.resize(bytes.size() - 4);
  const std::uint32_t c = crc_of(bytes, bytes.size());
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<std::uint8_t>(c >> (8 * i)));
  CHECK(testutil::error_of([&] {
          cut.load_bytes(bytes);
        }).find("holds 9 layers, the network has 3") != std::string::npos);
}

TEST_CASE("AvgPool2dLayer: shapes, names, finite differences, global pooling") {
  AvgPool2dLayer plain(Shape3{3, 6, 7}, 2);
  CHECK(plain.name() == "avgpool 2x2");
  CHECK(plain.output_shape() == Shape3{3, 3, 3});
  AvgPool2dLayer ceil(Shape3{3, 6, 7}, 3, 2, 1, true, false);
  CHECK(ceil.name() == "avgpool 3x3 s2x2 p1x1 ceil excl-pad");
  CHECK(ceil.output_shape() == Shape3{3, 4, 4});  // torch: ceil((6 + 2 - 3) / 2) + 1 = 4
  MaxPool2dLayer mceil(Shape3{3, 5, 5}, 2, 0, 0, true);
  CHECK(mceil.name() == "maxpool 2x2 ceil");
  CHECK(mceil.output_shape() == Shape3{3, 3, 3});
  const auto x = testutil::random_floats(2 * 3 * 6 * 7, 3);
  check_gradients(plain, x, 2);
  check_gradients(ceil, x, 2);  // overlapping windows, divisors past the padding
  GradientCheckOptions all;
  all.max_per_tensor = 1000;
  const auto r = gradient_check(ceil, x, 2, all);
  CHECK(r.checked == 252);
  CHECK(r.max_error < kGradTol);
  CHECK(r.kinks == 0);  // linear: no kinks
  Sequential net(Shape3{1, 6, 6});
  net.add_conv2d(4, 3, Activation::relu);  // 4x4x4
  auto& gap = net.add_global_avgpool2d();
  CHECK(gap.name() == "avgpool 4x4 s1x1");
  CHECK(net.output_shape() == Shape3{4, 1, 1});
  net.add_dense(2, Activation::identity);
  net.init(5);
  const auto xi = testutil::random_floats(3 * 36, 4);
  const auto out = net.forward(xi, 3);
  CHECK(out.size() == 6);
  CHECK_THROWS_AS(AvgPool2dLayer(Shape3{1, 4, 4}, 3, 1, 2), std::invalid_argument);  // pad > 3/2
  CHECK_THROWS_AS(AvgPool2dLayer(Shape3{1, 4, 4}, 2, -1), std::invalid_argument);
}
