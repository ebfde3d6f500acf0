#include "conv/packed_conv.hpp"

#include <algorithm>

#include "common/parallel.hpp"
#include "conv/lowering.hpp"
#include "conv/plan.hpp"

namespace im2gemm::detail {

namespace {

using i64 = std::int64_t;

i64 floats64(i64 floats) { return round_up(floats, 16); }  // 64-byte multiples

/// Columns of the last micro-panel of an image left empty, more than this fraction of the
/// image's panels: images go side by side (fold). 7x7 = 49 pixels on 48-lane panels would
/// leave 47 of 96 lanes empty.
constexpr i64 kFoldWasteDenominator = 8;
/// Largest per-thread output buffer of a folded block, in bytes: more filters split the
/// filters into blocks.
constexpr i64 kMaxCBufBytes = i64{2} << 20;
/// Largest per-thread copy of an image's group input split into column phases; a larger
/// image packs from x with strided loads.
constexpr i64 kMaxPhaseBytes = i64{4} << 20;

PackGeom pack_geom(const PackedConv& pc) {
  const i64 Cg = pc.C / pc.G, HW = pc.H * pc.W;
  return PackGeom{Cg,    pc.H,  pc.W,  pc.KH, pc.KW, pc.SH, pc.SW,
                  pc.PH, pc.PW, pc.DH, pc.DW, pc.OH, pc.OW, pc.C * HW};
}

// Work of the busiest thread under a plan (and, in *total, of all threads), in units of one
// tile row (NR columns x MR filters x one k): each item costs its column panels times (its
// filter panels + the packing of its columns, counted as half a filter panel).
double packed_thread_load(const PackedConv& pc, const PackedPlan& q, i64 nr, i64 mr, i64 T,
                          double* total = nullptr) {
  double worst = 0.0;
  for (i64 t = 0; t < T; ++t) {
    double load = 0.0;
    const Part mine = q.thread_items(pc, t, T);
    for (i64 it = mine.begin; it < mine.end; ++it) {
      const PackedItem item = q.item(pc, it);
      const double fpanels = static_cast<double>(ceil_div(item.filters.size(), mr));
      load += static_cast<double>(ceil_div(item.cols.size(), nr)) * (fpanels + 0.5);
    }
    worst = std::max(worst, load);
    if (total) *total += load;
  }
  return worst;
}

}  // namespace

PackedConv packed_forward_problem(const Conv2dShape& s) {
  PackedConv pc;
  pc.N = s.batch;
  pc.C = s.in_channels;
  pc.H = s.in_height;
  pc.W = s.in_width;
  pc.F = s.out_channels;
  pc.G = s.groups;
  pc.KH = s.kernel_height;
  pc.KW = s.kernel_width;
  pc.SH = s.stride_height;
  pc.SW = s.stride_width;
  pc.PH = s.pad_height;
  pc.PW = s.pad_width;
  pc.DH = s.dilation_height;
  pc.DW = s.dilation_width;
  pc.OH = s.out_height();
  pc.OW = s.out_width();
  return pc;
}

PackedConv packed_backward_data_problem(const Conv2dShape& s) {
  PackedConv pc;
  pc.N = s.batch;
  pc.C = s.out_channels;
  pc.H = s.out_height();
  pc.W = s.out_width();
  pc.F = s.in_channels;
  pc.G = s.groups;
  pc.KH = s.kernel_height;
  pc.KW = s.kernel_width;
  pc.DH = s.dilation_height;
  pc.DW = s.dilation_width;
  pc.PH = (s.kernel_height - 1) * s.dilation_height - s.pad_height;
  pc.PW = (s.kernel_width - 1) * s.dilation_width - s.pad_width;
  pc.OH = s.in_height;
  pc.OW = s.in_width;
  return pc;
}

void transform_weights_for_backward_data(const Conv2dShape& s, const float* w, float* wt, i64 c0,
                                         i64 c1) {
  const i64 G = s.groups, Cg = s.in_channels / G, Fg = s.out_channels / G;
  const i64 khw = s.kernel_height * s.kernel_width;
  for (i64 g = 0; g < G; ++g) {
    for (i64 c = c0; c < c1; ++c) {
      float* dst = wt + (g * Cg + c) * Fg * khw;
      for (i64 f = 0; f < Fg; ++f) {
        const float* src = w + ((g * Fg + f) * Cg + c) * khw;
        for (i64 r = 0; r < khw; ++r) dst[f * khw + r] = src[khw - 1 - r];
      }
    }
  }
}

i64 PackedPlan::items(const PackedConv& pc) const {
  return pc.G * (fold ? col_blocks : pc.N * col_blocks) * filter_blocks;
}

PackedItem PackedPlan::item(const PackedConv& pc, i64 it) const {
  const i64 mr = gemm::config(isa).mr, Fg = pc.F / pc.G, P = pc.OH * pc.OW;
  const i64 filter_panels = ceil_div(Fg, mr);
  const i64 outer = fold ? col_blocks : pc.N * col_blocks;
  const i64 fb = it % filter_blocks, key = it / filter_blocks, ob = key % outer;
  PackedItem item;
  item.columns_key = key;
  item.group = key / outer;
  if (fold) {
    item.cols = Part{ob * nc, std::min(cols, ob * nc + nc)};
  } else {
    item.image = ob / col_blocks;
    const i64 cb = ob % col_blocks;
    item.cols = Part{item.image * P + cb * nc, item.image * P + std::min(P, cb * nc + nc)};
  }
  item.filters = Part{part_begin(fb, filter_blocks, filter_panels) * mr,
                      std::min(Fg, part_begin(fb + 1, filter_blocks, filter_panels) * mr)};
  return item;
}

double PackedPlan::imbalance(const PackedConv& pc) const {
  const gemm::Config& cfg = gemm::config(isa);
  double total = 0.0;
  const double worst = packed_thread_load(pc, *this, cfg.nr, cfg.mr, threads, &total);
  return total > 0.0 ? worst * threads / total : 1.0;
}

std::size_t PackedPlan::scratch_bytes() const {
  const i64 seg_bytes = round_up(segments * static_cast<i64>(sizeof(PackSegment)), 64);
  const i64 range_bytes = round_up(range_entries * static_cast<i64>(sizeof(LaneRange)), 64);
  return static_cast<std::size_t>(
      (floats64(b_floats) + floats64(c_floats) + floats64(phase_floats)) * 4 + seg_bytes +
      range_bytes);
}

namespace {

PackedPlan make_packed_plan(const PackedConv& pc, Isa isa, int threads, const PlanTuning& tuning);

// The last plans made on this thread: the balance search can take milliseconds at many
// threads on a large shape, and a training loop asks for the same few plans every step.
struct PlanCache {
  struct Entry {
    std::int64_t key[19] = {};
    PackedPlan plan;
  };
  static constexpr int kEntries = 8;
  Entry entries[kEntries];
  int used = 0, next = 0;
};
thread_local PlanCache t_plans;

}  // namespace

PackedPlan plan_packed(const PackedConv& pc, Isa isa, int threads, const PlanTuning& tuning) {
  const std::int64_t key[19] = {pc.N,
                                pc.C,
                                pc.H,
                                pc.W,
                                pc.F,
                                pc.G,
                                pc.KH,
                                pc.KW,
                                pc.SH,
                                pc.SW,
                                pc.PH,
                                pc.PW,
                                pc.DH,
                                pc.DW,
                                pc.OH,
                                pc.OW,
                                static_cast<std::int64_t>(isa_clamp(isa)),
                                threads,
                                tuning.min_macs_per_thread};
  PlanCache& c = t_plans;
  for (int e = 0; e < c.used; ++e) {
    if (std::equal(key, key + 19, c.entries[e].key)) return c.entries[e].plan;
  }
  PlanCache::Entry& slot = c.entries[c.next];
  slot.plan = make_packed_plan(pc, isa, threads, tuning);
  std::copy(key, key + 19, slot.key);
  c.next = (c.next + 1) % PlanCache::kEntries;
  c.used = std::min(c.used + 1, PlanCache::kEntries);
  return slot.plan;
}

namespace {

PackedPlan make_packed_plan(const PackedConv& pc, Isa isa, int threads, const PlanTuning& tuning) {
  const gemm::Config& cfg = gemm::config(isa);
  PackedPlan p;
  p.isa = cfg.isa;
  const i64 nr = cfg.nr, mr = cfg.mr;
  const i64 Cg = pc.C / pc.G, Fg = pc.F / pc.G, K = Cg * pc.KH * pc.KW, P = pc.OH * pc.OW;
  const i64 macs = pc.N * pc.F * P * K;
  p.threads = plan_threads(macs, threads, tuning);
  p.run_inline = p.threads == 1 && macs <= kMaxMacsInline;
  const i64 T = p.threads;

  p.k_blocks = ceil_div(K, cfg.kc);
  p.kc = ceil_div(K, p.k_blocks);
  const i64 panels = ceil_div(P, nr);
  p.fold = pc.N > 1 && (panels * nr - P) * kFoldWasteDenominator > panels * nr;
  p.cols = p.fold ? pc.N * P : P;
  const i64 nc_target = std::max(nr, cfg.b_bytes / (4 * p.kc) / nr * nr);
  // Blocks of equal width (in whole panels): 392 columns at a 384 target are 2 x 240, not
  // 384 + 8.
  p.nc = round_up(ceil_div(p.cols, ceil_div(p.cols, nc_target)), nr);
  p.col_blocks = ceil_div(p.cols, p.nc);
  const i64 filter_panels = ceil_div(Fg, mr);
  auto block_filters = [&] { return ceil_div(filter_panels, p.filter_blocks) * mr; };
  // Folded output blocks go through a per-thread buffer: bound it by splitting filters.
  while (p.fold && p.filter_blocks < filter_panels && block_filters() * p.nc * 4 > kMaxCBufBytes) {
    ++p.filter_blocks;
  }
  // Balance: item sizes decide it when items are few (392 columns as 240 + 152 kept one
  // thread waiting a third of the time). Weigh a bounded set of splits (narrower column
  // blocks, more filter blocks) by the work of the busiest thread; if none keeps it within
  // kMaxImbalance of the mean, run on fewer threads.
  if (T > 1 && p.imbalance(pc) > kMaxImbalance) {
    const PackedPlan base = p;
    const i64 panels_total = ceil_div(p.cols, nr);
    auto best_split = [&](i64 threads_now) {
      PackedPlan best = base;
      best.threads = static_cast<int>(threads_now);
      double best_load = -1.0;
      // Candidates: a few more column blocks, then multiples; 1..8 times the filter blocks.
      for (i64 c = 0; c < 12; ++c) {
        const i64 cb =
            std::min(panels_total, c < 4 ? base.col_blocks + c : base.col_blocks * (c - 2));
        const i64 nc = round_up(ceil_div(base.cols, cb), nr);
        for (i64 f = 1; f <= 8; ++f) {
          PackedPlan q = best;
          q.nc = nc;
          q.col_blocks = ceil_div(base.cols, nc);
          q.filter_blocks = std::min(filter_panels, base.filter_blocks * f);
          const double load = packed_thread_load(pc, q, nr, mr, threads_now);
          if (best_load < 0 || load < best_load * 0.99) {
            best_load = load;
            best = q;
          }
        }
      }
      return best;
    };
    // Thread counts tried: T, T-1, ... for 8 steps, then 7/8 of the last: O(log T) tries.
    for (i64 t = T; t >= 1; t = t > T - 8 ? t - 1 : t * 7 / 8) {
      p = best_split(t);
      if (t == 1 || p.imbalance(pc) <= kMaxImbalance) break;
    }
    p.run_inline = p.threads == 1 && macs <= kMaxMacsInline;
  }
  p.b_floats = p.kc * p.nc;
  p.c_floats = p.fold ? block_filters() * p.nc : 0;
  const i64 split_floats = phase_floats(pack_geom(pc));
  p.phases = pc.SW > 1 && !p.fold && phase_packer(p.isa).pack != nullptr &&
             split_floats * 4 <= kMaxPhaseBytes;
  p.phase_floats = p.phases ? split_floats : 0;
  p.segments = max_pack_segments(p.nc);
  p.range_entries = p.segments * pc.KW;
  return p;
}

}  // namespace

void run_packed(const PackedConv& pc, const PackedPlan& p, WeightFill fill, const void* fill_ctx) {
  const gemm::Config& cfg = gemm::config(p.isa);
  const PackFn pack = pack_im2col_fn(p.isa);
  const i64 nr = cfg.nr;
  const i64 G = pc.G, Cg = pc.C / G, Fg = pc.F / G, P = pc.OH * pc.OW;
  const i64 K = Cg * pc.KH * pc.KW, HW = pc.H * pc.W;
  const PackGeom geo = pack_geom(pc);
  const PhasePacker phases = phase_packer(p.isa);
  const i64 panel_stride = p.kc * nr;
  const bool relu = pc.act == Activation::relu;
  const bool act_after = pc.act == Activation::sigmoid || pc.act == Activation::tanh;

  run_with_scratch(p.threads, p.run_inline, p.scratch_bytes(), [&](i64 t, i64 nthr, float* base) {
    if (fill != nullptr) {
      fill(fill_ctx, t, nthr);
#pragma omp barrier
    }
    float* bpack = base;
    float* cbuf = bpack + floats64(p.b_floats);
    float* xs = cbuf + floats64(p.c_floats);  // phase planes of image split_key
    auto* segs = reinterpret_cast<PackSegment*>(xs + floats64(p.phase_floats));
    auto* ranges = reinterpret_cast<LaneRange*>(
        reinterpret_cast<char*>(segs) + round_up(p.segments * i64{sizeof(PackSegment)}, 64));
    i64 seg_key = -1, packed_key = -1, split_key = -1, nseg = 0;
    const Part mine = p.thread_items(pc, t, nthr);
    for (i64 it = mine.begin; it < mine.end; ++it) {
      const PackedItem item = p.item(pc, it);
      const i64 key = item.columns_key, g = item.group, n = item.image;
      const i64 j0 = item.cols.begin, j1 = item.cols.end;
      const i64 f0 = item.filters.begin, f1 = item.filters.end;
      const float* xg = pc.x + g * Cg * HW;
      if (key != seg_key) {
        nseg = build_pack_segments(geo, j0, j1, static_cast<int>(nr), panel_stride, segs, ranges);
        if (p.phases) to_phase_segments(geo, segs, nseg);
        seg_key = key;
      }
      if (p.phases && split_key != n * G + g) {
        phases.split(geo, xg + n * pc.C * HW, xs);
        split_key = n * G + g;
      }
      float* yb = p.fold ? cbuf : pc.y + (n * pc.F + g * Fg + f0) * P + (j0 - n * P);
      const i64 ldy = p.fold ? p.nc : P;
      for (i64 kb = 0; kb < p.k_blocks; ++kb) {
        const i64 k0 = kb * p.kc, k1 = std::min(K, k0 + p.kc);
        if (p.k_blocks > 1 || packed_key != key) {
          if (p.phases) {
            phases.pack(geo, xs, segs, nseg, k0, k1, static_cast<int>(nr), bpack);
          } else {
            pack(geo, xg, segs, ranges, nseg, k0, k1, static_cast<int>(nr), bpack);
          }
          packed_key = key;
        }
        gemm::BlockArgs a;
        a.a = pc.w + (g * Fg + f0) * K + k0;
        a.lda = K;
        a.m = f1 - f0;
        a.k = k1 - k0;
        a.bpack = bpack;
        a.panel_stride = panel_stride;
        a.ncols = j1 - j0;
        a.c = yb;
        a.ldc = ldy;
        a.bias = kb == 0 && pc.bias ? pc.bias + g * Fg + f0 : nullptr;
        a.accumulate = kb > 0;
        a.relu = relu && kb == p.k_blocks - 1;
        gemm::multiply_block(cfg, a);
      }
      if (p.k_blocks > 1) packed_key = -1;
      // Finish the block: sigmoid / tanh, the input activation's derivative, and (fold) the
      // copy of the buffered tiles into the output rows of each image.
      if (p.fold) {
        for (i64 j = j0; j < j1;) {
          const i64 img = j / P, pix = j % P, len = std::min(j1 - j, P - pix);
          for (i64 f = f0; f < f1; ++f) {
            const i64 off = (img * pc.F + g * Fg + f) * P + pix;
            const float* src = cbuf + (f - f0) * p.nc + (j - j0);
            if (act_after) {
              bias_act_copy(pc.y + off, src, len, 0.0f, pc.act);
            } else {
              copy_floats(pc.y + off, src, len);
            }
            if (pc.deriv != Activation::identity)
              act_backward(pc.deriv, pc.xd + off, pc.y + off, len);
          }
          j += len;
        }
      } else {
        if (act_after) bias_act_rows(yb, P, f1 - f0, j1 - j0, nullptr, pc.act);
        if (pc.deriv != Activation::identity) {
          for (i64 f = f0; f < f1; ++f) {
            const i64 off = (n * pc.F + g * Fg + f) * P + (j0 - n * P);
            act_backward(pc.deriv, pc.xd + off, pc.y + off, j1 - j0);
          }
        }
      }
    }
  });
}

}  // namespace im2gemm::detail
