// The one-pass iteration by rows (u-first order, rows contiguous): the pieces that its kernels
// share. cuda/one_pass.cu launches them as a rows kernel and a reduce kernel (what each does and
// moves is described there); cuda/one_pass_coop.cu runs both in one cooperative launch.
#pragma once

#include <cooperative_groups.h>

#include <type_traits>

#include "kernels.h"
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

struct OnePassParams {
  const void *W;    // h rows of wp packs of E elements of type T
  int64_t h;
  int wp;
  const float *x;
  const float *x_div;
  const unsigned *health;  // restart bit set: v = ones
  float *t;         // h
  float *part;      // (op_blocks / cluster) × w
  int cluster;      // blocks per thread-block cluster that add their partial s on chip (sm_90)
  float *tsq;       // op_blocks
  // Eval (u != NULL): no t, no partial s; tsq gets the block's Σ (u_i / *u_div) t_i and the last
  // block writes their sum in block order to scal[SIG_DOT] (counter: the one-pass arrivals).
  const float *u, *u_div;
  float *scal;
  unsigned *counter;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kHaveClusters = false;  // the host asks for clusters only for code built for sm_90
#else
constexpr bool kHaveClusters = true;
#endif

// Thread-block clusters (sm_90): the cluster's blocks have each put their partial s (w4 float4) in
// their shared memory `mine`; block r of the cluster adds slice r of the columns over the cluster's
// blocks in rank order (distributed shared memory) and writes it to the cluster's partial. Cuts the
// partial-s traffic (written here, read by the reduce kernel) by the cluster size.
template <int NT>
__device__ __forceinline__ void cluster_sum_partials(const OnePassParams &p, float4 *mine,
                                                     int64_t w4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cl = cg::this_cluster();
  cl.sync();  // every block's partial is in its shared memory
  const int C = (int)cl.num_blocks(), r = (int)cl.block_rank();
  const int64_t per = (w4 + C - 1) / C, c0 = r * per, c1 = min(w4, c0 + per);
  float4 *out = reinterpret_cast<float4 *>(p.part + (int64_t)(blockIdx.x / C) * 4 * w4);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += NT) {
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int q = 0; q < C; ++q) {
      const float4 x = cl.map_shared_rank(mine, q)[c];
      s.x += x.x;
      s.y += x.y;
      s.z += x.z;
      s.w += x.w;
    }
    out[c] = s;
  }
  cl.sync();  // no block leaves while another may still read its shared memory
#endif
}

