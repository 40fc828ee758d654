// Launch plans and the sequence of launches of one forward (the algorithm of SPEC.md):
//   training, u-first, per iteration:  t = M v   (norm fused)   s = Mᵀ u  (norm and σ fused)
//   training, v-first, per iteration:  s = Mᵀ u  (norm fused)   t = M v   (norm and σ fused)
//   training, one pass (u-first, contiguous rows): t = M v and s = Mᵀ t in one read of W, then
//                                      a small reduction of the blocks' partial s (norms fused)
//   training, one pass (v-first, h small enough): s = Mᵀ u and t = M s in one read of W by
//                                      column panels, then a reduction of the panels' partial t
//   eval:                              t = M v, σ = uᵀ t fused (the one-pass rows kernel when the
//                                      layer uses one pass, else the two-pass t = M v kernel)
//   then one commit-and-divide launch.
// A training forward with one iteration is 3 launches, and 1 without W_sn where the one-pass
// iteration is one cooperative launch (plan.op_coop); an eval forward 2. Vectors between the
// products stay unnormalized in scratch, with their norm in a device scalar the next kernel
// applies, so normalization costs no launch of its own.
#include <climits>
#include <cstdlib>
#include <cstring>

#include "kernels.h"
#include "sn_types.cuh"
#include "sn_reference.h" /* sn_dtype_size */

namespace {

int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < cap && p < n) p <<= 1;
  return p;
}

int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Partial products of the one-pass kernels: by rows, a partial s (w) per block or per cluster;
// by columns, a partial t (h) per panel.
int64_t op_part_floats(const sn_cuda_plan_t &p) {
  const int64_t w = p.view.A * p.view.B;
  if (p.one_pass_cols) return sn::one_pass_cols_panels(w) * p.view.h;
  return p.one_pass ? p.op_blocks / (p.op_cluster > 1 ? p.op_cluster : 1) * w : 0;
}

// Σ t² partials: one per row block (training or eval), or per reduction block of the column kernels.
int64_t op_tsq_floats(const sn_cuda_plan_t &p) {
  if (p.one_pass_cols) return sn::one_pass_cols_reduce_blocks(p.view.h);
  return p.op_blocks > p.op_eval_blocks ? p.op_blocks : p.op_eval_blocks;
}

// The layer on chip over a grid of G blocks: G partial s (w each), G Σ t², G Σ s².
int64_t ocg_floats(const sn_cuda_plan_t &p) {
  const int64_t G = p.onchip.grid;
  const sn_view_t gv = sn_on_grid_view(&p);
  return G > 0 ? G * (gv.A * gv.B) + 2 * G : 0;
}

// Round a float count up to 64 floats (256 bytes), keeping every scratch buffer 16-byte aligned.
size_t pad(int64_t floats) { return (size_t)((floats + 63) / 64 * 64); }

