// The main job, data-parallel over MPI ranks (scripts/demo --ranks N runs it under mpirun):
// the LeNet of train_fashion_mnist.cpp, each global minibatch (--batch, 64) split between the
// ranks, the gradients summed after every backward (im2gemm_mpi's DataParallel), every rank
// applying the same update to the same parameters.
//
//  - Every rank reads only its shard of the training set: a contiguous block of the IDX files
//    (im2gemm::mpi::shard), decompressed up to its end and kept, nothing more; the ranks
//    below count % ranks hold one example more, so every example is used in every epoch.
//  - Input normalisation: mean and deviation of every training pixel, from exact integer sums
//    added over the ranks (the same for any rank count).
//  - Rank 0 alone reads the test set, evaluates, prints and saves; the others are silent.
//  - A rank that fails (bad input, a corrupt shard, an unreadable file) ends the whole job with
//    "im2gemm: rank R of N: <what>" (MPI_Abort), instead of leaving the others waiting.
//  - After training, every rank's parameter checksum is compared; the last line says whether
//    the parameters are bitwise identical on all ranks (exit status 1 if not).
#include <cblas.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <im2gemm/distributed.hpp>
#include <im2gemm/idx.hpp>
#include <im2gemm/im2gemm.hpp>

#include "fashion_mnist_demo.hpp"

namespace {

using demo::Clock;
using demo::since;
namespace dist = im2gemm::mpi;

/// A gzipped (or plain) IDX file read as a stream: header, then records of a fixed size.
class IdxStream {
 public:
  IdxStream(const std::string& path, std::uint8_t want_rank) : path_(path) {
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) fail("cannot open (is the dataset installed? apt-get install dataset-fashion-mnist)");
    std::uint8_t magic[4];
    read(magic, 4, "the magic number");
    if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != want_rank) {
      fail("not an IDX file of unsigned bytes with " + std::to_string(want_rank) + " dimensions");
    }
    for (int d = 0; d < want_rank; ++d) {
      std::uint8_t b[4];
      read(b, 4, "the dimensions");
      dims_.push_back((std::int64_t{b[0]} << 24) | (b[1] << 16) | (b[2] << 8) | b[3]);
      if (dims_.back() < 1) fail("dimension " + std::to_string(d) + " is 0");
    }
  }
  ~IdxStream() {
    if (f_) gzclose(f_);
  }
  IdxStream(const IdxStream&) = delete;
  IdxStream& operator=(const IdxStream&) = delete;

  const std::vector<std::int64_t>& dims() const { return dims_; }
  /// Skips n bytes of payload (zlib decompresses them: a gzip stream has no index).
  void skip(std::int64_t n) {
    std::vector<std::uint8_t> sink(1 << 16);
    while (n > 0) {
      const auto k =
          static_cast<unsigned>(std::min<std::int64_t>(n, static_cast<std::int64_t>(sink.size())));
      read(sink.data(), k, "the records before this rank's shard");
      n -= k;
    }
  }
  void read(std::uint8_t* dst, std::size_t n, const char* what) {
    while (n > 0) {
      const unsigned k = static_cast<unsigned>(std::min<std::size_t>(n, 1u << 30));
      const int got = gzread(f_, dst, k);
      if (got < 0) {
        int err = 0;
        fail(std::string("broken gzip stream in ") + what + ": " + gzerror(f_, &err));
      }
      if (static_cast<unsigned>(got) != k) fail(std::string("truncated in ") + what);
      dst += k;
      n -= k;
    }
  }
  /// Throws unless the stream ends here (the last rank checks that nothing trails its shard).
  void expect_end() {
    std::uint8_t b;
    if (gzread(f_, &b, 1) != 0) fail("trailing data after the last record");
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ": " + what);
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
  std::vector<std::int64_t> dims_;
};

/// This rank's shard of the first `limit` (0: all) images of a split, and the total count.
struct Shard {
  std::int64_t total = 0;  // examples over every rank
  dist::Range range;       // this rank's, in the file's order
  std::vector<std::uint8_t> pixels;
  std::vector<std::int32_t> labels;
};