// Rows i, i + G, ..., i + (RS - 1)·G, on chip in b (this thread's VPT packs of each; rows at or
// past h are skipped): t_r = M_r · v (one block sum for the RS rows), then, row after row,
// (training) t_r into p.t, t_r² into tsq and t_r M_r into acc; (eval) (u_r / *u_div) t_r into tsq.
// Each row's dot, block sum and updates are those of a step of one row, in the same order: RS
// changes no bit. The block sum: SLOTS > 0, block_sums_alternating in slot `slot` of SLOTS (one
// barrier; the ring loops, whose step k passes k of RING); SLOTS = 0, block_sums (three barriers;
// the plain loop, whose instances ptxas sm_80 gave 8-18 more registers, and fewer blocks, with the
// one-barrier sums). Either way the same bits.
template <int NT, int VPT, int RS, class T, int E, bool EVAL, int SLOTS>
__device__ __forceinline__ void rows_step(const OnePassParams &p,
                                          const typename VecN<T, E>::raw (&b)[RS][VPT], int64_t i,
                                          int64_t G, const float4 *v_sm, float ru,
                                          float (&acc)[VPT][E], float &tsq, int slot) {
  using V = VecN<T, E>;
  constexpr int F4 = E / 4;  // float4 of v per pack
  // Eval: thread 0's u_i are loaded before the rows' dots, not after their block sum, where the
  // load's round trip would hold up the block at the next barrier on every step.
  float ui[RS], d[RS];
#pragma unroll
  for (int r = 0; r < RS; ++r) {
    ui[r] = EVAL && threadIdx.x == 0 && i + r * G < p.h ? p.u[i + r * G] : 0.f;
    d[r] = 0.f;
  }
  // The rows' elements as floats, for the dot and again for t_r M_r: kept from the dot in the ring
  // of two (ONCE; ptxas sm_90 holds them without spill or a block fewer: 4096 × 16384 bf16's loop
  // of two rows 408 instructions against 528, 123 registers against 114), converted again after
  // the block sum elsewhere (the plain loop's instances: blocks lost and gained by turns; the
  // ring of three: spills). The same values either way.
  constexpr bool ONCE = SLOTS == 2;
  float xs[RS][VPT][E];
#pragma unroll
  for (int r = 0; r < RS; ++r)
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      float(&x)[E] = xs[r][k];
      V::cvt(b[r][k], x);
      const int j = threadIdx.x + k * NT;
      if (j < p.wp) {
#pragma unroll
        for (int q = 0; q < F4; ++q) {
          const float4 v = v_sm[F4 * j + q];
          d[r] = fmaf(x[4 * q + 0], v.x, d[r]);
          d[r] = fmaf(x[4 * q + 1], v.y, d[r]);
          d[r] = fmaf(x[4 * q + 2], v.z, d[r]);
          d[r] = fmaf(x[4 * q + 3], v.w, d[r]);
        }
      }
    }
  if constexpr (SLOTS == 0)
    block_sums<NT, RS>(d);
  else
    block_sums_alternating<NT, RS, SLOTS>(d, slot);
#pragma unroll
  for (int r = 0; r < RS; ++r) {
    if (i + r * G >= p.h) break;
    const float t = d[r];
    if (EVAL) {
      if (threadIdx.x == 0) tsq = fmaf(ui[r] * ru, t, tsq);
    } else {
      if (threadIdx.x == 0) p.t[i + r * G] = t;
      tsq = fmaf(t, t, tsq);
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        float x[E];
        if constexpr (ONCE) {
#pragma unroll
          for (int e = 0; e < E; ++e) x[e] = xs[r][k][e];
        } else {
          V::cvt(b[r][k], x);
        }
#pragma unroll
        for (int e = 0; e < E; ++e) acc[k][e] = fmaf(t, x[e], acc[k][e]);
      }
    }
  }
}

// The end of the rows kernel: the block's partial s to global memory, or (cluster > 1) to its
// own shared memory (v_sm), where the cluster's blocks add it up; its Σ t² (eval: Σ u_i t_i); and
// (eval) the last block's sum of those in block order.
template <int NT, int VPT, int E, bool EVAL>
__device__ __forceinline__ void rows_finish(const OnePassParams &p, const float (&acc)[VPT][E], float tsq,
                                            float4 *v_sm, int64_t w) {
  constexpr int F4 = E / 4;
  if (!EVAL) {
    if (!kHaveClusters && p.cluster > 1) __trap();  // the host checks the code's PTX version
    const bool on_chip = p.cluster > 1;
    if (on_chip) __syncthreads();  // every thread is done reading v_sm
    float4 *out = on_chip ? v_sm : reinterpret_cast<float4 *>(p.part + (int64_t)blockIdx.x * w);
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int j = threadIdx.x + k * NT;
      if (j < p.wp)
#pragma unroll
        for (int q = 0; q < F4; ++q)
          out[F4 * j + q] = make_float4(acc[k][4 * q], acc[k][4 * q + 1], acc[k][4 * q + 2],
                                        acc[k][4 * q + 3]);
    }
    if (on_chip) cluster_sum_partials<NT>(p, v_sm, w / 4);
  }
  if (threadIdx.x == 0) p.tsq[blockIdx.x] = tsq;
  if (!EVAL || !last_block_to_arrive(p.counter, gridDim.x)) return;
  float dot = 0.f;
  for (int g = threadIdx.x; g < (int)gridDim.x; g += NT) dot += __ldcg(&p.tsq[g]);
  dot = block_sum<NT>(dot);
  if (threadIdx.x == 0) p.scal[SN_SCAL_SIG_DOT] = dot;
}