// Development knobs, read at plan time from the environment, so that sn_bench can time the
// kernels' variants on a card (bench/NOTES.md); not part of the API, and the defaults need none.
// SPECNORM_TUNE is a comma-separated list of:
//   op_bps=N      at most N one-pass blocks per multiprocessor
//   op_grid=M     at most M one-pass blocks
//   op_cluster=C  one-pass blocks in thread-block clusters of C (1, 2, 4 or 8; sm_90 and up) that
//                 add their partial s on chip
//   op_rows=2     the one-pass rows kernel takes two rows a step (two in flight per block, one
//                 block sum for both), where a row is at most 16 elements per thread
//                 (cuda/one_pass.cu): bitwise one row a step on the same grid (op_grid,
//                 op_cluster); unforced, the grid follows this instance's occupancy, so the
//                 partial sums differ (H100 4884391: 4096² fp32 scale −5%, eval +4%; off)
//   op_pp=0|1|2|3 the one-pass training rows kernel loops through a ring of row buffers with their
//                 roles turned (cuda/one_pass.cuh, rows_body), so that one or two rows are in
//                 flight per block while one is reduced: 0 never; 1 (the default) a ring of two
//                 (the ping-pong loop) for the 2-byte rows of 512 threads × 4 packs of 8
//                 (8200-16384 columns, multiples of 8; H200 at ea7ea7e: 4096 × 16384 bf16 and
//                 fp16 train −2%, scale-only −4-5%; 12288² −3% and −7%) and of 256 × 2 packs
//                 of 8 (2056-4096 columns), whose cooperative scale-only launch takes it too
//                 (kCoopRing; H200 at 771ed7c: 4096² bf16 scale-only −5%, train −1%); 2 a ring
//                 of two for every instance of one row a step; 3 a ring of three for every bf16
//                 instance of one row a step, elsewhere as 1 (H200 at 771ed7c: 2 and 3 within
//                 ±1% of 1 elsewhere).
//                 Either way only where its blocks per multiprocessor equal the plain kernel's;
//                 bitwise one row a step on the same grid
//   op_reduce_cols=4|8|16  the one-pass reduce kernel takes 4, 8 or 16 float4 columns per block
//                 on 64, 32 or 16 lanes along the partials; unset: the most that keep at least
//                 two reduce blocks per multiprocessor (reduce_cols_default below)
//   op_eval_own=0|1 the one-pass eval rows kernel on the training grid (0) or on a grid of its
//                 own occupancy without clusters (1, the default): its instance needs fewer
//                 registers (4096 × 16384 bf16: 56 against 120, 2 blocks per multiprocessor
//                 against 1; 4096² bf16 32 against 64), so more rows are in flight (H100 at
//                 ab6e27f: bf16 eval 2-3% faster, fp32 the same; other bits of the eval σ, as
//                 deterministic)
//   op_coop=0|1   each one-pass iteration by rows (one row a step) as one cooperative launch (1)
//                 or as the kernels (0): the rows, a grid barrier, the reduction, and for a
//                 scale-only forward the commit (cuda/one_pass_coop.cu); the same bits as the
//                 kernels it replaces, for rows instances of 256 threads whose grid fits at once
//                 (else the kernels); set, in every forward; unset: on sm_90 and up, in the
//                 forwards without W_sn only (H100 at 61eb446: a training forward with W_sn,
//                 2 launches instead of 3, was 2-5% slower at 2048², 768 × 3072 and 4096² bf16;
//                 4096² fp32 scale-only 42.6 -> 40.8 µs). op_coop=2 (tests) has that
//                 launch refused, and the kernels run instead; op_coop=3 launches it as a
//                 programmatic dependent launch too (sm_90, where pdl is on; else as 1)
//   div_stream=0|1  the division loads W and stores W_sn as streaming data, evict-first in L2, so
//                 that W's lines still in L2 after the iteration stay for it (cuda/commit_divide.cu);
//                 unset: by W's bytes against the L2 (div_stream_default below)
//   div_prefetch=0|1  the division copies each thread's first 16-byte pack of W to shared
//                 memory before its PDL wait (1), while the kernels before it (the reduce, or the
//                 eval rows) still run, or loads it after (0, the default; cuda/commit_divide.cu);
//                 the same bits. H200 at 64f5bc9: 0 to −1.3 µs, within the spread (bench/NOTES.md,
//                 session 15)
//   bw_stream=0|1 the backward's ⟨G, W⟩ kernel loads W plainly (0) or evict-first, so that L2
//                 keeps more of G for the kernel after it (1, the default: cuda/backward.cu)
//   bw_grid=N     the backward's apply kernel by rows on at most N blocks, each taking rows N
//                 apart (default: a block per row, up to 16 × 8 per SM; cuda/backward.cu); the
//                 same bits. Lost on an H200 at 64f5bc9 (1056: +2-5%; bench/NOTES.md, session
//                 15); kept for the tests' blocks of several rows
//   pdl=0|1       every kernel as a programmatic dependent launch (sm_90 and up)
//   group_coop=0|1  a grouped forward as three kernels (0) or one cooperative launch (1;
//   group_grid=N    cuda/group.cu) of at most N blocks (default: as many as fit); unset: by
//                   the group's bytes (kGroupCoopMaxBytes below)
//   group_grid_force=N  that launch with exactly N blocks, even more than can be resident (tests:
//                   the refused launch and its fallback, host/group.c)
//   group_bw_coop=0|1  a grouped backward as two kernels (0) or one cooperative launch (1;
//                   cuda/group_backward.cu); unset: group_coop where set, else two kernels
//                   (kGroupBackwardCoop below)
//   op_onchip=0|1 a layer that fits on chip (u-first) runs each warmed-up forward (1), or none (0),
//                 as one launch that holds it in the shared memory of a thread-block cluster
//                 (cuda/on_chip.cu), and its backward too (1); unset: the training forwards of
//                 small layers on sm_90 and up (kLayerOnChipMaxElems below)
//   group_onchip=0|1  a group whose every layer fits on chip runs as one launch that holds each
//                   layer in the shared memory of a thread-block cluster (cuda/on_chip.cu); unset:
//                   so on sm_90 and up unless another group_ key forces a path (kDefaultGroupOnChip)
//   group_onchip_cluster=C  with clusters of C blocks (1, 2, 4 or 8) only
//   onchip_threads=256|512  the on-chip forward (op_onchip, group_onchip) with blocks of that many
//                   threads; unset: by size (sn_cuda_on_chip_threads below)
//   onchip_refuse=1 the on-chip launches (op_onchip, group_onchip) with clusters of 16 blocks,
//                   which the device refuses (tests: the fallbacks, host/layer.c and group.c);
//                   op_onchip_grid's with 1024 times too many blocks, refused too
//   op_onchip_grid=0|1|2  a u-first layer with contiguous rows that the cluster path above does
//                   not take, or a v-first one with dim −1 (as its Mᵀ; also one of a single
//                   row or column), and whose rows fit the shared memory of one block per SM (and up to
//                   7 rows of each block in registers, or, with a third of each block's rows in
//                   shared memory, the rest streamed, rows of at most 1024 packs:
//                   sn_cuda_on_chip_grid_layout) runs its
//                   warmed-up training forwards (1), and its eval forwards too (2), as one
//                   cooperative launch that holds it there (cuda/on_chip_grid.cu), and its
//                   backward too (1 and 2: one launch that holds G there), or not (0). Unset:
//                   the v-first layers of kGridVFirstMinElems elements and more whose rows all
//                   fit the shared memory (and enough rows, wide enough), on sm_90 and up, their
//                   training forwards and backward (below); no u-first layer (H200 at 771ed7c,
//                   4096² train +42%, 2048² +5-9%; scale-only of layers up to 16 MiB −7 to
//                   −25%; README, "Development knobs")
//   onchip_grid_rows=N  (tests) that launch's blocks hold at most N rows each in shared memory and
//                   the rest in registers (up to 7, rows of whole 16-byte packs) or streamed
// Unknown keys and bad values are ignored. (Four knobs that lost or made no difference on an H100 at
// 6626f15 were removed: bench/NOTES.md.)
struct Tune {
  int op_bps = 0;      // 0: as many as fit
  int op_grid = 0;     // > 0: at most this many one-pass blocks (tests: the same grid for two
                       // kernels of different occupancy)
  int op_cluster = 0;  // 0: the default below
  int op_rows = 1;     // 2: the one-pass rows two a step, where the instance exists
  int op_pp = 1;       // the training rows kernel's ring: 0 never, 1 of two where it is the default,
                       // 2 of two wherever built, 3 of three for bf16 and elsewhere as 1 (each only
                       // at the plain kernel's occupancy)
  int op_reduce_cols = 0;  // float4 columns per block of the one-pass reduce kernel (4, 8, 16);
                           // 0: by width (reduce_cols_default)
  int op_coop = -1;    // -1: the default below; 1: the one-pass iteration as one cooperative
                       // launch; 2: refused (tests); 3: as 1, and a programmatic dependent launch
  int op_eval_own = 1;  // 1: the one-pass eval kernel on its own occupancy's grid
  int pdl = -1;        // -1: the default below
  int div_stream = -1;  // -1: by size (div_stream_default); 1: the division's accesses streaming
  int div_prefetch = 0;  // 1: the division's first pack of W per thread before the PDL wait
  int bw_stream = 1;    // 1: the backward's inner kernel loads W streaming
  int bw_grid = 0;      // > 0: at most this many blocks of the backward's apply kernel by rows
  int group_coop = -1;  // -1: the default below; 1: grouped forwards in one cooperative launch
  int group_grid_force = 0;  // > 0: exactly this many blocks in that launch
  int group_bw_coop = -1;    // -1: group_coop where set, else kGroupBackwardCoop; 1: grouped
                             // backwards in one cooperative launch
  int op_onchip = -1;            // -1: the default below; 1: every forward of a layer that fits on chip
  int group_onchip = -1;         // -1: the default below; 1: groups that fit on chip run on chip
  int group_onchip_cluster = 0;  // > 0: that launch's cluster size
  int onchip_refuse = 0;         // 1: the on-chip launches with clusters of 16 blocks, refused (tests)
  int onchip_threads = 0;        // 0: by size; 256 or 512: the on-chip forward's threads per block
  int op_onchip_grid = -1;       // 1: a layer the cluster path does not take, on chip over the grid
                                 // (training forwards and the backward); 2: also its eval forwards;
                                 // 0: none; -1: the default below (kGridVFirstMinElems)
  int onchip_grid_rows = 0;      // > 0 (tests): at most this many rows per block in shared memory
                                 // on the grid, the rest in registers or streamed
  int group_grid = 0;  // > 0: at most this many blocks in that launch (tests: blocks run several
                       // blocks of every step)
};