Shard read_shard(const std::string& dir, const std::string& split, std::int64_t limit, int rank,
                 int ranks) {
  IdxStream images(dir + "/" + split + "-images-idx3-ubyte.gz", 3);
  IdxStream labels(dir + "/" + split + "-labels-idx1-ubyte.gz", 1);
  const auto& d = images.dims();
  if (d[0] != labels.dims()[0]) {
    images.fail(std::to_string(d[0]) + " images but " + std::to_string(labels.dims()[0]) +
                " labels");
  }
  if (d[1] != 28 || d[2] != 28)
    images.fail("expected 28x28 images, got " + std::to_string(d[1]) + "x" + std::to_string(d[2]));
  Shard s;
  s.total = limit > 0 ? std::min(limit, d[0]) : d[0];
  s.range = dist::shard(s.total, rank, ranks);
  const std::int64_t px = d[1] * d[2], n = s.range.size();
  images.skip(s.range.begin * px);
  labels.skip(s.range.begin);
  s.pixels.resize(static_cast<std::size_t>(n * px));
  std::vector<std::uint8_t> raw(static_cast<std::size_t>(n));
  images.read(s.pixels.data(), s.pixels.size(), "this rank's images");
  labels.read(raw.data(), raw.size(), "this rank's labels");
  for (std::int64_t i = 0; i < n; ++i) {
    if (raw[i] > 9) {
      labels.fail("label " + std::to_string(raw[i]) + " of example " +
                  std::to_string(s.range.begin + i) + " is not in 0..9");
    }
    s.labels.push_back(raw[i]);
  }
  if (rank == ranks - 1 && s.total == d[0]) {
    images.expect_end();
    labels.expect_end();
  }
  return s;
}

double allreduce_sum(double v, MPI_Comm comm, MPI_Op op = MPI_SUM) {
  double r = 0;
  MPI_Allreduce(&v, &r, 1, MPI_DOUBLE, op, comm);
  return r;
}