// Two rows a step of two 16-byte packs of a 2-byte type per thread (4096² bf16/fp16) in blocks of
// 256 threads are held to 85 registers, 3 blocks per multiprocessor (without the bound, 100
// registers and 2 blocks; ptxas sm_90): more rows in flight per multiprocessor than one row a step
// has with its 4 blocks of 64 registers. The other instances of two rows a step are left unbound:
// there the bound would raise their registers (43-64 without it, 79 with) and cut their blocks.
template <int NT, int VPT, int RS, int E, int TSIZE>
constexpr int kRowsMinBlocks = RS == 2 && NT == 256 && VPT == 2 && E == 8 && TSIZE == 2 ? 3 : 0;

// The rows kernel's work, for its block (training: partial s and Σ t²; eval: Σ u_i t_i and, in
// the last block, their sum): NT threads, VPT packs of E elements per thread and row, RS rows per
// step: thread k holds packs k, k + NT, ... of each. Block g takes rows g, g + G, ..., RS of them
// a step. The next step's packs are loaded into registers (buf[1]) while the current step's
// (buf[0]) are reduced: one step in flight per block beyond the one being reduced (the sm_90 SASS:
// the rotation buf[0] = buf[1] waits for the loads issued during the same step, so deeper
// rotations kept no more in flight). RS = 2 (SPECNORM_TUNE=op_rows=2, for rows of at most 16
// elements per thread) puts two rows in flight and one block sum (three barriers) on two rows.
// What lost and was removed (bench/NOTES.md): two rows ahead by rotation (0-3% slower, H100
// 6626f15), a cp.async ring 1-3 rows ahead (2-21% slower, H200 e56c4b8), and rows through a
// shared-memory ring of 3-4 rows filled by bulk copies (cp.async.bulk on an mbarrier: 4096 × 16384
// bf16 scale-only 16% slower, the rows 59.6% of DRAM peak against 69.4%, H100 d5e109c).
//
// RING (one row a step only; training): the loop runs through a ring of RING row buffers with their
// roles turned, not moved: step k of an iteration reduces row i + k·G from buf[k] after issuing the
// loads of row i + (k + RING - 1)·G into the buffer the step before freed, so that no move waits
// for a load and RING - 1 rows are in flight while one is reduced. RING = 2, the ping-pong loop
// (the kRowsPingPong instances; by default the kRowsPingPongDefault ones, SPECNORM_TUNE=op_pp 0
// none, 2 all); RING = 3 (kRowsRing3, op_pp=3; H200 at 771ed7c: within ±1% of RING = 2). Their
// block sums take one barrier a row, not three (block_sums_alternating, a slot per buffer; sm_90
// SASS of the ring of two in <512, 4, bf16, 8>: 2 barriers and 528 instructions a loop of two rows,
// against 6 and 540; 408 with its elements converted once, rows_step's ONCE). The same steps in the
// same order: bitwise one row a step on the same grid. (A ring unrolled this way for every instance
// was withdrawn unmeasured in session 9: fp32 <512, 8> spilled at 128 registers.)
template <int NT, int VPT, int RS, class T, int E, bool EVAL, int RING = 0>
__device__ __forceinline__ void rows_body(const OnePassParams &p) {
  static_assert(RING == 0 || (RS == 1 && RING >= 2 && RING <= 3), "the ring takes one row a step");
  constexpr int NB = RING ? RING : 2;  // row buffers
  using V = VecN<T, E>;
  using R = typename V::raw;
  const T *W = static_cast<const T *>(p.W);
  const int64_t w = (int64_t)E * p.wp;
  SN_EXTERN_SHARED(float4, v_sm);
  const float ru = EVAL ? reciprocal_of(p.u_div) : 0.f;
  const int64_t G = gridDim.x;
  // This thread's packs of rows i0, i0 + G, ... (RS of them; none past h) into dst.
  auto load_rows = [&](R (&dst)[RS][VPT], int64_t i0) {
#pragma unroll
    for (int r = 0; r < RS; ++r) {
      if (i0 + r * G >= p.h) break;
      const T *row = W + (i0 + r * G) * w;
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        const int j = threadIdx.x + k * NT;
        if (j < p.wp) dst[r][k] = V::load_raw(row + E * j);
      }
    }
  };

  float acc[VPT][E];
  R buf[NB][RS][VPT];  // plain: buf[0] the rows being reduced, buf[1] the block's next ones; ring: by turns
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc[k][e] = 0.f;
#pragma unroll
    for (int r = 0; r < RS; ++r)