Tune read_tune() {
  Tune t;
  struct Key {
    const char *name;  // with its '='
    int *field;
    long lo, hi;
    bool pow2;  // only powers of two
  };
  const Key keys[] = {
      {"op_bps=", &t.op_bps, 1, 64, false},        {"op_grid=", &t.op_grid, 1, 1000000, false},
      {"op_cluster=", &t.op_cluster, 1, 8, true},  {"pdl=", &t.pdl, 0, 1, false},
      {"op_rows=", &t.op_rows, 1, 2, false},       {"op_pp=", &t.op_pp, 0, 3, false},
      {"op_reduce_cols=", &t.op_reduce_cols, 4, 16, true},
      {"op_coop=", &t.op_coop, 0, 3, false},      {"op_eval_own=", &t.op_eval_own, 0, 1, false},
      {"div_stream=", &t.div_stream, 0, 1, false}, {"bw_stream=", &t.bw_stream, 0, 1, false},
      {"div_prefetch=", &t.div_prefetch, 0, 1, false}, {"bw_grid=", &t.bw_grid, 1, 1000000, false},
      {"group_coop=", &t.group_coop, 0, 1, false}, {"group_grid=", &t.group_grid, 1, 1000000, false},
      {"group_grid_force=", &t.group_grid_force, 1, 1000000, false},
      {"group_bw_coop=", &t.group_bw_coop, 0, 1, false},
      {"group_onchip=", &t.group_onchip, 0, 1, false},  {"op_onchip=", &t.op_onchip, 0, 1, false},
      {"group_onchip_cluster=", &t.group_onchip_cluster, 1, 8, true},
      {"onchip_refuse=", &t.onchip_refuse, 0, 1, false},
      {"onchip_threads=", &t.onchip_threads, 256, 512, true},
      {"op_onchip_grid=", &t.op_onchip_grid, 0, 2, false},
      {"onchip_grid_rows=", &t.onchip_grid_rows, 1, 1000000, false},
  };
  const char *s = std::getenv("SPECNORM_TUNE");
  while (s && *s) {
    const char *end = std::strchr(s, ',');
    const size_t len = end ? (size_t)(end - s) : std::strlen(s);
    for (const Key &k : keys) {
      const size_t n = std::strlen(k.name);
      if (len <= n || std::strncmp(s, k.name, n) != 0) continue;
      char *stop = nullptr;
      const long v = std::strtol(s + n, &stop, 10);
      if (stop == s + len && v >= k.lo && v <= k.hi && (!k.pow2 || (v & (v - 1)) == 0))
        *k.field = (int)v;
      break;
    }
    s = end ? end + 1 : nullptr;
  }
  return t;
}

// Whether launches use programmatic dependent launch when SPECNORM_TUNE does not say (sm_90 and
// up only). Measured on an H100 (bench/results/2026-11-26-h100, variants): 1-3% off the single
// layers' forwards, 28 -> 26 µs for the SN-GAN grouped call, 1365 -> 1227 µs for ViT-B/16 layer
// by layer; every GPU test passed under it.
constexpr int kDefaultPdl = 1;

// Blocks per cluster of the one-pass rows kernel when SPECNORM_TUNE does not say: 4 when the
// blocks' partial s (blocks · w floats, written and read again) would be more than 5% of W's
// bytes, else none. Measured on an H100: 4096² fp32 train 97.9 -> 95.1 µs, scale 48.9 -> 45.6;
// bf16 65.3 -> 60.5 and 41.0 -> 36.9; 4096 × 16384 fp32 (3% of partials) unchanged.
int default_cluster(int64_t blocks, sn_view_t view, sn_dtype_t dtype) {
  const double partials = (double)blocks * (double)view.B * 4.0;
  const double w_bytes = (double)view.h * (double)view.B * (double)sn_dtype_size(dtype);
  return partials > 0.05 * w_bytes ? 4 : 1;
}

// Float4 columns per block of the one-pass reduce kernel when SPECNORM_TUNE does not say: the most
// of 16, 8 and 4 that keep at least two reduce blocks per multiprocessor (w4 / cols of them), so
// that wide rows take fewer blocks, each with its fixed costs (the Σ t² partials read and summed,
// three block sums), and narrower ones keep the blocks that read the partials in parallel.
// Measured on an H100 (bench/results/2026-11-26-h100-ab6e27f, variants): 4096 × 16384 (512 blocks
// of 8) scale-only fp32 110.6 -> 106.8 µs, bf16 71.2 -> 67.2, training 1-2% faster (16 columns,
// 256 blocks, the same within 1%); 4096² (stays 4: 8 would leave 128 blocks) 1-3% slower with 8
// or 16.
int reduce_cols_default(int64_t w4, int sm_count) {
  for (int cols = 16; cols > 4; cols /= 2)
    if (sn::one_pass_reduce_blocks(w4, cols) >= 2LL * sm_count) return cols;
  return 4;
}