int run(int argc, char** argv, int rank, int ranks) {
  using namespace im2gemm;
  const bool root = rank == 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      if (root) demo::usage(stdout, true);
      return 0;
    }
  }
  demo::Options opt;
  if (!demo::parse(argc, argv, opt, true)) {  // every rank parses the same arguments
    if (root) demo::usage(stderr, true);
    return 2;
  }
  set_num_threads(opt.threads);
  if (opt.threads > 0) openblas_set_num_threads(opt.threads);

  Shard train = read_shard(opt.data, "train", opt.limit, rank, ranks);
  LabeledImages test;
  if (root) test = read_mnist(opt.data, "t10k");
  const std::int64_t px = 28 * 28, n_train = train.total;
  const std::int64_t n_local = train.range.size();
  const std::int64_t n_test =
      root ? (opt.test_limit > 0 ? std::min(opt.test_limit, test.count) : test.count) : 0;

  // Mean and deviation of every training pixel in use: exact integer sums over the ranks.
  std::array<std::uint64_t, 2> sums{0, 0}, all{0, 0};
  for (auto p : train.pixels) {
    sums[0] += p;
    sums[1] += std::uint64_t{p} * p;
  }
  MPI_Allreduce(sums.data(), all.data(), 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  const double n_px = static_cast<double>(n_train * px);
  const double mean = static_cast<double>(all[0]) / 255.0 / n_px;
  const double sd = std::sqrt(
      std::max(static_cast<double>(all[1]) / (255.0 * 255.0) / n_px - mean * mean, 1e-12));
  const std::vector<float> xtrain = demo::normalise(train.pixels, mean, sd);
  const std::vector<float> xtest = root ? demo::normalise(test.pixels, mean, sd)
                                        : std::vector<float>{};
  std::vector<std::uint8_t>().swap(train.pixels);

  Sequential net = demo::make_lenet();
  net.init(opt.seed, opt.init);
  if (root && !opt.load.empty()) net.load(opt.load);
  dist::DataParallel dp(net, MPI_COMM_WORLD, dist::DataParallel::Options{opt.overlap, 1 << 16});
  dp.broadcast_parameters(0);  // rank 0's parameters (seeded or loaded) everywhere

  const std::int64_t params = net.parameter_count();
  if (root) {
    std::printf(
        "LeNet on Fashion-MNIST: %lld training images%s, %lld test images%s, %lld parameters\n",
        static_cast<long long>(n_train), opt.limit > 0 ? " (--limit)" : "",
        static_cast<long long>(n_test), n_test < test.count ? " (--test-limit)" : "",
        static_cast<long long>(params));
    std::printf(
        "data-parallel over %d ranks x %d threads: global minibatch %lld split between the "
        "ranks; rank 0 holds %lld training images; %s gradient allreduce of %lld floats "
        "(%.2f MB) per step\n",
        ranks, num_threads(), static_cast<long long>(opt.batch), static_cast<long long>(n_local),
        opt.overlap ? "bucketed, overlapped" : "one blocking", static_cast<long long>(params),
        params * 4.0 / 1e6);
    std::printf(
        "minibatch %lld, SGD lr %g momentum 0.9, seed %llu, init %s; inputs (x/255 - %.4f) / %.4f\n",
        static_cast<long long>(opt.batch), opt.lr, static_cast<unsigned long long>(opt.seed),
        opt.init == Init::pytorch ? "pytorch" : "he", mean, sd);
    if (!opt.load.empty()) std::printf("parameters loaded from %s\n", opt.load.c_str());
    std::fflush(stdout);
  }

  const Sgd sgd{opt.lr, 0.9f, 0.0f};
  SoftmaxCrossEntropy loss;
  // Rank 0 shuffles like the single-process demo; every rank its own shard.
  Rng shuffle_rng(opt.seed ^ 0x5eed5eed5eedull ^
                  (static_cast<std::uint64_t>(rank) * 0x9e3779b97f4a7c15ull));
  std::vector<std::int64_t> order(static_cast<std::size_t>(n_local));
  const std::int64_t local_max = opt.batch / ranks + 1;
  std::vector<float> xb(static_cast<std::size_t>(local_max * px));
  std::vector<std::int32_t> yb(static_cast<std::size_t>(local_max));

  std::vector<LayerTiming> total(net.size());
  double t_train = 0, t_comm = 0;

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
    return std::make_pair(static_cast<double>(correct) / std::max<std::int64_t>(n_test, 1),
                          lsum / std::max<std::int64_t>(n_test, 1));
  };

  if (opt.epochs == 0 && root) {
    const auto [acc, tl] = evaluate();
    std::printf("test accuracy %.4f (loss %.4f), no training (--epochs 0)\n", acc, tl);
  }
  const std::int64_t n_steps = dist::steps(n_train, opt.batch);
  // mpirun gives the ranks a pseudo-terminal whatever mpirun's own stdout is: scripts/demo
  // says whether that is a terminal (a redrawn progress bar) or not (one line per epoch).
  const char* tty_env = std::getenv("IM2GEMM_STDOUT_TTY");
  const bool stdout_tty = tty_env ? std::strcmp(tty_env, "1") == 0 : isatty(STDOUT_FILENO) != 0;
  std::vector<double> accuracies;
  for (int epoch = 1; epoch <= opt.epochs; ++epoch) {
    for (std::int64_t i = 0; i < n_local; ++i) order[i] = i;
    for (std::int64_t i = n_local - 1; i > 0; --i)
      std::swap(order[i], order[shuffle_rng.below(static_cast<std::uint64_t>(i + 1))]);
    net.reset_timings();
    dp.reset_stats();
    demo::Progress bar(epoch, opt.epochs, n_train, stdout_tty);
    double lsum = 0;                  // this rank's loss times its examples
    std::int64_t seen = 0, mine = 0;  // examples of every rank so far; this rank's
    MPI_Barrier(MPI_COMM_WORLD);      // every rank starts the epoch together (rank 0 evaluated)
    const auto t_epoch = Clock::now();
    for (std::int64_t s = 0; s < n_steps; ++s) {
      const auto slice = dist::step_slice(n_train, opt.batch, s, rank, ranks);
      const std::int64_t m = slice.size(), global = dist::step_batch(n_train, opt.batch, s);
      for (std::int64_t j = 0; j < m; ++j) {
        const std::int64_t k = order[slice.begin + j];
        std::memcpy(&xb[j * px], &xtrain[k * px], px * sizeof(float));
        yb[j] = train.labels[k];
      }
      std::span<const float> x(xb.data(), static_cast<std::size_t>(m * px));
      std::span<const std::int32_t> y(yb.data(), static_cast<std::size_t>(m));
      const float e = dp.train_step(x, y, m, global, loss, sgd);
      lsum += static_cast<double>(e) * m;
      mine += m;
      seen += global;
      if (root) bar.update(seen, lsum / std::max<std::int64_t>(mine, 1));
    }
    const double te = since(t_epoch);
    const double comm = dp.stats().seconds;
    // Totals over the ranks, outside the timed epoch.
    const double train_loss = allreduce_sum(lsum, MPI_COMM_WORLD) / static_cast<double>(n_train);
    const double comm_max = allreduce_sum(comm, MPI_COMM_WORLD, MPI_MAX);
    const double used = allreduce_sum(static_cast<double>(mine), MPI_COMM_WORLD);
    if (root) {
      bar.update(seen, lsum / std::max<std::int64_t>(mine, 1), true);
      const auto tims = net.timings();
      for (std::size_t i = 0; i < tims.size(); ++i) {
        total[i].name = tims[i].name;
        total[i].forward_seconds += tims[i].forward_seconds;
        total[i].backward_seconds += tims[i].backward_seconds;
        total[i].update_seconds += tims[i].update_seconds;
      }
      t_train += te;
      t_comm += comm;
      const auto [acc, tl] = evaluate();
      accuracies.push_back(acc);
      std::printf(
          "epoch %d: train loss %.4f, %.2f s (%.0f img/s); test accuracy %.4f, test loss %.4f\n",
          epoch, train_loss, te, seen / te, acc, tl);
      std::printf(
          "  %lld of %lld training images used; communication %.2f s (%.1f%% of the epoch; "
          "slowest rank %.2f s), %lld allreduce calls, %.1f MB sent per rank\n",
          static_cast<long long>(used), static_cast<long long>(n_train), comm, 100 * comm / te,
          comm_max, static_cast<long long>(dp.stats().collectives), dp.stats().bytes / 1e6);
      std::fflush(stdout);
    }
  }

  const auto check = dp.check_parameters();
  if (root && opt.epochs > 0) {
    std::printf("\ntime per layer on rank 0 over %d training epoch%s (%.2f s, %.2f s per epoch):\n",
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
    accounted += t_comm;
    std::printf("  %-22s %10.3f %10s %10s %7.1f%%\n", "communication", t_comm, "", "",
                100 * t_comm / t_train);
    std::printf("  %-22s %10.3f %10s %10s %7.1f%%\n", "other", t_train - accounted, "", "",
                100 * (t_train - accounted) / t_train);
    std::printf("final: %d epochs, test accuracy %.4f, mean epoch %.2f s, ranks %d, %s\n",
                opt.epochs, accuracies.back(), t_train / opt.epochs, ranks,
                check.summary().c_str());
  } else if (root) {
    std::printf("ranks %d, %s\n", ranks, check.summary().c_str());
  }
  if (root) {
    std::printf("BLAS: %s\n", blas_info().summary().c_str());
    std::printf("engine: %s\n", engine_info().summary().c_str());
    if (!opt.save.empty()) {
      net.save(opt.save);
      std::printf("parameters saved to %s\n", opt.save.c_str());
    }
    std::fflush(stdout);
  }
  return check.identical ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  dist::Environment env(argc, argv);
  return dist::run_or_abort([&] { return run(argc, argv, env.rank(), env.ranks()); });
}
