#include "conv/plan.hpp"

#include "gemm/gemm.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace im2gemm::detail {

namespace {

bool balanced(std::int64_t items, std::int64_t threads) {
  return items % threads == 0 || items >= kBalancedItemsPerThread * threads;
}

std::size_t round_up_64(std::size_t bytes) { return (bytes + 63) / 64 * 64; }

// Pixel blocking of one image for a column block of `rows` rows (plus `extra_rows` rows of a
// gathered block when images are side by side). Sets images_per_block / block_pixels /
// pixel_blocks; images_per_block is at most max_images.
void choose_blocks(ConvPlan& p, const PlanTuning& tuning, std::int64_t rows,
                   std::int64_t extra_rows, std::int64_t max_images,
                   std::int64_t pixels_per_filter = kPixelsPerFilter) {
  // With a tuned target, the target alone decides.
  const bool overridden = tuning.block_target_bytes != 0;
  const std::size_t target_bytes = overridden ? tuning.block_target_bytes : kBlockTargetBytes;
  const std::int64_t per_filter = pixels_per_filter * p.Fg;
  auto columns = [overridden, target_bytes, per_filter](std::int64_t r) {
    r = std::max<std::int64_t>(r, 1);
    const auto target = static_cast<std::int64_t>(target_bytes / sizeof(float)) / r;
    const auto most = static_cast<std::int64_t>(kMaxBlockBytes / sizeof(float)) / r;
    if (overridden) return std::max(kMinBlockPixels, target);
    return std::max(kMinBlockPixels, std::min(std::max(target, per_filter), most));
  };
  const std::int64_t cols = columns(rows);
  const std::int64_t cols_multi = columns(rows + extra_rows);
  // Images narrower than kMinGemmPixels go side by side into one column block.
  if ((overridden || p.P < kMinGemmPixels) && 2 * p.P <= cols_multi && max_images > 1) {
    p.images_per_block = std::min(max_images, cols_multi / p.P);
    p.block_pixels = p.P;
    p.pixel_blocks = 1;
    return;
  }
  p.images_per_block = 1;
  p.pixel_blocks = ceil_div(p.P, cols);
  p.block_pixels = ceil_div(p.P, p.pixel_blocks);
  if (p.block_pixels > 4 * kPixelAlign) {
    p.block_pixels = std::min(p.P, ceil_div(p.block_pixels, kPixelAlign) * kPixelAlign);
  }
  p.pixel_blocks = ceil_div(p.P, p.block_pixels);
}

void set_pixel_blocks(ConvPlan& p, std::int64_t blocks) {
  p.block_pixels = ceil_div(p.P, blocks);
  p.pixel_blocks = ceil_div(p.P, p.block_pixels);
}

// Image runs: at most images_per_block images each, and enough runs for the threads.
void choose_image_runs(ConvPlan& p, std::int64_t other_items) {
  p.image_runs = ceil_div(p.N, p.images_per_block);
  while (p.images_per_block > 1 && !balanced(p.image_runs * other_items, p.threads)) {
    --p.images_per_block;
    p.image_runs = ceil_div(p.N, p.images_per_block);
  }
}

}  // namespace

bool is_conv1x1_s1_p0_d1(const Conv2dShape& s) {
  return s.kernel_height == 1 && s.kernel_width == 1 && s.stride_height == 1 &&
         s.stride_width == 1 && s.pad_height == 0 && s.pad_width == 0 && s.dilation_height == 1 &&
         s.dilation_width == 1;
}

std::size_t ConvPlan::scratch_bytes() const {
  return round_up_64(static_cast<std::size_t>(col_floats) * sizeof(float)) +
         round_up_64(static_cast<std::size_t>(tmp_floats) * sizeof(float)) +
         round_up_64(static_cast<std::size_t>(partial_floats) * sizeof(float)) +
         round_up_64(static_cast<std::size_t>(pack_floats) * sizeof(float));
}

