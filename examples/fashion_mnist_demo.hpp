// What the two Fashion-MNIST demos share: options, the progress bar, input normalisation,
// the network, and the per-layer time table. train_fashion_mnist.cpp is the single-process
// demo, train_fashion_mnist_mpi.cpp the data-parallel one (scripts/demo --ranks N).
#pragma once

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <im2gemm/im2gemm.hpp>

namespace demo {

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Options {
  std::string data = "/usr/share/datasets/fashion-mnist";
  int epochs = 3;
  std::int64_t batch = 64;
  int threads = 0;
  std::uint64_t seed = 1;
  im2gemm::Init init = im2gemm::Init::pytorch;
  float lr = 0.01f;
  std::int64_t limit = 0;       // 0: every training image
  std::int64_t test_limit = 0;  // 0: every test image
  std::string save, load;
  bool overlap = false;  // distributed: allreduce buckets overlapped with backward
};

/// distributed: the options of train_fashion_mnist_mpi (also --overlap).
inline void usage(FILE* out, bool distributed = false) {
  std::fprintf(out, "usage: %s [options]\n",
               distributed ? "mpirun -np N train_fashion_mnist_mpi" : "train_fashion_mnist");
  std::fprintf(
      out,
      "  --data DIR     directory of the 4 gzipped IDX files\n"
      "                 (default /usr/share/datasets/fashion-mnist, from\n"
      "                 `apt-get install dataset-fashion-mnist`)\n"
      "  --epochs N     training epochs (default 3)\n"
      "  --batch N      minibatch size (default 64)\n"
      "  --threads N    threads for the primitives and BLAS (default 0: all cores)\n"
      "  --seed N       seed of the initial weights and the shuffling (default 1)\n"
      "  --init S       initial weights: pytorch (default: PyTorch's own default init,\n"
      "                 as in scripts/torch_lenet.py) or he (He/Xavier normal, zero biases)\n"
      "  --lr X         learning rate (default 0.01; momentum 0.9)\n"
      "  --limit N      train on the first N training images only (quick checks)\n"
      "  --test-limit N test on the first N test images only (quick checks)\n"
      "  --load FILE    start from saved parameters instead of the seeded init\n"
      "  --save FILE    save the parameters after training\n");
  if (distributed) {
    std::fprintf(
        out,
        "  --overlap 0|1  start each layer bucket's gradient allreduce during backward (1)\n"
        "                 or allreduce every gradient after backward (0, default)\n"
        "Run under mpirun (scripts/demo --ranks N): --batch is the global minibatch, split\n"
        "between the ranks; --threads is per rank.\n");
  }
}

inline bool parse(int argc, char** argv, Options& o, bool distributed = false) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(stdout, distributed);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "error: %s needs a value (or is unknown)\n", a.c_str());
      return false;
    }
    const std::string v = argv[++i];
    char* end = nullptr;
    auto integer = [&](long long lo) {
      errno = 0;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (errno || end == v.c_str() || *end || n < lo) {
        std::fprintf(stderr, "error: %s wants an integer >= %lld, got '%s'\n", a.c_str(), lo,
                     v.c_str());
        std::exit(2);
      }
      return n;
    };
    if (a == "--data") o.data = v;
    else if (a == "--epochs") o.epochs = static_cast<int>(integer(0));
    else if (a == "--batch") o.batch = integer(1);
    else if (a == "--threads") o.threads = static_cast<int>(integer(0));
    else if (a == "--seed") o.seed = static_cast<std::uint64_t>(integer(0));
    else if (a == "--limit") o.limit = integer(0);
    else if (a == "--test-limit") o.test_limit = integer(0);
    else if (a == "--save") o.save = v;
    else if (a == "--load") o.load = v;
    else if (distributed && a == "--overlap") o.overlap = integer(0) != 0;
    else if (a == "--init") {
      if (v == "pytorch") o.init = im2gemm::Init::pytorch;
      else if (v == "he") o.init = im2gemm::Init::he_xavier;
      else {
        std::fprintf(stderr, "error: --init wants pytorch or he, got '%s'\n", v.c_str());
        return false;
      }
    } else if (a == "--lr") {
      o.lr = std::strtof(v.c_str(), &end);
      if (end == v.c_str() || *end || !(o.lr > 0)) {
        std::fprintf(stderr, "error: --lr wants a number > 0, got '%s'\n", v.c_str());
        return false;
      }
    } else {
      std::fprintf(stderr, "error: unknown option %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

/// Pixels to floats: (p / 255 - mean) / std.
inline std::vector<float> normalise(const std::vector<std::uint8_t>& px, double mean, double sd) {
  std::vector<float> out(px.size());
  for (std::size_t i = 0; i < px.size(); ++i)
    out[i] = static_cast<float>((px[i] / 255.0 - mean) / sd);
  return out;
}

class Progress {
 public:
  /// tty: redraw the bar in place (a terminal), else print only the final line.
  Progress(int epoch, int epochs, std::int64_t total, bool tty = isatty(STDOUT_FILENO))
      : epoch_(epoch), epochs_(epochs), total_(total), tty_(tty), t0_(Clock::now()) {}
  void update(std::int64_t done, double running_loss, bool final = false) {
    const double t = since(t0_);
    if (!final && (!tty_ || t - last_ < 0.1)) return;
    last_ = t;
    const int width = 30;
    const int filled = static_cast<int>(width * done / std::max<std::int64_t>(total_, 1));
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(width, '.');
    std::printf("%sepoch %d/%d [%s] %6lld/%lld  %6.0f img/s  loss %.4f%s", tty_ ? "\r" : "", epoch_,
                epochs_, bar.c_str(), static_cast<long long>(done), static_cast<long long>(total_),
                t > 0 ? done / t : 0.0, running_loss, final ? "\n" : "");
    std::fflush(stdout);
  }

 private:
  int epoch_, epochs_;
  std::int64_t total_;
  bool tty_;
  Clock::time_point t0_;
  double last_ = -1.0;
};

/// LeNet: conv 5x5 20 relu -> maxpool 2x2 -> conv 5x5 50 relu -> maxpool 2x2 -> dense 500 relu
/// -> dense 10.
inline im2gemm::Sequential make_lenet() {
  using im2gemm::Activation;
  im2gemm::Sequential net(im2gemm::Shape3{1, 28, 28});
  net.add_conv2d(20, 5, Activation::relu);
  net.add_maxpool2d(2);
  net.add_conv2d(50, 5, Activation::relu);
  net.add_maxpool2d(2);
  net.add_dense(500, Activation::relu);
  net.add_dense(10, Activation::identity);
  return net;
}

}  // namespace demo