// The grouped forward is one cooperative launch when SPECNORM_TUNE does not say and the group's
// weights are at most this many bytes. Measured on an H200 (bench/results/2026-11-26-h200-e56c4b8,
// variants): SN-GAN CIFAR-10 (4.2 MB fp32) train 23.9 -> 19.9 µs, scale 17.8 -> 16.9; ViT-B/16
// (345 MB) train 439 -> 560 µs, scale 215 -> 251. The cooperative grid is what can be resident
// (2 blocks of 256 per SM), so its loads in flight are fewer than the three kernels' and a
// group that streams from DRAM loses ~25% of its streaming time; what it saves is ~1-4 µs of
// kernel boundaries. At 8 MiB the streaming takes ~2 µs (scale) to ~6 µs (train), below that
// break-even; the cross-over itself is not measured.
constexpr double kGroupCoopMaxBytes = 8.0 * 1024 * 1024;

// A v-first layer whose Mᵀ has contiguous rows (dim −1: Keras', Flax's and Haiku's kernels) runs its
// warmed-up training forwards (with W_sn and scale only) and its backward on chip over the grid
// (cuda/on_chip_grid.cu, as the u-first iteration on Mᵀ) when SPECNORM_TUNE does not set
// op_onchip_grid, the device is sm_90 or later, the layer has at least this many elements and all
// its rows fit the blocks' shared memory (none in registers or streamed). Its usual kernels take
// three launches a forward (two passes over W; one pass by columns where h <= 768 in fp32, 1536 in
// 2 bytes: 3072 × 768's). Measured on an H200 (bench/results/2026-11-28-h200-771ed7c,
// variants, `op_onchip=0,op_onchip_grid=2` against the default): 2048 × 2048 dim −1 fp32 train
// 69.0 -> 28.9 µs, scale-only 63.4 -> 18.2, backward 36.4 -> 25.0; bf16 68.5 -> 26.6, 64.4 ->
// 16.6, 30.7 -> 17.7; 3072 × 768 dim −1 fp32 37.3 -> 22.2, 33.3 -> 15.4, 25.0 -> 16.4; bf16
// 34.4 -> 20.1, 31.7 -> 14.5, 20.5 -> 13.3. Layers below 2^21 elements (the smallest measured has
// 2.4M), the eval forward, and the rows in registers or streamed (u-first 4096² lost with them)
// keep their usual kernels until measured; so do those whose Mᵀ has fewer than
// kGridVFirstMinRowsPerSm rows a multiprocessor or rows of fewer than kGridVFirstMinWidth elements
// (the measured ones: 2048 and 3072 rows of 2048 and 768), where the blocks' partial sums, G rows
// of the width each iteration, would approach W's own bytes (128 × 16384: as many as W) or a block
// would hold thousands of rows of a few elements (2²¹ × 1).
constexpr int64_t kGridVFirstMinElems = int64_t(1) << 21;
constexpr int64_t kGridVFirstMinRowsPerSm = 8;
constexpr int64_t kGridVFirstMinWidth = 256;

// The grouped backward is two kernels when SPECNORM_TUNE sets neither group_bw_coop nor group_coop,
// whatever the group's size: the cooperative launch (one grid barrier between ⟨G, W⟩ and dW, on
// the blocks that can be resident) lost to the two kernels on the group it was built for.
// Measured on an H200 (bench/results/2026-11-28-h200-771ed7c, variants): SN-GAN CIFAR-10 grouped
// backward fp32 20.2 -> 13.9 µs, bf16 18.5 -> 11.6 (from a CUDA graph 21.4 -> 14.9 and
// 19.0 -> 12.9). Session 17 predicted 6-10 µs for the cooperative launch; its 3 resident blocks of
// 256 a multiprocessor each take ~2.6 blocks of each step, in turn, where the kernels' 1030 blocks
// run side by side.
constexpr int kGroupBackwardCoop = 0;

// The division's loads of W and stores of W_sn are evict-first (div_stream) when SPECNORM_TUNE does
// not say and W takes more than a quarter of the L2 and at most twice it: after the iteration the
// L2 still holds part of W, and the division's own traffic would otherwise evict it before it is
// read. Measured on an H100 (50 MiB of L2; bench/results/2026-11-26-h100-6626f15, variants):
// 4096² fp32 (64 MiB) train 90.0 -> 85.1 µs, eval 79.9 -> 76.5; bf16 (32 MiB) 53.5 -> 49.1 and
// 47.0 -> 43.3; 4096 × 16384 bf16 (128 MiB) 167.0 -> 164.8, fp32 (256 MiB) 297.6 -> 300.4. Below a
// quarter of the L2 both W and W_sn stay there, and evict-first stores would only send W_sn out
// before the layer's own product reads it.
bool div_stream_default(double w_bytes) {
  int dev = 0, l2 = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
  if (e != cudaSuccess || l2 <= 0) {
    sn::forget(e);
    return false;
  }
  return w_bytes > 0.25 * l2 && w_bytes <= 2.0 * l2;
}

// A group whose every layer fits on chip (cuda/on_chip.cu) runs there when SPECNORM_TUNE sets none
// of group_onchip, group_coop, group_grid, group_grid_force, and the device has
// clusters (sm_90 and up; on an A100 each layer would be one block, not measured). Measured on an
// H100 (bench/results/2026-11-26-h100-6626f15, onchip and variants): SN-GAN CIFAR-10 grouped train
// fp32 22.1 -> 16.7 µs, bf16 25.1 -> 14.7; scale 18.1 -> 11.6 and 22.9 -> 10.2; eval 14.9 -> 13.2
// and 18.5 -> 11.0. Groups with a layer that does not fit keep the paths above.
constexpr int kDefaultGroupOnChip = 1;

// The on-chip forward's threads per block when SPECNORM_TUNE does not say: 512 for a group, and for
// a single layer of at least kOnChipWideElems elements; 256 for smaller layers. Measured on an H100
// (bench/results/2026-11-26-h100-bdc3f72, onchip): SN-GAN grouped train fp32 16.5 -> 14.8 µs, bf16
// 14.8 -> 13.3, eval 13.0 -> 11.3 and 11.0 -> 9.7, scale unchanged (±1%); single layers on chip,
// training forward, 256 -> 512 threads: 128 × 1152 fp32 14.6 -> 12.6 µs, 128 × 2048 20.8 -> 17.1,
// 512 × 512 20.1 -> 15.9, but 64 × 27 6.6 -> 7.2 and 64 × 576 8.3 -> 8.4.
constexpr int64_t kOnChipWideElems = 64 * 1024;