Part ConvPlan::image_run(std::int64_t r) const {
  // When the runs are dealt to the threads in equal contiguous ranges (image_runs a multiple
  // of the threads, image runs the outermost item index), the images are split evenly over
  // the threads first and then each thread's share into its runs, so that every thread gets
  // the same number of images (lenet_conv2: 64 images in 10 runs of at most 7 gave the two
  // threads 34 and 30). Each run still has at most images_per_block images and at least one.
  const std::int64_t T = threads;
  if (image_runs % T != 0) return part(r, image_runs, N);
  const std::int64_t per = image_runs / T;
  const Part share = part(r / per, T, N);
  const Part run = part(r % per, per, share.size());
  return Part{share.begin + run.begin, share.begin + run.end};
}

Part ConvPlan::pixel_part_range(std::int64_t i) const {
  const Part rows = part(i, pixel_parts, P / OW);
  return Part{rows.begin * OW, rows.end * OW};
}

std::int64_t ConvPlan::items() const {
  switch (pass) {
    case ConvPass::forward: return image_runs * groups * pixel_blocks * filter_blocks;
    case ConvPass::backward_data: return image_runs * groups * channel_blocks;
    case ConvPass::backward_weights:
      return weight_partials ? image_runs * pixel_parts : groups * channel_blocks;
  }
  return 1;
}

WorkItem ConvPlan::item(std::int64_t it) const {
  WorkItem w;
  w.columns_key = it;
  w.pixels = Part{0, P};
  w.filters = Part{0, Fg};
  w.channels = Part{0, Cg};
  std::int64_t run = 0;
  switch (pass) {
    case ConvPass::forward: {
      w.block = it % filter_blocks;
      w.filters = part(w.block, filter_blocks, Fg);
      const std::int64_t key = it / filter_blocks;
      w.columns_key = key;
      w.pixel_block = key % pixel_blocks;
      w.pixels = pixel_block_range(w.pixel_block);
      const std::int64_t g = key / pixel_blocks % groups;
      w.groups = Part{g, g + 1};
      run = key / pixel_blocks / groups;
      break;
    }
    case ConvPass::backward_data: {
      w.block = it % channel_blocks;
      w.channels = part(w.block, channel_blocks, Cg);
      const std::int64_t g = it / channel_blocks % groups;
      w.groups = Part{g, g + 1};
      run = it / channel_blocks / groups;
      break;
    }
    case ConvPass::backward_weights: {
      if (weight_partials) {
        w.groups = Part{0, groups};
        w.pixels = pixel_part_range(it % pixel_parts);
        run = it / pixel_parts;
        break;
      }
      w.block = it % channel_blocks;
      w.channels = part(w.block, channel_blocks, Cg);
      const std::int64_t g = it / channel_blocks;
      w.groups = Part{g, g + 1};
      w.runs = Part{0, image_runs};
      w.images = Part{0, N};
      return w;
    }
  }
  w.runs = Part{run, run + 1};
  w.images = image_run(run);
  return w;
}

namespace {

struct Loads {
  double worst = 0.0, total = 0.0;  ///< of the busiest thread, of all threads
};

// Work of each thread under a plan, as the passes deal the items, in units that are the same
// for every plan of one shape and pass: images x pixels x groups x filters (forward) or
// channels (backward); backward weights' reduction not counted.
Loads thread_loads(const ConvPlan& p) {
  Loads l;
  for (std::int64_t t = 0; t < p.threads; ++t) {
    double w = 0.0;
    const Part mine = p.thread_items(t, p.threads);
    for (std::int64_t it = mine.begin; it < mine.end; ++it) {
      const WorkItem i = p.item(it);
      const std::int64_t lanes = p.pass == ConvPass::forward ? i.filters.size() : i.channels.size();
      w += static_cast<double>(i.images.size()) * static_cast<double>(i.pixels.size()) *
           static_cast<double>(i.groups.size()) * static_cast<double>(lanes);
    }
    l.worst = std::max(l.worst, w);
    l.total += w;
  }
  return l;
}

}  // namespace

double ConvPlan::imbalance() const {
  const Loads l = thread_loads(*this);
  return l.total > 0.0 ? l.worst * static_cast<double>(threads) / l.total : 1.0;
}