#pragma unroll
      for (int b = 0; b < NB; ++b) buf[b][r][k] = {};
  }
  int64_t i = blockIdx.x;
  // The first rows (ring: all but the last buffer's), then v into shared memory while they are
  // in flight. v may start at any float boundary (the state's v follows u): load it by floats.
#pragma unroll
  for (int b = 0; b < (RING ? RING - 1 : 1); ++b) load_rows(buf[b], i + b * G);
  const float rx = reciprocal_of(p.x_div);
  const bool ones = p.health && (*p.health & SN_HEALTH_RESTART);
  stage_scaled<NT>(reinterpret_cast<float *>(v_sm), p.x, w, rx, ones);
  __syncthreads();
  float tsq = 0.f;
  if constexpr (RING > 0) {
    // Step k of an iteration: row i + k·G from buf[k], after the loads of row i + (k + RING - 1)·G
    // into the buffer the previous step freed. A block leaves at its first row past h (i is the
    // block's: every thread leaves together; the loop's own test then ends it).
    for (; i < p.h; i += RING * G)
#pragma unroll
      for (int k = 0; k < RING; ++k) {
        if (i + k * G >= p.h) break;
        load_rows(buf[(k + RING - 1) % RING], i + (k + RING - 1) * G);
        rows_step<NT, VPT, 1, T, E, EVAL, RING>(p, buf[k], i + k * G, G, v_sm, ru, acc, tsq, k);
      }
  } else {
    for (; i < p.h; i += RS * G) {
      load_rows(buf[1], i + RS * G);
      rows_step<NT, VPT, RS, T, E, EVAL, 0>(p, buf[0], i, G, v_sm, ru, acc, tsq, 0);
#pragma unroll
      for (int r = 0; r < RS; ++r)
#pragma unroll
        for (int k = 0; k < VPT; ++k) buf[0][r][k] = buf[1][r][k];
    }
  }
  rows_finish<NT, VPT, E, EVAL>(p, acc, tsq, v_sm, w);
}