// A single warmed-up u-first layer's training forwards (with W_sn and scale only) run on chip (one
// launch, W read once) when SPECNORM_TUNE does not set op_onchip, the device has clusters (sm_90
// and up) and the layer has at most kLayerOnChipMaxElems elements. Its eval forward and backward
// keep the usual kernels: on chip they were slower (H100, 6626f15: SN-GAN layer by layer eval
// +22%, backward +129%). Measured on an H100 (bdc3f72, onchip, layer by layer without graphs, the
// default against op_onchip=1 with the threads above), training forward: 64 × 27 13.4 -> 6.6 µs,
// 64 × 576 14.0 -> 8.3, 128 × 1152 15.4 -> 12.6 (bf16 15.2 -> 12.1), but 128 × 2048 15.5 -> 17.1
// and 256 × 1152 16.0 -> 17.7; SN-GAN CIFAR-10 layer by layer (all of its layers below the limit):
// train 157.8 -> 113.2 µs, scale 155.5 -> 94.3. Scale only alone would pay up to ~320K elements
// (128 × 2048 15.3 -> 12.8, 512 × 512 15.8 -> 11.6, but 256 × 2304 16.0 -> 27.1), but one limit
// for both keeps sn_forward_scale_only's state bit for bit that of sn_forward (specnorm.h): the
// two kernels add the same sums in other orders. Without clusters (sm_80) a layer is one block,
// not measured: the usual kernels.
constexpr int64_t kLayerOnChipMaxElems = 160 * 1024;

// Compiled like every kernel of the library; only its attributes are read.
__global__ void arch_probe_kernel() {}

// Whether thread-block clusters and programmatic dependent launch may be used: the current device
// has them (compute capability 9.0 and up) AND the kernels that run on it were compiled for them.
// A build for sm_80 only runs on an H100 from compute_80 PTX, whose code has no cluster or
// griddepcontrol path (__CUDA_ARCH__ = 800): the PTX version of the loaded code says so.
bool device_is_sm90_or_later() {
  int dev = 0, major = 0;
  cudaFuncAttributes fa{};
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&fa, arch_probe_kernel);
  if (e != cudaSuccess) {
    sn::forget(e);
    return false;
  }
  return major >= 9 && fa.ptxVersion >= 90;
}

// Whether launches use programmatic dependent launch under these knobs.
int pdl_enabled(const Tune &tune) {
  return (tune.pdl >= 0 ? tune.pdl : kDefaultPdl) && device_is_sm90_or_later();
}

// A grouped call's cooperative launch, if `coop`: at most group_grid blocks, else as many as fit.
int group_coop_cap(const Tune &t, bool coop) { return coop ? (t.group_grid > 0 ? t.group_grid : INT_MAX) : 0; }

}  // namespace

extern "C" int sn_cuda_tune_pdl(void) { return pdl_enabled(read_tune()); }

extern "C" int sn_cuda_tune_group_coop(double w_bytes) {
  const Tune t = read_tune();
  return group_coop_cap(t, t.group_coop >= 0 ? t.group_coop == 1 : w_bytes <= kGroupCoopMaxBytes);
}

extern "C" int sn_cuda_tune_group_backward_coop(void) {
  const Tune t = read_tune();
  const int asked = t.group_bw_coop >= 0 ? t.group_bw_coop : t.group_coop;
  return group_coop_cap(t, asked >= 0 ? asked == 1 : kGroupBackwardCoop == 1);
}

extern "C" int sn_cuda_tune_group_grid_force(void) { return read_tune().group_grid_force; }

extern "C" int sn_cuda_tune_group_onchip(int *cluster, int *refuse) {
  const Tune t = read_tune();
  *cluster = t.group_onchip_cluster;
  *refuse = t.onchip_refuse;
  if (t.group_onchip >= 0) return t.group_onchip;
  const bool forced = t.group_coop >= 0 || t.group_grid > 0 || t.group_grid_force > 0;
  return !forced && kDefaultGroupOnChip && device_is_sm90_or_later() ? 1 : 0;
}

extern "C" int sn_cuda_tune_onchip_threads(void) { return read_tune().onchip_threads; }

extern "C" int sn_cuda_tune_op_onchip(void) { return read_tune().op_onchip; }

extern "C" int sn_cuda_one_pass_rows_per_step(sn_dtype_t dtype, int64_t w, int asked) {
  int threads = 0, vpt = 0;
  const int elems = sn::one_pass_elems(dtype, w);
  sn::one_pass_shape((int)(w / elems), &threads, &vpt);
  return sn::one_pass_rows_per_step(vpt, elems, asked);
}

extern "C" int sn_cuda_on_chip_threads(int64_t numel, int group) {
  return group || numel >= kOnChipWideElems ? 512 : 256;
}

extern "C" int sn_cuda_layer_on_chip_modes(int64_t numel, int op_onchip, int clusters) {
  if (op_onchip >= 0) return op_onchip ? SN_ON_CHIP_ALL : 0;
  if (!clusters) return 0;
  return numel <= kLayerOnChipMaxElems ? SN_ON_CHIP_TRAIN | SN_ON_CHIP_SCALE : 0;
}

bool sn::clusters_usable() { return device_is_sm90_or_later(); }

extern "C" int sn_cuda_clusters_usable(void) { return sn::clusters_usable() ? 1 : 0; }

extern "C" int sn_cuda_one_pass_supported(sn_view_t view, sn_order_t order, sn_dtype_t dtype) {
  if (order == SN_ORDER_V_FIRST) return sn::one_pass_cols_fits(view.h, dtype);
  return order == SN_ORDER_U_FIRST && view.A == 1 && view.B % 4 == 0 && view.B <= 16384;
}