namespace {

ConvPlan plan_with_threads(const Conv2dShape& s, ConvPass pass, int threads,
                           const PlanTuning& tuning) {
  ConvPlan p;
  p.pass = pass;
  p.groups = s.groups;
  p.Cg = s.in_channels / s.groups;
  p.Fg = s.out_channels / s.groups;
  p.khw = s.kernel_height * s.kernel_width;
  p.K = p.Cg * p.khw;
  p.P = s.out_height() * s.out_width();
  p.OW = s.out_width();
  p.N = s.batch;
  p.pointwise = is_conv1x1_s1_p0_d1(s);
  const std::int64_t macs = p.N * s.out_channels * p.P * p.K;  // s.macs(), without re-dividing
  // Tiny problems do not pay for waking threads.
  p.threads = plan_threads(macs, threads, tuning);
  p.run_inline = p.threads == 1 && macs <= kMaxMacsInline;
  const std::int64_t T = p.threads, G = p.groups;

  switch (pass) {
    case ConvPass::forward: {
      // Items: image run x group x pixel block x filter block, all with disjoint outputs.
      // A long K is lowered in channel chunks, on images of at least kMinGemmPixels (smaller
      // ones go side by side with the whole K; a tuned chunk size lifts that condition).
      const bool tuned_chunks = tuning.k_chunk_rows > 0;
      const std::int64_t chunk = tuned_chunks ? tuning.k_chunk_rows : kKChunkRows;
      p.k_chunks = p.pointwise || (p.P < kMinGemmPixels && !tuned_chunks)
                       ? 1
                       : std::min(p.Cg, (p.K + chunk / 2) / chunk);
      if (p.k_chunks > 1) {
        choose_blocks(p, tuning, ceil_div(p.Cg, p.k_chunks) * p.khw, p.Fg, 1,
                      kPixelsPerFilterChunked);
      } else {
        p.k_chunks = 1;
        choose_blocks(p, tuning, p.K, p.Fg, p.N);
      }
      choose_image_runs(p, G * p.pixel_blocks);
      // Every step raises `wanted` or filter_blocks, both bounded (by P / kMinSplitPixels and
      // Fg / kMinFiltersPerBlock), so the loop ends. The rounding of set_pixel_blocks can give
      // the same pixel_blocks for several wanted counts (P = 65*65 at 72 threads: asking for
      // one more block gave the same count forever).
      std::int64_t wanted = p.pixel_blocks;
      for (;;) {
        if (balanced(p.items(), T)) break;
        if (p.images_per_block == 1 && p.P / (wanted + 1) >= kMinSplitPixels) {
          set_pixel_blocks(p, ++wanted);
        } else if (p.Fg / (p.filter_blocks + 1) >= kMinFiltersPerBlock) {
          ++p.filter_blocks;
        } else {
          break;
        }
      }
      const std::int64_t cols = p.images_per_block * p.block_pixels;
      p.col_floats = p.skips_im2col() ? 0 : ceil_div(p.Cg, p.k_chunks) * p.khw * cols;
      p.tmp_floats = p.images_per_block > 1 ? ceil_div(p.Fg, p.filter_blocks) * cols : 0;
      break;
    }
    case ConvPass::backward_data: {
      // Items: image run x group x channel block; an item owns its dx planes and runs all of
      // their pixel blocks in order (col2im adds, the activation derivative ends each row).
      while (!balanced(p.N * G * p.channel_blocks, T) && p.channel_blocks < p.Cg) {
        ++p.channel_blocks;
      }
      const std::int64_t rows = ceil_div(p.Cg, p.channel_blocks) * p.khw;
      choose_blocks(p, tuning, rows, p.Fg, p.N);
      // Horizontal strides up to 4: blocks of whole output rows (at most as many as chosen,
      // then balanced), which col2im gathers row by row (col2im_gather_rows) instead of
      // zeroing dx and scattering into it.
      const std::int64_t OW = s.out_width();
      if (p.pixel_blocks > 1 && s.stride_width <= 4 && p.block_pixels > OW) {
        const std::int64_t blocks = ceil_div(s.out_height(), p.block_pixels / OW);
        p.block_pixels = ceil_div(s.out_height(), blocks) * OW;
        p.pixel_blocks = ceil_div(p.P, p.block_pixels);
      }
      choose_image_runs(p, G * p.channel_blocks);
      const std::int64_t cols = p.images_per_block * p.block_pixels;
      p.col_floats = p.skips_im2col() ? 0 : rows * cols;
      p.tmp_floats = p.images_per_block > 1 ? p.Fg * cols : 0;
      // On the packed engine (gemm::sgemm_nn) the GEMMs pack dy into this buffer.
      for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
        p.pack_floats = std::max(p.pack_floats, gemm::nt_pack_floats(gemm::config(isa)));
      }
      break;
    }
    case ConvPass::backward_weights: {
      const auto partial_bytes = static_cast<std::size_t>(s.out_channels) *
                                 static_cast<std::size_t>(p.K) * sizeof(float);
      // Fewer images than threads: the images' output rows cut into pixel parts, as many
      // per image as make the items a multiple of the threads, each of at least
      // kMinSplitPixels pixels (horizontal stride 1: a strided pass's fused pack splits
      // whole images into column phases first).
      const std::int64_t parts = p.N < T ? T / std::gcd(p.N, T) : 1;
      const bool pixel_split = p.N < T && s.stride_width == 1 && s.out_height() >= parts &&
                               p.P / parts >= kMinSplitPixels;
      p.weight_partials = T > 1 && (p.N >= T || pixel_split) &&
                          partial_bytes <= kMaxWeightPartialBytes;
      std::int64_t rows = p.K;
      if (p.weight_partials) {
        // Items: image runs (or pixel parts of single images), each over all groups and
        // channels, summed into the partial dW of the thread they are dealt to: each
        // thread's equal share of the images cut into the same number of runs (image_run),
        // or runs of one image each.
        choose_blocks(p, tuning, rows, p.Fg, pixel_split ? 1 : ceil_div(p.N, T));
        p.image_runs = p.images_per_block == 1 ? p.N
                                               : T * ceil_div(ceil_div(p.N, T), p.images_per_block);
        p.pixel_parts = pixel_split ? parts : 1;
        p.partial_floats = s.out_channels * p.K;
      } else {
        // Items: group x channel block, each owning its columns of dW over all images.
        while (!balanced(G * p.channel_blocks, T) && p.channel_blocks < p.Cg) ++p.channel_blocks;
        rows = ceil_div(p.Cg, p.channel_blocks) * p.khw;
        choose_blocks(p, tuning, rows, p.Fg, p.N);
        p.image_runs = ceil_div(p.N, p.images_per_block);
      }
      const std::int64_t cols = p.images_per_block * p.block_pixels;
      p.col_floats = p.skips_im2col() ? 0 : rows * cols;
      p.tmp_floats = p.images_per_block > 1 ? p.Fg * cols : 0;
      p.weights_transposed = p.Fg <= kMaxFiltersTransposedWeights;
      for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
        p.pack_floats = std::max(p.pack_floats, gemm::nt_pack_floats(gemm::config(isa)));
      }
      if (p.weights_transposed && !p.weight_partials) p.partial_floats = rows * p.Fg;
      break;
    }
  }
  return p;
}

}  // namespace