// The rows instances with a ping-pong kernel (RING = 2 above, training only): every instance of one
// row a step that a plan can name (blocks of 512 threads only take 4 or 8 packs per thread:
// one_pass_shape). kRowsPingPongDefault: those that take it by default (SPECNORM_TUNE=op_pp=1,
// unset), the 2-byte rows of 512 threads × 4 packs of 8 (8200-16384 columns, multiples of 8): 1
// block per multiprocessor (ptxas sm_90: bf16 120 registers, 124 with the loop; fp16 105, 122), so
// one row in flight per multiprocessor, 32 KB where fp32's rows of that width have 64 (4096 × 16384
// on an H200 at 64f5bc9: bf16 train 71% of copy, fp32 87%). Measured on an H200 at ea7ea7e
// (sn_bench, median of 50): 4096 × 16384 bf16 and fp16 train −2%, scale-only −4-5%; 12288² train
// −3%, scale-only −7%. Since session 30 also the 2-byte rows of 256 threads × 2 packs of 8
// (2056-4096 columns, multiples of 8: 4096²'s), whose cooperative scale-only launch then takes the
// ring too (kCoopRing, cuda/one_pass_coop.cu): H200 at 771ed7c with op_pp=2, 4096² bf16 scale-only
// 27.7 -> 26.3 µs (p90 27.1 against the default's p10 27.2), train −1%, 768 × 3072 bf16 −1%. The
// others take it only with op_pp=2 (H200 at 771ed7c: within ±1%). Either way an instance takes it
// only where its blocks per multiprocessor equal the plain kernel's (the plan compares their
// occupancy: on sm_80 the 256 × 2 ring takes 63 registers against 47, so it is not taken there),
// so that the grid, and with it the results, stay the plain loop's.
// fp16 rows of 4 packs of 4 per thread (w % 8 != 0) have none: held to 64 registers, ptxas sm_90
// spills 12 bytes in their loop since the one-barrier block sums (bf16's and fp32's do not). Nor
// the 2-byte rows of one pack of 8 per thread (up to 2048 columns): their ring takes 48 registers
// against the plain kernel's 40 (bf16) and 32 (fp16), ptxas sm_90 and sm_80, 5 blocks per
// multiprocessor against 6 and 8, and at most 8 KB of shared memory a block never limits the plain
// kernel to 5: never its blocks, never taken (the fake CUDA runtime, which reads each kernel's
// registers from its cubin, showed it: bench/NOTES.md, session 25).
template <int NT, int VPT, int RS, class T, int E>
constexpr bool kRowsPingPong = RS == 1 && (NT == 256 || VPT >= 4) &&
                               !(std::is_same<T, __half>::value && VPT == 4 && E == 4) &&
                               !(sizeof(T) == 2 && VPT == 1 && E == 8);
template <int NT, int VPT, int RS, class T, int E>
constexpr bool kRowsPingPongDefault =
    RS == 1 && E == 8 && sizeof(T) == 2 && ((NT == 512 && VPT == 4) || (NT == 256 && VPT == 2));
// The instances with a ring of three (SPECNORM_TUNE=op_pp=3; H200 at 771ed7c: within ±1% of the
// ring of two, ncu 48.8 µs against 47.6 on 4096 × 16384's rows): the bf16 ones of kRowsPingPong
// with 16-byte packs, two or more a thread, where ptxas sm_90 spills nothing (4096 × 16384's <512,
// 4, bf16, 8> takes 128 registers, 124 with the ping-pong loop: still one block; 4096²'s <256, 2,
// bf16, 8> 64, held), to put two rows in flight while one is reduced where the ping-pong loop has
// one 32 KB row per multiprocessor. Not built: fp16's <512, 4, half, 8> (8 bytes of spill), fp32's
// (256-260), bf16's with 8-byte packs (sm_80: 12-24) or one pack (more registers than the plain
// kernel: never its blocks). On sm_80, <256, 2, bf16, 8> spills 24 bytes at 64 registers, one block
// fewer than the plain kernel there (47): never taken.
template <int NT, int VPT, int RS, class T, int E>
constexpr bool kRowsRing3 =
    kRowsPingPong<NT, VPT, RS, T, E> && std::is_same<T, __nv_bfloat16>::value && E == 8 && VPT >= 2;

// The ping-pong kernel's minimum blocks per multiprocessor: rows of 16 elements per thread (among
// them the 4096² fp32 and bf16 instances, 64 registers in the plain kernel) are held to 64
// registers, so that they keep the plain kernel's blocks (without the bound 66-74, one block
// fewer; with it no spill, ptxas sm_90 and sm_80). The others are unbound (sm_90: <512, 8, float,
// 4> 128 registers against 122, the 2-byte <*, 4, *, 8> 122-124 against 105-120: the same blocks).
template <int NT, int VPT, int E>
constexpr int kRowsPingPongMinBlocks = VPT * E == 16 ? 65536 / (64 * NT) : 0;