extern "C" int sn_cuda_plan_init(sn_cuda_plan_t *plan, sn_view_t view, sn_dtype_t dtype,
                                 sn_order_t order, float eps, int sm_count, int one_pass, int on_chip,
                                 size_t *workspace_bytes) {
  *plan = sn_cuda_plan_t{};
  plan->view = view;
  plan->dtype = dtype;
  plan->eps = eps;
  plan->sm_count = sm_count > 0 ? sm_count : 1;
  const Tune tune = read_tune();
  plan->pdl = pdl_enabled(tune);
  plan->bw_stream = tune.bw_stream;
  plan->bw_grid = tune.bw_grid;
  plan->div_stream = tune.div_stream >= 0
                         ? tune.div_stream
                         : div_stream_default((double)view.h * (double)(view.A * view.B) *
                                              (double)sn_dtype_size(dtype));
  plan->div_prefetch = tune.div_prefetch;
  // The layer on chip, where it fits, for the forwards the knob or the default rule gives.
  const int onchip_modes =
      on_chip && order == SN_ORDER_U_FIRST
          ? sn_cuda_layer_on_chip_modes(view.h * view.A * view.B, tune.op_onchip,
                                        tune.op_onchip < 0 && device_is_sm90_or_later())
          : 0;
  if (onchip_modes) {
    sn_group_entry_t e{};
    e.A = view.A;
    e.h = view.h;
    e.B = view.B;
    e.w = view.A * view.B;
    e.dtype = (int)dtype;
    sn_cuda_on_chip_prepare(&e, 1, 0, 1, &plan->onchip);
    plan->onchip.refuse = tune.onchip_refuse && plan->onchip.clusters;  // tests: the refused launch
    plan->onchip.modes = onchip_modes;
    if (tune.op_onchip == 1) sn_cuda_on_chip_allow_backward(&plan->onchip);  // only op_onchip=1 (above)
  }
  // A layer the cluster path does not take, on chip over the whole grid where it fits there
  // (SPECNORM_TUNE=op_onchip_grid=1: its training forwards and its backward; 2: its eval forwards
  // too): a u-first layer with rows contiguous, or a v-first one whose Mᵀ has them (dim −1:
  // Keras', Flax's and Haiku's kernels; or a single row or column), run as the u-first iteration
  // on Mᵀ (sn_on_grid_view).
  // Unset, a large enough v-first layer (kGridVFirstMinElems), if its rows all fit shared memory.
  sn_view_t gv{};
  const bool grid_default = tune.op_onchip_grid < 0 && order == SN_ORDER_V_FIRST &&
                            view.h * view.A * view.B >= kGridVFirstMinElems && device_is_sm90_or_later();
  // (The default's shape bounds are tested before the layout, which asks the runtime about the
  // kernels; the rows' place, shared memory, registers or streamed, is known only after it.)
  if (on_chip && (tune.op_onchip_grid > 0 || grid_default) && plan->onchip.cluster == 0 &&
      sn_group_view(view, order, &gv) && gv.A == 1 &&
      !(grid_default && (gv.h < kGridVFirstMinRowsPerSm * plan->sm_count || gv.B < kGridVFirstMinWidth))) {
    sn_cuda_on_chip_grid_prepare(gv, dtype, plan->sm_count, tune.op_onchip_grid == 2, tune.onchip_grid_rows,
                                 tune.onchip_refuse, &plan->onchip);
    plan->onchip.transposed = order == SN_ORDER_V_FIRST && plan->onchip.grid > 0;
    if (grid_default && (plan->onchip.reg_rows > 0 || plan->onchip.stream_rows > 0))
      plan->onchip = sn_on_chip_t{};  // not what was measured: the usual kernels
  }
  const int64_t h = view.h, w = view.A * view.B;
  const int64_t target = 8LL * plan->sm_count;  // blocks that fill the chip a few times over

  // t = M x: TB threads per row, R rows per block, A split until the grid fills the chip.
  plan->p1_tb = pow2_at_least(view.B, 256);
  const int64_t R = 256 / plan->p1_tb;
  const int64_t p1_blocks = (h + R - 1) / R;
  plan->p1_asplit = (int)clamp64((target + p1_blocks - 1) / p1_blocks, 1, view.A < 64 ? view.A : 64);

  // s = Mᵀ y: tiles of TB columns, rows split until the grid fills the chip.
  plan->p2_tb = pow2_at_least(view.B, 32);
  plan->p2_tiles = view.A * ((view.B + plan->p2_tb - 1) / plan->p2_tb);
  const int64_t il = 256 / plan->p2_tb;
  const int64_t max_split = (h + 4 * il - 1) / (4 * il);  // keep >= 4 rows per thread
  plan->p2_isplit = (int)clamp64((target + plan->p2_tiles - 1) / plan->p2_tiles, 1,
                                 clamp64(max_split, 1, 64));

  const int64_t numel = w * h;
  plan->div_blocks = (int)clamp64((numel / 4 + 255) / 256, 1, 16LL * plan->sm_count);

  // One pass: a persistent grid of as many row blocks as fit at once, but at least 4 rows each.
  int64_t op_sq = 0, oc_ssq = 0;
  if (one_pass && order == SN_ORDER_V_FIRST) {
    plan->one_pass = plan->one_pass_cols = 1;
    cudaError_t e = sn::one_pass_cols_prepare(*plan);
    if (e != cudaSuccess) return (int)e;
    oc_ssq = sn::one_pass_cols_panels(w);
  } else if (one_pass) {
    plan->one_pass = 1;
    plan->op_elems = sn::one_pass_elems(dtype, view.B);
    sn::one_pass_shape((int)(view.B / plan->op_elems), &plan->op_threads, &plan->op_vpt);
    plan->op_rows = sn::one_pass_rows_per_step(plan->op_vpt, plan->op_elems, tune.op_rows);
    int per_sm = 0, max_clusters = 0, eval_per_sm = 0, pp = 0;
    cudaError_t e = sn::one_pass_prepare(*plan, 1, tune.op_pp, &pp, &per_sm, &max_clusters, &eval_per_sm);
    if (e != cudaSuccess) return (int)e;
    plan->op_pp = pp;
    // At least one block per multiprocessor, at most op_bps; at most op_grid blocks.
    auto grid_of = [&](int bps) {
      if (bps < 1) bps = 1;
      if (tune.op_bps > 0 && tune.op_bps < bps) bps = tune.op_bps;
      const int64_t b = (int64_t)plan->sm_count * bps;
      return tune.op_grid > 0 && tune.op_grid < b ? (int64_t)tune.op_grid : b;
    };
    int64_t blocks = grid_of(per_sm);
    const int64_t plain = blocks;  // the grid without clusters
    int cluster = tune.op_cluster > 0 ? tune.op_cluster : default_cluster(blocks, view, dtype);
    if (cluster > 1 && (cluster > h || !device_is_sm90_or_later())) cluster = 1;
    if (cluster > 1) {
      int unused = 0, same_pp = 0;  // the same ask gives the same ring (occupancy without clusters)
      const cudaError_t e =
          sn::one_pass_prepare(*plan, cluster, tune.op_pp, &same_pp, &unused, &max_clusters, &unused);
      if (e != cudaSuccess || max_clusters < 1 || same_pp != pp) {  // no clusters after all: the plain grid
        sn::forget(e);
        cluster = 1;
      }
    }
    if (cluster > 1) {
      // Only as many clusters as fit at once: the grid is persistent.
      blocks = clamp64((int64_t)max_clusters * cluster, 0, blocks) / cluster * cluster;
      if (blocks > h) blocks = h / cluster * cluster;
      if (blocks < cluster) cluster = 1, blocks = plain;
    }
    plan->op_cluster = cluster;
    plan->op_blocks = (int)clamp64(blocks, 1, h);
    plan->op_eval_blocks = tune.op_eval_own ? (int)clamp64(grid_of(eval_per_sm), 1, h) : plan->op_blocks;
    plan->op_reduce_cols =
        tune.op_reduce_cols > 0 ? tune.op_reduce_cols : reduce_cols_default(view.B / 4, plan->sm_count);
    op_sq = sn::one_pass_reduce_blocks(view.B / 4, plan->op_reduce_cols);
    const int coop = tune.op_coop >= 0 ? tune.op_coop : device_is_sm90_or_later() ? 1 : 0;
    if (coop > 0) {  // only where the instance is built and its whole grid fits at once
      bool fits = false;
      const cudaError_t e = sn::one_pass_coop_prepare(*plan, &fits);
      if (e == cudaSuccess && fits) {
        plan->op_coop = coop == 3 && !plan->pdl ? 1 : coop;
        plan->op_coop_all = tune.op_coop >= 0;
      } else {
        sn::forget(e);
      }
    }
  }

  *workspace_bytes = 0;
  if (p1_blocks * plan->p1_asplit > INT_MAX || plan->p2_tiles * plan->p2_isplit > INT_MAX) return 0;
  const size_t floats = pad(h) + pad(w) + pad((int64_t)plan->p1_asplit * h) +
                        pad((int64_t)plan->p2_isplit * w) + pad(plan->p2_tiles) + pad(SN_SCAL_COUNT) +
                        pad(op_part_floats(*plan)) + pad(op_tsq_floats(*plan)) + pad(op_sq) +
                        pad(oc_ssq) + pad(plan->div_blocks) + pad(ocg_floats(*plan));
  const size_t counters = pad(plan->p2_tiles + 4);
  *workspace_bytes = (floats + counters) * 4;
  return 0;
}