ConvPlan plan_conv(const Conv2dShape& s, ConvPass pass, int threads, const PlanTuning& tuning) {
  ConvPlan best = plan_with_threads(s, pass, threads, tuning);
  // Items too few or too uneven for the threads (a 3-channel layer's backward weights split by
  // channels kept 3 of 16 threads busy): of a few thread counts up to the one asked for, the
  // one whose plan gives its busiest thread the least work, and of those the fewest threads.
  // Candidates: the fewest threads that could share the work with no more on any of them
  // (total over busiest), and at most one thread an image (backward weights' partial sums
  // then split the images, not the channels). With many items per thread the split is even
  // enough and nothing is checked (thread_loads walks every item).
  if (best.threads <= 1 || best.items() >= kCheckedItemsPerThread * best.threads ||
      best.imbalance() <= kMaxImbalance) {
    return best;
  }
  Loads least = thread_loads(best);
  auto consider = [&](std::int64_t t) {
    if (t < 1 || t >= best.threads) return;
    const ConvPlan q = plan_with_threads(s, pass, static_cast<int>(t), tuning);
    const Loads l = thread_loads(q);
    if (l.worst <= least.worst) {
      least = l;
      best = q;
    }
  };
  auto fewest = [](const Loads& l) {
    return static_cast<std::int64_t>(std::ceil(l.total / l.worst - 1e-9));
  };
  const std::int64_t asked = best.threads;
  consider(fewest(least));
  consider(std::min<std::int64_t>(asked, best.N));
  consider(fewest(least));
  return best;
}

}  // namespace im2gemm::detail