struct ReduceParams {
  const float4 *part;
  const float *tsq;
  int parts;        // partial s (one per cluster)
  int tsq_parts;    // partial Σ t² (one per block)
  int w4;
  float4 *s;
  float *sq;  // per reduce block
  float *scal;
  unsigned *counter;
  float eps;
  int cols;    // float4 columns per reduce block (plan.op_reduce_cols)
  int blocks;  // reduce blocks: one_pass_reduce_blocks(w4, cols)
};

// The one-pass arrival counter (the reduction's last block; the eval's).
inline unsigned *one_pass_counter(const sn_cuda_plan_t &plan) {
  return plan.counters + 1 + plan.p2_tiles + 1;
}

// The reduction's parameters for a plan (the rows' partials, the plan's scratch).
inline ReduceParams reduce_params(const sn_cuda_plan_t &plan) {
  const int w4 = (int)(plan.view.B / 4);
  return ReduceParams{reinterpret_cast<const float4 *>(plan.op_part),
                      plan.op_tsq,
                      plan.op_blocks / plan.op_cluster,
                      plan.op_blocks,
                      w4,
                      reinterpret_cast<float4 *>(plan.s),
                      plan.op_sq,
                      plan.scal,
                      one_pass_counter(plan),
                      plan.eps,
                      plan.op_reduce_cols,
                      (int)one_pass_reduce_blocks(w4, plan.op_reduce_cols)};
}

// The rows kernel's parameters for a training iteration of a plan on W, from x / *x_div.
inline OnePassParams rows_params(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const unsigned *health) {
  return OnePassParams{W, plan.view.h, (int)(plan.view.B / plan.op_elems), x, x_div, health, plan.t,
                       plan.op_part, plan.op_cluster, plan.op_tsq, nullptr, nullptr, nullptr, nullptr};
}

// The reduction's block b (of one_pass_reduce_blocks(w4, cols)), by a block of kBlock threads:
// cols float4 columns per block, kBlock / cols lanes along the partials. Combines the partials in
// block order, scales by 1 / max(‖t‖, eps) (so s = Mᵀ u), writes s and the block's Σ s² to
// p.sq[b]; returns max(‖t‖, eps). red: kBlock float4 of shared memory. cols (plan.op_reduce_cols,
// cuda/forward.cu): 4, 8 or 16, the most that keep at least two reduce blocks per multiprocessor.
// At 4096 columns that is 4 (64 lanes, 256 blocks): the partials, hundreds of rows of them, are
// read by many blocks at once (16 columns per block took 8.6 µs on an H100, 64 blocks of 33
// dependent loads per thread; 8 and 16 were 1-3% slower at 4096² on the H100 at ab6e27f). At 16384
// columns it is 8 (32 lanes, 512 blocks rather than 1024, whose fixed costs dominated: 10.5 µs
// on the H200 at 89aa697 for 2 MB from L2): 4096 × 16384 scale-only 3-6% faster on the H100 at
// ab6e27f. The partials of 8 or 16 columns are added in another order (lane sums of every 32nd or
// 16th partial, then the lanes' tree): other bits, as deterministic.
__device__ __forceinline__ float reduce_columns(const ReduceParams &p, int cols, int b, float4 *red) {
  const int tid = threadIdx.x;
  const int part_lanes = kBlock / cols;
  // The loads of both inputs first, so that they are in flight together: this thread's share of
  // the row blocks' Σ t² (block_sum_of's order), then its partials. The kernel is a chain of
  // global-memory round trips (6.4 µs on an H200 at 1a8f84c); this takes one off it.
  const float tq = thread_sum_of(p.tsq, p.tsq_parts);
  const int cl = tid % cols, pl = tid / cols;
  const int j = b * cols + cl;
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  if (j < p.w4) {
    for (int g = pl; g < p.parts; g += part_lanes) {
      const float4 x = p.part[(int64_t)g * p.w4 + j];
      s.x += x.x;
      s.y += x.y;
      s.z += x.z;
      s.w += x.w;
    }
  }
  red[tid] = s;
  // max(‖t‖, eps) from the row blocks' partial Σ t², in block order (every block alike).
  const float m_t = norm_divisor(block_sum(tq), p.eps);
  for (int st = part_lanes / 2; st > 0; st >>= 1) {
    __syncthreads();
    if (pl < st) {
      float4 &a = red[pl * cols + cl];
      const float4 b4 = red[(pl + st) * cols + cl];
      a.x += b4.x;
      a.y += b4.y;
      a.z += b4.z;
      a.w += b4.w;
    }
  }
  __syncthreads();
  float sq = 0.f;
  if (pl == 0 && j < p.w4) {
    const float r = 1.0f / m_t;
    float4 x = red[cl];
    x = make_float4(x.x * r, x.y * r, x.z * r, x.w * r);
    p.s[j] = x;
    sq = ((x.x * x.x + x.y * x.y) + (x.z * x.z + x.w * x.w));
  }
  sq = block_sum(sq);  // its barriers: every read of red is done when it returns
  if (tid == 0) p.sq[b] = sq;
  return m_t;
}