namespace sn {
namespace {
thread_local int setup_failures = 0;  // sn::forget's count on this thread
}  // namespace
void note_setup_failure() { ++setup_failures; }
}  // namespace sn

extern "C" int sn_cuda_setup_failures_take(void) {
  const int n = sn::setup_failures;
  sn::setup_failures = 0;
  return n;
}

extern "C" void sn_cuda_plan_bind(sn_cuda_plan_t *plan, void *workspace) {
  const int64_t h = plan->view.h, w = plan->view.A * plan->view.B;
  float *p = static_cast<float *>(workspace);
  plan->t = p;
  p += pad(h);
  plan->s = p;
  p += pad(w);
  plan->part1 = p;
  p += pad((int64_t)plan->p1_asplit * h);
  plan->part2 = p;
  p += pad((int64_t)plan->p2_isplit * w);
  plan->tile_sq = p;
  p += pad(plan->p2_tiles);
  plan->scal = p;
  p += pad(SN_SCAL_COUNT);
  plan->op_part = p;
  p += pad(op_part_floats(*plan));
  plan->op_tsq = p;
  p += pad(op_tsq_floats(*plan));
  plan->op_sq = p;
  p += pad(plan->one_pass && !plan->one_pass_cols
               ? sn::one_pass_reduce_blocks(plan->view.B / 4, plan->op_reduce_cols)
               : 0);
  plan->oc_ssq = p;
  p += pad(plan->one_pass_cols ? sn::one_pass_cols_panels(w) : 0);
  plan->bw_part = p;
  p += pad(plan->div_blocks);
  plan->ocg_part = p;
  p += pad(ocg_floats(*plan));
  plan->counters = reinterpret_cast<unsigned *>(p);
}

#define SN_TRY(call)                          \
  do {                                        \
    cudaError_t sn_e_ = (call);               \
    if (sn_e_ != cudaSuccess) return (int)sn_e_; \
  } while (0)

extern "C" int sn_cuda_forward_on_chip(const sn_cuda_plan_t *plan, const sn_cuda_forward_args_t *a) {
  const int mode = !a->training ? SN_ON_CHIP_EVAL : a->W_sn ? SN_ON_CHIP_TRAIN : SN_ON_CHIP_SCALE;
  // (Rows held in registers or streamed on the grid are loaded and stored 16 bytes at a time.)
  const bool aligned = (plan->onchip.reg_rows == 0 && plan->onchip.stream_rows == 0) ||
                       (sn::aligned16(a->W) && (!a->W_sn || sn::aligned16(a->W_sn)));
  return plan->onchip.cluster > 0 && (plan->onchip.modes & mode) && !a->is_1d && aligned &&
         (a->order == SN_ORDER_U_FIRST || plan->onchip.transposed) && a->warmup_iters == 0 &&
         (a->n_iters > 0 || !a->training);
}

namespace sn {
namespace {
// Whether a forward's one-pass iterations (by rows) are the cooperative launch: in forwards without
// W_sn (scale only, warm-up), or in every forward where SPECNORM_TUNE=op_coop asked for it
// (plan.op_coop_all). An eval forward's σ is the rows kernel's whatever its warm-up took.
bool coop_iterations(const sn_cuda_plan_t &plan, const sn_cuda_forward_args_t &a) {
  return plan.op_coop && (plan.op_coop_all || !a.W_sn);
}
}  // namespace
}  // namespace sn

