// The main job: trains LeNet on Fashion-MNIST with the im2gemm layer API.
//   conv 5x5 20 relu -> maxpool 2x2 -> conv 5x5 50 relu -> maxpool 2x2 -> dense 500 relu
//   -> dense 10 -> softmax cross-entropy; SGD momentum 0.9, lr 0.01, minibatch 64;
//   inputs normalised by the training set's mean and standard deviation.
// Prints a progress bar per epoch, the test accuracy after each epoch, a per-layer table of
// forward/backward time and blas_info(). Deterministic for a given seed and thread count.
#include <cblas.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <im2gemm/idx.hpp>
#include <im2gemm/im2gemm.hpp>

#include "fashion_mnist_demo.hpp"

using demo::Clock;
using demo::since;

int main(int argc, char** argv) {
  using namespace im2gemm;
  demo::Options opt;
  if (!demo::parse(argc, argv, opt)) {
    demo::usage(stderr);
    return 2;
  }
  set_num_threads(opt.threads);
  if (opt.threads > 0) openblas_set_num_threads(opt.threads);  // the dense layers' sgemm

  LabeledImages train, test;
  try {
    train = read_mnist(opt.data, "train");
    test = read_mnist(opt.data, "t10k");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s (--data DIR)\n", e.what());
    return 1;
  }
  if (train.rows != 28 || train.cols != 28 || test.rows != 28 || test.cols != 28) {
    std::fprintf(stderr,
                 "error: expected 28x28 images, got %lldx%lld (train) and %lldx%lld (test)\n",
                 (long long)train.rows, (long long)train.cols, (long long)test.rows,
                 (long long)test.cols);
    return 1;
  }
  // Mean and deviation of every training pixel (the whole training set, whatever --limit).
  double s = 0, s2 = 0;
  for (auto p : train.pixels) {
    const double v = p / 255.0;
    s += v;
    s2 += v * v;
  }
  const double n_px = static_cast<double>(train.pixels.size());
  const double mean = s / n_px, sd = std::sqrt(std::max(s2 / n_px - mean * mean, 1e-12));
  const std::vector<float> xtrain = demo::normalise(train.pixels, mean, sd);
  const std::vector<float> xtest = demo::normalise(test.pixels, mean, sd);
  const std::int64_t n_train = opt.limit > 0 ? std::min(opt.limit, train.count) : train.count;
  const std::int64_t n_test = opt.test_limit > 0 ? std::min(opt.test_limit, test.count)
                                                 : test.count;
  const std::int64_t px = 28 * 28;

  Sequential net = demo::make_lenet();
  net.init(opt.seed, opt.init);
  if (!opt.load.empty()) {
    try {
      net.load(opt.load);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  std::printf(
      "LeNet on Fashion-MNIST: %lld training images%s, %lld test images%s, %lld parameters\n",
      static_cast<long long>(n_train), n_train < train.count ? " (--limit)" : "",
      static_cast<long long>(n_test), n_test < test.count ? " (--test-limit)" : "",
      static_cast<long long>(net.parameter_count()));
  std::printf(
      "minibatch %lld, SGD lr %g momentum 0.9, seed %llu, init %s, %d threads; "
      "inputs (x/255 - %.4f) / %.4f\n",
      static_cast<long long>(opt.batch), opt.lr, static_cast<unsigned long long>(opt.seed),
      opt.init == Init::pytorch ? "pytorch" : "he", num_threads(), mean, sd);
  if (!opt.load.empty()) std::printf("parameters loaded from %s\n", opt.load.c_str());

  const Sgd sgd{opt.lr, 0.9f, 0.0f};
  SoftmaxCrossEntropy loss;
  Rng shuffle_rng(opt.seed ^ 0x5eed5eed5eedull);
  std::vector<std::int64_t> order(static_cast<std::size_t>(n_train));
  std::vector<float> xb(static_cast<std::size_t>(opt.batch * px));
  std::vector<std::int32_t> yb(static_cast<std::size_t>(opt.batch));

  // Totals over every training epoch (test evaluation excluded).
  std::vector<LayerTiming> total(net.size());
  double t_train = 0, t_loss = 0, t_data = 0;

  auto evaluate = [&]() {
    const std::int64_t tb = 500;
    std::int64_t correct = 0;
    double lsum = 0;
    for (std::int64_t b = 0; b < n_test; b += tb) {
      const std::int64_t m = std::min(tb, n_test - b);
      std::span<const float> x(&xtest[static_cast<std::size_t>(b * px)],
                               static_cast<std::size_t>(m * px));
      std::span<const std::int32_t> y(&test.labels[static_cast<std::size_t>(b)],
                                      static_cast<std::size_t>(m));
      lsum += loss.forward(net.forward(x, m), y, 10) * m;
      correct += loss.correct();
    }
    return std::make_pair(static_cast<double>(correct) / n_test, lsum / n_test);
  };

  if (opt.epochs == 0) {
    const auto [acc, tl] = evaluate();
    std::printf("test accuracy %.4f (loss %.4f), no training (--epochs 0)\n", acc, tl);
  }
  std::vector<double> epoch_times, accuracies;
  for (int epoch = 1; epoch <= opt.epochs; ++epoch) {
    for (std::int64_t i = 0; i < n_train; ++i) order[i] = i;
    for (std::int64_t i = n_train - 1; i > 0; --i)
      std::swap(order[i], order[shuffle_rng.below(static_cast<std::uint64_t>(i + 1))]);
    net.reset_timings();
    demo::Progress bar(epoch, opt.epochs, n_train);
    double lsum = 0;
    std::int64_t seen = 0;
    const auto t_epoch = Clock::now();
    double epoch_loss_t = 0, epoch_data_t = 0;
    for (std::int64_t b = 0; b < n_train; b += opt.batch) {
      const std::int64_t m = std::min(opt.batch, n_train - b);
      auto t0 = Clock::now();
      for (std::int64_t j = 0; j < m; ++j) {
        const std::int64_t k = order[b + j];
        std::memcpy(&xb[j * px], &xtrain[k * px], px * sizeof(float));
        yb[j] = train.labels[k];
      }
      epoch_data_t += since(t0);
      std::span<const float> x(xb.data(), static_cast<std::size_t>(m * px));
      std::span<const std::int32_t> y(yb.data(), static_cast<std::size_t>(m));
      const auto logits = net.forward(x, m);
      t0 = Clock::now();
      const float e = loss.forward(logits, y, 10);
      const auto dlogits = loss.backward();
      epoch_loss_t += since(t0);
      net.backward(dlogits);
      net.update(sgd);
      lsum += static_cast<double>(e) * m;
      seen += m;
      bar.update(seen, lsum / seen);
    }
    const double te = since(t_epoch);
    bar.update(seen, lsum / std::max<std::int64_t>(seen, 1), true);
    const auto tims = net.timings();
    for (std::size_t i = 0; i < tims.size(); ++i) {
      total[i].name = tims[i].name;
      total[i].forward_seconds += tims[i].forward_seconds;
      total[i].backward_seconds += tims[i].backward_seconds;
      total[i].update_seconds += tims[i].update_seconds;
    }
    t_train += te;
    t_loss += epoch_loss_t;
    t_data += epoch_data_t;
    const auto [acc, tl] = evaluate();
    epoch_times.push_back(te);
    accuracies.push_back(acc);
    std::printf(
        "epoch %d: train loss %.4f, %.2f s (%.0f img/s); test accuracy %.4f, test loss %.4f\n",
        epoch, lsum / std::max<std::int64_t>(seen, 1), te, seen / te, acc, tl);
    std::fflush(stdout);
  }

  if (opt.epochs > 0) {
    std::printf("\ntime per layer over %d training epoch%s (%.2f s, %.2f s per epoch):\n",
                opt.epochs, opt.epochs > 1 ? "s" : "", t_train, t_train / opt.epochs);
    std::printf("  %-22s %10s %10s %10s %8s\n", "layer", "forward s", "backward s", "update s",
                "share");
    double accounted = 0;
    for (const auto& t : total) {
      const double sum = t.forward_seconds + t.backward_seconds + t.update_seconds;
      accounted += sum;
      std::printf("  %-22s %10.3f %10.3f %10.3f %7.1f%%\n", t.name.c_str(), t.forward_seconds,
                  t.backward_seconds, t.update_seconds, 100 * sum / t_train);
    }
    accounted += t_loss + t_data;
    std::printf("  %-22s %10.3f %10s %10s %7.1f%%\n", "softmax cross-entropy", t_loss, "", "",
                100 * t_loss / t_train);
    std::printf("  %-22s %10.3f %10s %10s %7.1f%%\n", "minibatch gather", t_data, "", "",
                100 * t_data / t_train);
    std::printf("  %-22s %10.3f %10s %10s %7.1f%%\n", "other", t_train - accounted, "", "",
                100 * (t_train - accounted) / t_train);
    std::printf("final: %d epochs, test accuracy %.4f, mean epoch %.2f s\n", opt.epochs,
                accuracies.back(), t_train / opt.epochs);
  }
  std::printf("BLAS: %s\n", blas_info().summary().c_str());
  std::printf("engine: %s\n", im2gemm::engine_info().summary().c_str());

  if (!opt.save.empty()) {
    try {
      net.save(opt.save);
      std::printf("parameters saved to %s\n", opt.save.c_str());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  return 0;
}