// The rows instance a plan uses, as a type: threads, packs per thread, rows per step, element
// type, elements per pack.
template <int NT_, int VPT_, int RS_, class T_, int E_>
struct RowsInstance {
  static constexpr int NT = NT_, VPT = VPT_, RS = RS_, E = E_;
  using T = T_;
};

// f(RowsInstance<...>{}) for the instance plan (op_threads, op_vpt, op_rows, dtype, op_elems)
// names; cudaErrorInvalidConfiguration where there is none. Rows per step: 2 where the plan asks
// and a row is at most 16 elements per thread (instances of two rows are built only for those).
template <class F>
cudaError_t with_rows_instance(const sn_cuda_plan_t &plan, F &&f) {
  auto steps = [&](auto inst) -> cudaError_t {
    using I = decltype(inst);
    if constexpr (I::VPT * I::E <= kOnePassPairMaxElems) {
      if (plan.op_rows == 2) return f(RowsInstance<I::NT, I::VPT, 2, typename I::T, I::E>{});
    }
    if (plan.op_rows == 2) return cudaErrorInvalidConfiguration;  // no such instance
    return f(inst);
  };
  auto shape = [&](auto zero, auto elems) -> cudaError_t {
    using T = decltype(zero);
    constexpr int E = decltype(elems)::value;
    switch (plan.op_threads * 16 + plan.op_vpt) {
      case 256 * 16 + 1: return steps(RowsInstance<256, 1, 1, T, E>{});
      case 256 * 16 + 2: return steps(RowsInstance<256, 2, 1, T, E>{});
      case 256 * 16 + 4: return steps(RowsInstance<256, 4, 1, T, E>{});
      case 512 * 16 + 1: return steps(RowsInstance<512, 1, 1, T, E>{});
      case 512 * 16 + 2: return steps(RowsInstance<512, 2, 1, T, E>{});
      case 512 * 16 + 4: return steps(RowsInstance<512, 4, 1, T, E>{});
      case 512 * 16 + 8:  // 4096 packs: only 4-element packs (w <= 16384)
        if constexpr (E == 4) return steps(RowsInstance<512, 8, 1, T, E>{});
        return cudaErrorInvalidConfiguration;
      default: return cudaErrorInvalidConfiguration;
    }
  };
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    if (plan.op_elems == 8) {
      if constexpr (sizeof(T) == 2) return shape(zero, std::integral_constant<int, 8>{});
      return cudaErrorInvalidConfiguration;
    }
    return shape(zero, std::integral_constant<int, 4>{});
  };
  return SN_DISPATCH_DTYPE(plan.dtype, run);
}

}  // namespace
}  // namespace sn