extern "C" sn_path_t sn_cuda_forward_path(const sn_cuda_plan_t *plan, const sn_cuda_forward_args_t *a) {
  if (a->is_1d) return SN_PATH_ONE_D;
  if (sn_cuda_forward_on_chip(plan, a)) return plan->onchip.grid > 0 ? SN_PATH_ON_CHIP_GRID : SN_PATH_ON_CHIP;
  // The row kernels need 16-byte aligned rows; the column kernels take any W.
  if (plan->one_pass && !plan->one_pass_cols && sn::aligned16(a->W))
    return a->training && sn::coop_iterations(*plan, *a) ? SN_PATH_ONE_PASS_COOP : SN_PATH_ONE_PASS_ROWS;
  return a->training && plan->one_pass_cols ? SN_PATH_ONE_PASS_COLS : SN_PATH_MATVEC;
}

extern "C" int sn_cuda_forward(const sn_cuda_plan_t *plan, const sn_cuda_forward_args_t *a,
                               sn_stream_t stream_handle) {
  using sn::TMode;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const sn_cuda_plan_t &P = *plan;
  float *scal = P.scal;

  const sn_path_t path = sn_cuda_forward_path(plan, a);
  if (path == SN_PATH_ONE_D) {
    SN_TRY(sn::launch_matvec(P, a->W, nullptr, nullptr, TMode::kNorm1D, nullptr, nullptr, nullptr,
                             stream));
    SN_TRY(sn::launch_commit_divide(P, *a, SN_SCAL_SIG_1D, sn::Commit::kOneD, stream));
    return 0;
  }

  // A warmed-up layer on chip, for the forwards its plan puts there (small layers' training
  // forwards on sm_90, or every one with SPECNORM_TUNE=op_onchip=1): the whole forward in one launch.
  if (path == SN_PATH_ON_CHIP || path == SN_PATH_ON_CHIP_GRID) {
    // (The matrix it iterates on: the layer's own, or on the grid a v-first layer's Mᵀ, with u
    // and v exchanged: sn_on_grid_view.)
    const sn_view_t ev = sn_on_grid_view(plan);
    const bool tr = P.onchip.transposed != 0;
    sn_group_entry_t e{};
    e.W = a->W;
    e.W_sn = a->W_sn;
    e.dtype = (int)P.dtype;
    e.n_iters = a->n_iters;
    e.A = ev.A;
    e.h = ev.h;
    e.B = ev.B;
    e.w = ev.A * ev.B;
    e.numel = a->numel;
    e.u = tr ? a->v : a->u;
    e.v = tr ? a->u : a->v;
    e.sigma = a->sigma;
    e.eps = P.eps;
    e.norm_bound = P.norm_bound;
    e.gamma = P.gamma;
    if (path == SN_PATH_ON_CHIP_GRID)
      SN_TRY(sn::launch_on_chip_grid(P, e, a->training != 0, stream));
    else
      SN_TRY(sn::launch_on_chip(P.onchip, nullptr, &e, 1, P.pdl != 0, a->training != 0, stream));
    return 0;
  }
  const int iters = a->warmup_iters + (a->training ? a->n_iters : 0);
  if (a->training && iters == 0) return 0;
  // The one-pass rows (the eval's σ too), or else the columns' or the matrix-vector kernels.
  const bool one_pass = path == SN_PATH_ONE_PASS_ROWS || path == SN_PATH_ONE_PASS_COOP;
  // The current u and v: the state at first, then the scratch products with their norms.
  const float *u = a->u, *u_div = nullptr, *v = a->v, *v_div = nullptr;
  int slot = SN_SCAL_SIG_S;
  // The first product of a training forward restarts from ones if the health word asks for it.
  const unsigned *health = reinterpret_cast<const unsigned *>(a->sigma + 3);
  bool committed = false;  // by the last iteration's cooperative one-pass launch (scale only)
  // The cooperative one-pass launch, also for the warm-up iterations of an eval forward (whose
  // recorded path is its σ's kernel, the rows kernel).
  const bool coop = sn::coop_iterations(P, *a);
  for (int k = 0; k < iters; ++k) {
    const unsigned *restart = k == 0 ? health : nullptr;
    if (one_pass) {
      const bool commit = a->training && !a->W_sn && k == iters - 1;
      SN_TRY(sn::launch_one_pass(P, a->W, v, v_div, restart, commit ? a : nullptr, coop,
                                 &committed, stream));
      slot = SN_SCAL_SIG_S;
    } else if (a->order == SN_ORDER_U_FIRST) {
      SN_TRY(sn::launch_matvec(P, a->W, v, v_div, TMode::kNormalize, nullptr, nullptr, restart,
                               stream));
      SN_TRY(sn::launch_matvec_t(P, a->W, P.t, scal + SN_SCAL_M_T, nullptr, stream));
      slot = SN_SCAL_SIG_S;
    } else if (P.one_pass_cols) {
      SN_TRY(sn::launch_one_pass_cols(P, a->W, u, u_div, restart, stream));
      slot = SN_SCAL_SIG_T;
    } else {
      SN_TRY(sn::launch_matvec_t(P, a->W, u, u_div, restart, stream));
      SN_TRY(sn::launch_matvec(P, a->W, P.s, scal + SN_SCAL_M_S, TMode::kNormalize, nullptr,
                               nullptr, nullptr, stream));
      slot = SN_SCAL_SIG_T;
    }
    u = P.t;
    u_div = scal + SN_SCAL_M_T;
    v = P.s;
    v_div = scal + SN_SCAL_M_S;
  }
  if (committed) return 0;
  if (!a->training) {
    if (one_pass)
      SN_TRY(sn::launch_one_pass_eval(P, a->W, v, v_div, u, u_div, stream));
    else
      SN_TRY(sn::launch_matvec(P, a->W, v, v_div, TMode::kDot, u, u_div, nullptr, stream));
    slot = SN_SCAL_SIG_DOT;
  }
  SN_TRY(sn::launch_commit_divide(P, *a, slot, iters > 0 ? sn::Commit::kVectors : sn::Commit::kSigma,
                                  stream));
  return 0;
}
