// The forwards of one layer held on chip across the whole device (SPECNORM_TUNE=op_onchip_grid=1:
// training; 2: eval too; by default on sm_90 the training forwards of the v-first layers of
// kGridVFirstMinElems, cuda/forward.cu; first run on an H200 at 771ed7c), and
// its backward (the end of this file): the layer's rows are spread over a cooperative grid of one
// block per multiprocessor, each block copies its rows of W into its shared memory once, and the
// whole forward (every power iteration, the commit of u, v and σ, and the division) is one
// launch: W is read from global memory once and W_sn written once, 2 · bytes(W) where the three
// kernels move 3. It extends cuda/on_chip.cu, whose
// layers fit one thread-block cluster (about 1.6 MB of fp32 weights on an H100 or H200), to layers
// that fit the shared memory of the whole device: about 29 MB on an H100 or H200 (132 × 227 KB),
// less the per-block vectors (4096 columns: ~3 %), e.g. 2048² fp32 (16.8 MB), 768 × 3072 fp32,
// ViT-L's 1024 × 4096 fp32; and, with up to 7 rows of each block held in registers (the packed
// instance, for rows of whole 16-byte packs, at most one per thread: packed_products), 4096² bf16
// (33.5 MB: 25-26 rows of each block in shared memory, 6-7 in registers), issue 5's goal-1 shape that
// three passes over W cannot serve at 85% of the copy bandwidth (bench/NOTES.md, session 20). Two
// instances per dtype: the packed one (16-byte accesses to the rows in shared memory, and the rows
// in registers) for rows of whole packs where W is 16-byte aligned (and W_sn too, with rows in
// registers), and rows of 256 elements or more or rows in registers; the generic one
// (block_products, the cluster kernel's element-by-element code, whose row groups serve narrow
// rows better) for the others. They add t's terms in other orders: the results are bitwise
// reproducible for a given grid and instance, and W's alignment picks the instance. A third, the
// streaming instance (on_chip_grid_streamed_kernel, streamed_products; session 21), takes layers
// too large even so where the shared memory holds at least a third of each block's rows: the rest
// are read from global memory each iteration, kStreamRows at a time in registers, and again for the
// division (4096² fp32: 13 rows of 31-32 on chip; 175 MB moved where the three kernels move 201),
// only where W and W_sn are 16-byte aligned; its backward keeps the two kernels.
//
// Per block (rank r of G, rows i0 = h·r/G to i1 = h·(r+1)/G), per iteration:
//   load   the rows (cp.async, as the cluster kernel: cuda/on_chip.cuh's copy_in) and v
//          (iteration 0; ones when the health word asks for a restart), once;
//   t, s   t_i = M_i · v for its rows and its partial s_j = Σ_i t_i M_ij over them (packed_products,
//          or block_products, the cluster kernel's code), the partial to global memory (part[r])
//          and its Σ t_i² (tsq[r]);
//   grid barrier;
//   reduce m_t = max(‖t‖, eps) from tsq in a fixed order (grid_sum_of: the same bits in every
//          block); its slice of columns j0 = w·r/G to j1 = w·(r+1)/G: s_j = (Σ_k part[k]_j in a
//          fixed order) / m_t into s, and the slice's Σ s_j² (sq[r]);
//   grid barrier;
//   σ      m_s = max(‖s‖, eps) and σ = ‖s‖² / m_s from sq in a fixed order (the same bits in
//          every block); another iteration reads v = s / m_s back from global memory.
// Then the commit as the cluster kernel: u_i = t_i / m_t for its rows, v_j = s_j / m_s for its
// slice, the state word (block 0), and W_sn = (W / d) · γ from shared memory (in place is safe: a
// block writes only the rows it alone read). The arithmetic is that of the three kernels in
// another order (as the cluster kernel's), so the results match them to rounding, not bit for bit;
// every sum has a fixed order for a given grid and instance, the grid is fixed at the layer's
// creation and W's alignment picks the instance (below), so the results are bitwise reproducible.
//
// Count (H200, copy 4.25 TB/s; 2048² fp32, 16.8 MB): the three kernels take ~31 µs (53 % of the
// copy bandwidth for 3 · bytes(W)); one launch that reads W once at ~3.5 TB/s (~5 µs), computes
// from shared memory (~1 µs), passes two grid barriers and the slice sums (~3-4 µs) and writes
// W_sn (~4-5 µs) would take ~15-18 µs. Prediction for the first GPU run: 2048² fp32 train 31 ->
// 16-20 µs, bf16 25 -> 11-15 µs; 768 × 3072 fp32 26 -> 12-16 µs (bench/NOTES.md, session 20).
//
// The eval forward (op_onchip_grid=2): σ = uᵀ M v from the stored u and v, each block's
// Σ_i u_i (M_i · v) over its rows, one grid barrier, their sum in a fixed order, then the state word
// and the division as above: W read once, where the two eval kernels read it twice.
//
// Where (sn_cuda_on_chip_grid_prepare, called from cuda/forward.cu): a u-first layer whose rows
// are contiguous (A = 1) and that the cluster kernel does not take, or a v-first layer whose Mᵀ's
// rows are (dim −1: Keras', Flax's and Haiku's kernels), which runs as the u-first iteration on Mᵀ
// with u and v exchanged, as in a group (sn_on_grid_view; the backward too), with SPECNORM_TUNE=
// op_onchip_grid=1 or 2 (or by default, kGridVFirstMinElems), on a device with cooperative
// launches, when one block per multiprocessor
// (at most h blocks) can hold its share: ⌈h / G⌉ rows, plus v, t, u and the row groups' partials,
// within the device's shared memory per block, or all but up to 7 of those rows, which the packed
// instance then holds in registers, or at least a third of them, the streaming instance reading the
// rest from global memory (sn_cuda_on_chip_grid_layout). Its training forwards (with W_sn and scale only)
// after the warm-up, and with 2 its eval forwards; and its backward (below), where ⟨G, W⟩ is to be
// computed and the buffers allow the instance the layout needs. A launch the device
// refuses (fewer blocks can be resident than at creation: the GPU shared under MPS) drops the
// layer to its usual kernels for good, as a refused cluster launch does (host/layer.c).
#include <cooperative_groups.h>

#include "backward.cuh" /* apply_pack */
#include "kernels.h"
#include "on_chip.cuh"
#include "sn_reference.h" /* sn_dtype_size */

namespace sn {
namespace {

constexpr int kGridThreads = 512;
// Rows a block of the packed instance may hold in registers beyond those its shared memory holds
// (one 16-byte pack per thread and row: 4 registers each), so that 4096² bf16 fits 132 blocks (32
// rows of 8 KB, 25-26 in shared memory beside the vectors and this instance's static shared memory).
// ptxas (one kernel per dtype and instance): the packed fp32 and bf16 instances 127-128 registers
// and no spill on sm_90 and sm_80, fp16 20 bytes on sm_90 (4 on sm_80); the generic ones 72-96, no
// spill. (With 8 rows in registers, one kernel for the three dtypes spilled 32 bytes on sm_90.)
constexpr int kGridRegRows = 7;
// The streaming instance (on_chip_grid_streamed_kernel): a block's rows beyond its shared memory
// that neither fit the register rows nor are narrow enough for them are read from global memory
// each iteration, kStreamRows at a time, kStreamPacks 16-byte packs a thread per row in registers
// (rows of at most kStreamPacks × 512 packs: 4096 fp32, 8192 bf16 or fp16), and read again for the
// division; only where the shared memory holds at least a third of the block's rows
// (kStreamMinShare), so that the bytes saved pay for the launch's barriers (bench/NOTES.md,
// session 21: 4096² fp32, 13 of 31-32 rows a block on chip).
constexpr int kStreamRows = 4;
constexpr int kStreamPacks = 2;
constexpr int kStreamMinShare = 3;  // the shared-memory rows × this >= the block's rows

struct GridChipParams {
  sn_group_entry_t e;  // the layer (its W, W_sn, state, settings), as the cluster kernel's `one`
  bool training;       // else the eval σ = uᵀ M v from the stored u and v (op_onchip_grid=2)
  float *part;         // G × w: the blocks' partial s
  float *tsq;          // G: the blocks' Σ t²
  float *sq;           // G: Σ s² over each block's slice of columns
  float *s;            // w: s = Mᵀ t / m_t (the plan's s; its t when the grid runs Mᵀ)
  int w_bytes, w4, rows4;
  int srows;           // a block's rows in shared memory at most; the rest in registers (packed
                       // instance) or streamed (streaming instance)
};

// The shared memory of every block: the rows (at W's address mod 16: 16 + the largest share,
// rounded up to 16 bytes), then floats: v (w4), t and u (rows4 each; u for the eval), the row
// groups' partials (one per thread).
size_t grid_smem(int w_bytes, int w4, int rows4) {
  return (size_t)w_bytes + sizeof(float) * ((size_t)w4 + 2 * (size_t)rows4 + (size_t)kGridThreads);
}

// Σ x[0..n) over the block in a fixed order (each thread every NT-th, then block_sum's tree); every
// thread gets it. x was written by other blocks of this launch: read past L1.
template <int NT>
__device__ __forceinline__ float grid_sum_of(const float *x, int n) {
  float tot = 0.f;
  for (int k = threadIdx.x; k < n; k += NT) tot += __ldcg(&x[k]);
  return block_sum<NT>(tot);
}

// The 16-byte packs of a row of w elements of `dtype`, or 0 where the row is not a whole number of
// them: the packed instances take rows of at most kGridThreads packs (one a thread, rows in
// registers), the streaming one of at most kStreamPacks × kGridThreads, the packed backward any.
int64_t row_packs(int64_t w, sn_dtype_t dtype) {
  const int64_t E = 16 / (int64_t)sn_dtype_size(dtype);
  return w % E == 0 ? w / E : 0;
}

// Whether rows of w elements of `dtype` are whole 16-byte packs, at most one per thread: what the
// packed instance takes (sn_cuda_on_chip_grid_layout's rule).
bool whole_packs(int64_t w, sn_dtype_t dtype) {
  const int64_t wp = row_packs(w, dtype);
  return wp > 0 && wp <= kGridThreads;
}

// Lanes that add one column's G partials (a power of two, at most 32, so that they are lanes of one
// warp): as many as the block's threads allow for its cw columns at once.
__device__ __forceinline__ int column_lanes(int cw, int nt) {
  int L = 1;
  while (L < 32 && 2 * L * (cw > 0 ? cw : 1) <= nt) L <<= 1;
  return L;
}

// The dot of a 16-byte pack's E elements (raw) with pack q's E entries of v (v4: v in shared memory
// as float4), in element order, onto d.
template <class T>
__device__ __forceinline__ float pack_dot(const typename VecN<T, kWide<T>>::raw &raw, const float4 *v4, int q,
                                          float d) {
  constexpr int E = kWide<T>, F4 = E / 4;
  float x[E];
  VecN<T, E>::cvt(raw, x);
#pragma unroll
  for (int f = 0; f < F4; ++f) {
    const float4 vv = v4[F4 * q + f];
    d = fmaf(x[4 * f + 0], vv.x, d);
    d = fmaf(x[4 * f + 1], vv.y, d);
    d = fmaf(x[4 * f + 2], vv.z, d);
    d = fmaf(x[4 * f + 3], vv.w, d);
  }
  return d;
}

// acc += t · (a 16-byte pack's E elements), element by element.
template <class T>
__device__ __forceinline__ void add_pack(float t, const typename VecN<T, kWide<T>>::raw &raw, float (&acc)[kWide<T>]) {
  constexpr int E = kWide<T>;
  float x[E];
  VecN<T, E>::cvt(raw, x);
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = fmaf(t, x[e], acc[e]);
}

// A thread's partial s of pack q (acc, E floats) into part[E·q ..], 16 bytes at a time.
template <class T>
__device__ __forceinline__ void store_partial(const float (&acc)[kWide<T>], float *part, int q) {
  constexpr int F4 = kWide<T> / 4;
  float4 *out = reinterpret_cast<float4 *>(part) + F4 * q;
#pragma unroll
  for (int f = 0; f < F4; ++f) out[f] = make_float4(acc[4 * f], acc[4 * f + 1], acc[4 * f + 2], acc[4 * f + 3]);
}

// t of the ks shared-memory rows of wp whole packs (Ws 16-byte aligned): a warp per row, lane l
// adding packs l, l + 32, ... then a butterfly; into t_sm (eval: u_k t_k). No barrier.
template <class T, int NT>
__device__ __forceinline__ void shared_rows_t(const T *Ws, int ks, int wp, const float4 *v4, const float *u_sm,
                                              float *t_sm, bool training) {
  constexpr int E = kWide<T>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int k = warp; k < ks; k += NT / 32) {
    const T *row = Ws + (int64_t)k * E * wp;
    float d = 0.f;
#pragma unroll 4
    for (int q = lane; q < wp; q += 32) d = pack_dot<T>(VecN<T, E>::load_raw(row + E * q), v4, q, d);
    d = warp_allsum(d);
    if (lane == 0) t_sm[k] = training ? d : u_sm[k] * d;
  }
}

// The products of the packed instance (RO > 0: rows of wp <= NT whole 16-byte packs, W 16-byte
// aligned, so that every row starts on a 16-byte boundary in shared memory too), where
// block_products reads elements one by one (a 2-byte shared-memory load per element: at 4096²
// bf16, ~13K load instructions per multiprocessor an iteration against ~2K here). t of the ks
// shared-memory rows: a warp per row, lane l adding packs l, l + 32, ... then a butterfly; t of the
// n register rows (reg: thread k's pack k of each): one block_sums for all of them; into t_sm (eval:
// u_k t_k; the register rows' t by thread 0). Training: the block's partial s by packs, thread k
// adding pack k of every row, shared-memory rows then register rows in order, into part[E·k ..].
// Returns the block's Σ t² (eval: Σ u_k t_k), the same in every thread: the shared-memory rows'
// (thread-strided, then block_sum's tree), then the register rows' in order.
template <class T, int NT, int RO>
__device__ __forceinline__ float packed_products(const T *Ws, int ks, int wp, const float *v_sm,
                                                 const float *u_sm, float *t_sm, float *part,
                                                 const typename VecN<T, kWide<T>>::raw (&reg)[RO],
                                                 int n, bool training) {
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  const int pk = threadIdx.x;
  const float4 *v4 = reinterpret_cast<const float4 *>(v_sm);
  shared_rows_t<T, NT>(Ws, ks, wp, v4, u_sm, t_sm, training);
  float dr[RO];
#pragma unroll
  for (int k = 0; k < RO; ++k) dr[k] = k < n && pk < wp ? pack_dot<T>(reg[k], v4, pk, 0.f) : 0.f;
  block_sums<NT, RO>(dr);  // its barriers also publish t_sm of the shared-memory rows
#pragma unroll
  for (int k = 0; k < RO; ++k) {
    if (k >= n) break;
    dr[k] = training ? dr[k] : u_sm[ks + k] * dr[k];
    if (threadIdx.x == 0) t_sm[ks + k] = dr[k];
  }
  if (training && pk < wp) {
    float acc[E] = {};
    for (int i = 0; i < ks; ++i) add_pack<T>(t_sm[i], V::load_raw(Ws + (int64_t)i * E * wp + E * pk), acc);
#pragma unroll
    for (int k = 0; k < RO; ++k) {
      if (k >= n) break;
      add_pack<T>(dr[k], reg[k], acc);
    }
    store_partial<T>(acc, part, pk);
  }
  float q = block_t_sum<NT>(t_sm, ks, training);
#pragma unroll
  for (int k = 0; k < RO; ++k) {
    if (k >= n) break;
    q = training ? fmaf(dr[k], dr[k], q) : q + dr[k];
  }
  return q;
}

// The products of the streaming instance (rows of wp <= PS·NT whole 16-byte packs, W 16-byte
// aligned): t of the ks shared-memory rows (shared_rows_t), then the ns rows after them from global
// memory (Wst), K at a time: thread k loads packs k, k + NT, ... (PS of them) of each, their t from
// one block_sums_alternating for the K (into t_sm[ks + ..] by thread 0; eval: u_k t_k). Training:
// the block's partial s by packs, thread k adding its PS packs over the shared-memory rows, then
// the streamed rows in order, into part. Returns the block's Σ t² (eval: Σ u_k t_k) over all its
// rows, the same in every thread.
template <class T, int NT, int PS, int K>
__device__ __forceinline__ float streamed_products(const T *Ws, int ks, const T *Wst, int ns, int wp,
                                                   const float *v_sm, const float *u_sm, float *t_sm,
                                                   float *part, bool training) {
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  using Raw = typename V::raw;
  const int pk = threadIdx.x;
  const float4 *v4 = reinterpret_cast<const float4 *>(v_sm);
  shared_rows_t<T, NT>(Ws, ks, wp, v4, u_sm, t_sm, training);
  __syncthreads();  // t_sm of the shared-memory rows
  float acc[PS][E] = {};
  // acc += t · (this thread's packs of a row)
  auto add_row = [&](float t, const Raw (&row)[PS]) {
#pragma unroll
    for (int q = 0; q < PS; ++q) {
      if (pk + q * NT >= wp) break;
      add_pack<T>(t, row[q], acc[q]);
    }
  };
  if (training) {
    for (int i = 0; i < ks; ++i) {
      Raw row[PS] = {};
#pragma unroll
      for (int q = 0; q < PS; ++q)
        if (pk + q * NT < wp) row[q] = V::load_raw(Ws + (int64_t)i * E * wp + E * (pk + q * NT));
      add_row(t_sm[i], row);
    }
  }
  for (int c0 = 0, slot = 0; c0 < ns; c0 += K, slot ^= 1) {  // uniform over the block
    Raw raw[K][PS];
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int q = 0; q < PS; ++q)
        raw[k][q] = c0 + k < ns && pk + q * NT < wp ? V::load_raw(Wst + (int64_t)(c0 + k) * E * wp + E * (pk + q * NT))
                                                    : Raw{};
    float dr[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      dr[k] = 0.f;
#pragma unroll
      for (int q = 0; q < PS; ++q)
        if (c0 + k < ns && pk + q * NT < wp) dr[k] = pack_dot<T>(raw[k][q], v4, pk + q * NT, dr[k]);
    }
    block_sums_alternating<NT, K>(dr, slot);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (c0 + k >= ns) break;
      if (threadIdx.x == 0) t_sm[ks + c0 + k] = training ? dr[k] : u_sm[ks + c0 + k] * dr[k];
      if (training) add_row(dr[k], raw[k]);
    }
  }
  if (training) {
#pragma unroll
    for (int q = 0; q < PS; ++q) {
      if (pk + q * NT >= wp) break;
      store_partial<T>(acc[q], part, pk + q * NT);
    }
  }
  __syncthreads();  // t_sm of the streamed rows (thread 0's)
  return block_t_sum<NT>(t_sm, ks + ns, training);
}

template <class T, int NT, int RO, int PS>
__device__ void layer_on_grid(const GridChipParams &p, char *sm) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  const sn_group_entry_t &e = p.e;
  const int G = (int)gridDim.x, r = (int)blockIdx.x;
  const int w = (int)e.w;
  const int64_t i0 = e.h * r / G, i1 = e.h * (r + 1) / G;
  const int rows = (int)(i1 - i0);
  const int ks = rows < p.srows ? rows : p.srows;  // rows in shared memory; the rest in registers
                                                   // (RO > 0) or streamed (PS > 0)
  const int64_t n = (int64_t)ks * w;
  const T *Wg = static_cast<const T *>(e.W) + i0 * w;
  T *Ws = reinterpret_cast<T *>(sm + (reinterpret_cast<uintptr_t>(Wg) & 15));
  float *v_sm = reinterpret_cast<float *>(sm + p.w_bytes);
  float *t_sm = v_sm + p.w4, *u_sm = t_sm + p.rows4, *grp_sm = u_sm + p.rows4;
  const bool training = p.training;
  // RO > 0, the packed instance: the register rows' packs (rows of whole 16-byte packs, W and W_sn
  // 16-byte aligned: the host's rule, launch_on_chip_grid). PS > 0, the streaming instance: rows
  // ks.. read from global memory (streamed_products, and the division below); nreg then unused.
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  const int wp = w / E, nreg = rows - ks;
  typename V::raw reg[RO > 0 ? RO : 1] = {};

  // Load: W's rows, v and, eval, u_i: in flight together.
  copy_in<NT>(Ws, Wg, n);
  if constexpr (RO > 0) {
#pragma unroll
    for (int k = 0; k < RO; ++k)
      if (k < nreg && (int)threadIdx.x < wp) reg[k] = V::load_raw(Wg + (int64_t)(ks + k) * w + E * threadIdx.x);
  }
  // The state as this forward found it (block 0 writes it only after the last grid barrier).
  const StartState st = load_v_and_state<NT>(e, v_sm, u_sm, i0, rows, w, training);

  // This block's slice of the columns, and the lanes that add each column's partials.
  const int j0 = (int)((int64_t)w * r / G), cw = (int)((int64_t)w * (r + 1) / G) - j0;
  const int L = column_lanes(cw, NT), l = threadIdx.x & (L - 1), slot = threadIdx.x / L;
  const int groups = row_groups<NT>(w);
  float m_t = 1.f, m_s = 1.f, sig = 0.f;
  // (At least one iteration: sn_cuda_forward_on_chip sends a training forward of no iteration to
  // the usual kernels. The loop's grid barriers are what keep block 0's state word, written
  // below, from racing with the other blocks' reads of the state in load_v_and_state.)
  const int iters = training ? e.n_iters : 1;
  for (int it = 0; it < iters; ++it) {
    float q;
    if constexpr (PS > 0)
      q = streamed_products<T, NT, PS, kStreamRows>(Ws, ks, Wg + (int64_t)ks * w, rows - ks, wp, v_sm, u_sm, t_sm,
                                                    p.part + (int64_t)r * w, training);
    else if constexpr (RO > 0)
      q = packed_products<T, NT, RO>(Ws, ks, wp, v_sm, u_sm, t_sm, p.part + (int64_t)r * w, reg, nreg, training);
    else
      q = block_products<T, NT>(Ws, ks, w, v_sm, u_sm, t_sm, p.part + (int64_t)r * w, grp_sm, training,
                                groups);
    if (threadIdx.x == 0) p.tsq[r] = q;
    grid.sync();  // every block's partial s and Σ t² (eval: Σ u_i t_i) written
    // (Early: a kernel after this one that asked for PDL is scheduled now, but reads nothing
    // before its griddepcontrol.wait, which waits for this whole launch, commit and W_sn included.)
    if (it == 0) pdl_trigger();
    if (!training) {  // σ = uᵀ M v, the blocks' sums in a fixed order
      sig = grid_sum_of<NT>(p.tsq, G);
      break;
    }
    m_t = norm_divisor(grid_sum_of<NT>(p.tsq, G), e.eps);
    const float rt = 1.f / m_t;
    // The slice's columns, NT / L at a time: column c by L lanes of one warp, lane l adding
    // partials l, l + L, ... in order, then the lanes' butterfly (the same bits in every lane).
    float sq = 0.f;
    for (int c0 = 0; c0 < cw; c0 += NT / L) {  // uniform over the block: every lane shuffles
      const int c = c0 + slot;
      float x = 0.f;
      if (c < cw) {
        const float *col = p.part + j0 + c;
#pragma unroll 4
        for (int k = l; k < G; k += L) x += __ldcg(&col[(int64_t)k * w]);
      }
      for (int o = L / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
      if (c < cw && l == 0) {
        x *= rt;
        p.s[j0 + c] = x;
        sq += __fmul_rn(x, x);
      }
    }
    sq = block_sum<NT>(sq);
    if (threadIdx.x == 0) p.sq[r] = sq;
    grid.sync();  // s and every slice's Σ s² written
    const float ssq = grid_sum_of<NT>(p.sq, G);
    m_s = norm_divisor(ssq, e.eps);
    sig = ssq / m_s;
    if (it + 1 < iters) {  // the next iteration's v = s / m_s (every block reads all of s)
      const float rs = 1.f / m_s;
      for (int j = threadIdx.x; j < w; j += NT) v_sm[j] = __ldcg(&p.s[j]) * rs;
      __syncthreads();
    }
  }

  const CommitScale cs = commit_scale_of(sig, st.sig_old, e.norm_bound, st.gamma);
  if (training && cs.good) {
    for (int k = threadIdx.x; k < rows; k += NT) e.u[i0 + k] = t_sm[k] / m_t;
    for (int j = j0 + threadIdx.x; j < j0 + cw; j += NT) e.v[j] = __ldcg(&p.s[j]) / m_s;
  }
  if (r == 0 && threadIdx.x == 0) commit_state_word_of(e.sigma, cs, training, st.health);
  if (e.W_sn) {
    T *out = static_cast<T *>(e.W_sn) + i0 * w;
    divide_out<NT>(out, Ws, Wg, n, cs);
    if constexpr (RO > 0) {
#pragma unroll
      for (int k = 0; k < RO; ++k) {
        if (k >= nreg || (int)threadIdx.x >= wp) break;
        float x[E];
        V::cvt(reg[k], x);
#pragma unroll
        for (int q = 0; q < E; ++q) x[q] = cs.apply(x[q]);
        V::store(out + (int64_t)(ks + k) * w + E * threadIdx.x, x);
      }
    }
    if constexpr (PS > 0)  // the streamed rows, read again: 4 packs a thread in flight
      scale_packs<NT, 4>(Wg + (int64_t)ks * w, out + (int64_t)ks * w, (int64_t)(rows - ks) * wp,
                         [&](float x) { return cs.apply(x); });
  }
}

// One block of 512 threads per multiprocessor (its shared memory is most of the multiprocessor's),
// so up to 128 registers. RO: rows held in registers beyond shared memory (0 or kGridRegRows).
template <class T, int RO>
__global__ void __launch_bounds__(kGridThreads, 1) on_chip_grid_kernel(GridChipParams p) {
  SN_EXTERN_SHARED(float4, on_chip_grid_sm);
  pdl_wait();
  layer_on_grid<T, kGridThreads, RO, 0>(p, reinterpret_cast<char *>(on_chip_grid_sm));
}

// The streaming instance: rows beyond the shared memory read from global memory (kStreamPacks).
template <class T>
__global__ void __launch_bounds__(kGridThreads, 1) on_chip_grid_streamed_kernel(GridChipParams p) {
  SN_EXTERN_SHARED(float4, on_chip_grid_st_sm);
  pdl_wait();
  layer_on_grid<T, kGridThreads, 0, kStreamPacks>(p, reinterpret_cast<char *>(on_chip_grid_st_sm));
}

// pick(T{}) for dtype's element type T.
template <class F>
auto by_dtype(sn_dtype_t dtype, F pick) {
  switch (dtype) {
    case SN_DTYPE_FLOAT16: return pick(__half{});
    case SN_DTYPE_BFLOAT16: return pick(__nv_bfloat16{});
    default: return pick(float{});
  }
}

// The instance for a dtype: generic (RO = 0) or packed (RO = kGridRegRows rows in registers at most);
// the streaming one.
using GridKernel = void (*)(GridChipParams);
GridKernel grid_kernel_for(sn_dtype_t dtype, bool packed) {
  return by_dtype(dtype, [&](auto zero) -> GridKernel {
    using T = decltype(zero);
    return packed ? on_chip_grid_kernel<T, kGridRegRows> : on_chip_grid_kernel<T, 0>;
  });
}
GridKernel grid_streamed_kernel_for(sn_dtype_t dtype) {
  return by_dtype(dtype, [&](auto zero) -> GridKernel { return on_chip_grid_streamed_kernel<decltype(zero)>; });
}

// ---- the backward of a layer on the grid (cuda/backward.cu has the formula) -------------------
// ∂L/∂W = a·G − b·u vᵀ with b = a·⟨G, W⟩ / σ, in one launch where the two kernels of
// cuda/backward.cu need a grid-wide sum between them, as the cluster kernel's backward
// (cuda/on_chip.cu) over the forward's grid and layout: each block copies its rows of G (G has W's
// shape and type) into its shared memory, and with the packed instance up to kGridRegRows more into
// registers, adds up its share of ⟨G, W⟩ reading its rows of W once from global memory (the
// packed instance evict-first, as the inner kernel: W is not read again), writes it to part[r]; a
// grid barrier;
// every block adds the G shares in block order (grid_sum_of: the same bits in each) into a, b and,
// block 0, ∂L/∂γ; and writes its rows of dW from the G it holds. Bytes: G and W read once, dW
// written (and read when accumulating): 3 · bytes(W) where the two kernels move 4 (sn_bench's
// backward rows count 4). dW may be G or W: a block reads only its own rows of W before the grid
// barrier and writes only its own rows of dW after it, each element of dW read before its own
// store. Only with ⟨G, W⟩ to compute (σ not detached, or ∂L/∂γ asked for), as the cluster's:
// otherwise the apply kernel alone is one launch already.
// Two instances per dtype, as the forward's: packed (RO = kGridRegRows) for rows whose width is a
// whole number of 16-byte packs with W, G and dW 16-byte aligned (then the block's rows of G are
// packs in a row in shared memory: their share and dW go 16 bytes at a time); generic (RO = 0,
// cuda/on_chip.cuh's gw_thread_share and apply_from_chip, the cluster kernel's loops) otherwise,
// only for a layout with no rows in registers (grid_backward_instance). The sums' orders are
// fixed for a grid and an instance: the results are bitwise reproducible, and match the two
// kernels' to rounding of ⟨G, W⟩.
// Count (H200, copy 4.25 TB/s): 4096² bf16 (32 MiB of G, W and dW each): G and W in ~16 µs at the
// probe's read rate, one grid barrier ~1.5 µs, dW out ~8.5 µs: ~26-29 µs where the two kernels take
// ~45 (70.5 % of the copy bandwidth for the 4 · bytes(W) sn_bench counts): 109-122 % in those terms,
// 82-91 % for the 3 · bytes(W) it moves (bench/NOTES.md, session 21).
struct GridBwParams {
  const void *W, *G;
  void *dW;
  int64_t h;
  int w;
  const float *u, *v, *sigma, *gamma;
  float norm_bound;
  bool accumulate, detach;
  float *dgamma;
  float clamp_eps;  // as the backward's (sn_cuda_backward_args_t)
  float *part;      // G: the blocks' shares of ⟨G, W⟩ (the plan's grid scratch)
  int srows;        // a block's rows in shared memory at most (the forward's layout); the rest in registers
};

template <class T, int NT, int RO>
__device__ void backward_on_grid(const GridBwParams &p, char *sm) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  const int G = (int)gridDim.x, r = (int)blockIdx.x, w = p.w;
  const int64_t i0 = p.h * r / G, i1 = p.h * (r + 1) / G;
  const int rows = (int)(i1 - i0);
  const int ks = rows < p.srows ? rows : p.srows, nreg = rows - ks;
  const int n = ks * w;  // < 2^31: the layout's shared-memory rows
  const T *Gg = static_cast<const T *>(p.G) + i0 * w;
  const T *Wg = static_cast<const T *>(p.W) + i0 * w;
  T *dWg = static_cast<T *>(p.dW) + i0 * w;
  T *Gs = reinterpret_cast<T *>(sm + (reinterpret_cast<uintptr_t>(Gg) & 15));
  constexpr int E = kWide<T>, F4 = E / 4;
  using V = VecN<T, E>;
  using Raw = typename V::raw;
  const int wp = w / E, pk = threadIdx.x;
  // Σ_e g_e w_e over a pack, in element order, onto d.
  auto dot = [](const Raw &g, const Raw &wr, float d) {
    float x[E], y[E];
    V::cvt(g, x);
    V::cvt(wr, y);
#pragma unroll
    for (int e = 0; e < E; ++e) d = fmaf(x[e], y[e], d);
    return d;
  };
  copy_in<NT>(Gs, Gg, n);
  __pipeline_commit();
  const float sig = p.sigma[0];  // the last forward's σ
  float acc = 0.f;
  Raw reg[RO > 0 ? RO : 1] = {};
  if constexpr (RO > 0) {
    // The register rows' packs of G and W (thread k: pack k of each row), in flight with the copy,
    // and their share first.
    Raw wr[RO];
#pragma unroll
    for (int k = 0; k < RO; ++k) {
      if (k < nreg && pk < wp) {
        reg[k] = V::load_raw(Gg + (int64_t)(ks + k) * w + E * pk);
        wr[k] = load_streaming<Raw>(Wg + (int64_t)(ks + k) * w + E * pk);
      }
    }
#pragma unroll
    for (int k = 0; k < RO; ++k)
      if (k < nreg && pk < wp) acc = dot(reg[k], wr[k], acc);
  }
  __pipeline_wait_prior(0);
  __syncthreads();
  // The shared-memory rows' share (packed: the block's ks·wp packs in a row, thread k taking packs
  // k, k + NT, ...).
  if constexpr (RO > 0) {
    const int np = ks * wp;
#pragma unroll 8
    for (int k = pk; k < np; k += NT) acc = dot(V::load_raw(Gs + E * k), load_streaming<Raw>(Wg + E * k), acc);
  } else {
    acc = gw_thread_share<NT>(Gs, Wg, n);
  }
  acc = block_sum<NT>(acc);
  if (threadIdx.x == 0) p.part[r] = acc;
  grid.sync();  // every block's share written (and every block's reads of W done)
  pdl_trigger();
  const float gw = grid_sum_of<NT>(p.part, G);
  const Coefs c = backward_coefs(sig, &gw, p.norm_bound, p.gamma, p.detach, p.clamp_eps);
  if (r == 0 && threadIdx.x == 0 && p.dgamma) *p.dgamma = backward_dgamma(sig, gw, p.norm_bound);
  const float *__restrict__ u = p.u + i0;
  const float *__restrict__ v = p.v;
  if constexpr (RO > 0) {
    // dW of pack q of row il from G's pack g (and dW's old pack o, accumulating): apply_pack, as
    // cuda/backward.cuh's apply_rows_body.
    auto apply = [&](const Raw &g, const Raw &o, int il, int q, T *dst) {
      apply_pack<T, true>(g, o, p.accumulate, __ldg(&u[il]), reinterpret_cast<const float4 *>(v) + F4 * q, c, dst);
    };
    // The shared-memory rows, K packs a thread at a time (accumulating: their old dW loaded before
    // any is stored), then the register rows.
    const int np = ks * wp;
    constexpr int K = 4;
    for (int k0 = pk; k0 < np; k0 += K * NT) {
      Raw o[K] = {};
      if (p.accumulate) {
#pragma unroll
        for (int q = 0; q < K; ++q)
          if (k0 + q * NT < np) o[q] = V::load_raw(dWg + E * (k0 + q * NT));
      }
#pragma unroll
      for (int q = 0; q < K; ++q) {
        const int k = k0 + q * NT;
        if (k >= np) break;
        const int il = k / wp;
        apply(V::load_raw(Gs + E * k), o[q], il, k - il * wp, dWg + E * k);
      }
    }
#pragma unroll
    for (int k = 0; k < RO; ++k) {
      if (k >= nreg || pk >= wp) break;
      T *dst = dWg + (int64_t)(ks + k) * w + E * pk;
      apply(reg[k], p.accumulate ? V::load_raw(dst) : Raw{}, ks + k, pk, dst);
    }
  } else {
    apply_from_chip<NT>(Gs, dWg, n, w, u, v, c, p.accumulate);
  }
}

template <class T, int RO>
__global__ void __launch_bounds__(kGridThreads, 1) on_chip_grid_backward_kernel(GridBwParams p) {
  SN_EXTERN_SHARED(float4, on_chip_grid_bw_sm);
  pdl_wait();
  backward_on_grid<T, kGridThreads, RO>(p, reinterpret_cast<char *>(on_chip_grid_bw_sm));
}

using GridBwKernel = void (*)(GridBwParams);
GridBwKernel grid_backward_kernel_for(sn_dtype_t dtype, bool packed) {
  return by_dtype(dtype, [&](auto zero) -> GridBwKernel {
    using T = decltype(zero);
    return packed ? on_chip_grid_backward_kernel<T, kGridRegRows> : on_chip_grid_backward_kernel<T, 0>;
  });
}

// Whether `kernel` runs one block of kGridThreads per multiprocessor with `bytes` of dynamic shared
// memory (allowing it that much): every block of a grid of one per multiprocessor resident at once.
template <class P>
bool one_block_per_sm(void (*kernel)(P), size_t bytes) {
  int per_sm = 0;
  cudaError_t e = allow_shared_memory(kernel, bytes);
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGridThreads, bytes);
  forget(e);
  return e == cudaSuccess && per_sm >= 1;
}

}  // namespace

cudaError_t launch_on_chip_grid(const sn_cuda_plan_t &plan, const sn_group_entry_t &e, bool training,
                                cudaStream_t stream) {
  const sn_on_chip_t &oc = plan.onchip;
  const int G = oc.grid;
  const int64_t w = e.w;
  GridChipParams p{};
  p.e = e;
  p.training = training;
  p.part = plan.ocg_part;
  p.tsq = plan.ocg_part + (int64_t)G * w;
  p.sq = p.tsq + G;
  // s has w entries: the plan's s, or for Mᵀ (w = the layer's h) its t, which this launch does not use.
  p.s = oc.transposed ? plan.t : plan.s;
  p.w_bytes = oc.w_bytes;
  p.w4 = oc.w4;
  p.rows4 = oc.rows4;
  p.srows = oc.smem_rows;
  // oc.refuse (tests, SPECNORM_TUNE=onchip_refuse=1): more blocks than can ever be resident, which
  // the device refuses (cudaErrorCooperativeLaunchTooLarge). No programmatic-serialization
  // attribute (as the cooperative one-pass launch by default, cuda/one_pass_coop.cu): the launch
  // starts once the kernel before it has ended, so its pdl_wait returns at once; its pdl_trigger
  // after the first grid barrier lets a kernel after it that asked for PDL be scheduled early.
  // The packed instance where W allows 16-byte accesses, and W_sn too where rows sit in registers
  // (stored 16 bytes at a time; sn_cuda_forward_on_chip keeps such a layer off this path otherwise;
  // the rows in shared memory go out through divide_out, which takes any alignment).
  // The streaming instance (streamed rows: W and W_sn 16-byte aligned, as with rows in registers).
  const bool aligned = aligned16(e.W) && (!e.W_sn || aligned16(e.W_sn));
  const bool packed = oc.packed && aligned16(e.W) && (oc.reg_rows == 0 || !e.W_sn || aligned16(e.W_sn));
  if ((oc.reg_rows > 0 && !packed) || (oc.stream_rows > 0 && !aligned)) return cudaErrorInvalidValue;
  const int blocks = oc.refuse ? G * 1024 : G;
  ClusterLaunch L(blocks, kGridThreads, grid_smem(oc.w_bytes, oc.w4, oc.rows4), 0, stream, false, true);
  return cudaLaunchKernelEx(
      &L.cfg, oc.stream_rows > 0 ? grid_streamed_kernel_for(plan.dtype) : grid_kernel_for(plan.dtype, packed), p);
}

int grid_backward_instance(const sn_cuda_plan_t &plan, const void *W, const void *G, const void *dW) {
  const bool packed =
      row_packs(sn_on_grid_view(&plan).B, plan.dtype) > 0 && aligned16(W) && aligned16(G) && aligned16(dW);
  return packed ? 1 : plan.onchip.reg_rows > 0 ? -1 : 0;
}

cudaError_t launch_on_chip_grid_backward(const sn_cuda_plan_t &plan, const sn_cuda_backward_args_t &a,
                                         cudaStream_t stream) {
  const sn_on_chip_t &oc = plan.onchip;
  const int instance = grid_backward_instance(plan, a.W, a.G, a.dW);
  if (instance < 0) return cudaErrorInvalidValue;  // (sn_cuda_backward_on_chip keeps such calls off)
  // The matrix the forward iterates on (Mᵀ for a v-first layer: G and dW are its Gᵀ and dWᵀ, and
  // dWᵀ = a·Gᵀ − b·v uᵀ, so u and v exchanged as in the forward).
  const sn_view_t gv = sn_on_grid_view(&plan);
  const bool tr = oc.transposed != 0;
  const GridBwParams p{a.W, a.G, a.dW, gv.h, (int)gv.B, tr ? a.v : a.u, tr ? a.u : a.v, a.sigma,
                       plan.gamma, plan.norm_bound, a.accumulate != 0, a.detach_sigma != 0, a.dgamma,
                       a.clamp_eps, plan.ocg_part, oc.smem_rows};
  // (oc.refuse, tests: too many blocks, refused as the forward's launch.)
  ClusterLaunch L(oc.refuse ? oc.grid * 1024 : oc.grid, kGridThreads, (size_t)oc.w_bytes, 0, stream, false, true);
  return cudaLaunchKernelEx(&L.cfg, grid_backward_kernel_for(plan.dtype, instance == 1), p);
}

}  // namespace sn

extern "C" size_t sn_cuda_on_chip_grid_layout(int64_t h, int64_t w, sn_dtype_t dtype, int blocks,
                                              size_t avail, int rows_cap, sn_on_chip_t *oc) {
  oc->w_bytes = oc->w4 = oc->rows4 = oc->smem_rows = oc->reg_rows = oc->stream_rows = oc->packed = 0;
  if (h < 1 || w < 1 || blocks < 1 || blocks > h || w > (1 << 24)) return 0;
  const int64_t R = (h + blocks - 1) / blocks;  // the most rows the split gives a block
  const int64_t elem = (int64_t)sn_dtype_size(dtype), row_bytes = w * elem;
  const int64_t w4 = (w + 3) / 4 * 4, rows4 = (R + 3) / 4 * 4;
  const int64_t vec = 4 * (w4 + 2 * rows4 + sn::kGridThreads);
  // Rows in shared memory: as many as fit beside the vectors (16 bytes for W's offset mod 16, 15
  // for the rounding), at most rows_cap (> 0: tests), at most R.
  if ((int64_t)avail < vec + 31) return 0;
  int64_t ks = ((int64_t)avail - vec - 31) / row_bytes;
  if (rows_cap > 0 && ks > rows_cap) ks = rows_cap;
  if (ks > R) ks = R;
  if (ks * row_bytes > (1 << 24)) return 0;  // beyond any block's shared memory (w_bytes is an int)
  if (ks < 1) return 0;
  // The rest in registers: whole packs, at most one per thread, at most kGridRegRows rows. Else
  // streamed (the streaming instance): whole packs, at most kStreamPacks a thread, and at least a
  // third of the block's rows in shared memory.
  const bool whole = sn::whole_packs(w, dtype);
  int64_t reg = R - ks, stream = 0;
  if (reg > 0 && !(whole && reg <= sn::kGridRegRows)) {
    const int64_t wp = sn::row_packs(w, dtype);
    if (wp == 0 || wp > (int64_t)sn::kStreamPacks * sn::kGridThreads || ks * sn::kStreamMinShare < R)
      return 0;
    stream = reg;
    reg = 0;
  }
  // Packed: whole packs, at most one per thread; and rows of at least kGridThreads / 2 elements, or
  // rows in registers: narrower ones keep block_products, whose row groups put all threads on the
  // partial s (packed, only wp threads go through all the block's rows).
  const bool packed = stream == 0 && whole && (reg > 0 || w >= sn::kGridThreads / 2);
  oc->w_bytes = (int)((16 + ks * row_bytes + 15) / 16 * 16);
  oc->w4 = (int)w4;
  oc->rows4 = (int)rows4;
  oc->smem_rows = (int)ks;
  oc->reg_rows = (int)reg;
  oc->stream_rows = (int)stream;
  oc->packed = packed ? 1 : 0;
  return sn::grid_smem(oc->w_bytes, oc->w4, oc->rows4);
}

extern "C" void sn_cuda_on_chip_grid_prepare(sn_view_t view, sn_dtype_t dtype, int sm_count, int eval,
                                             int rows_cap, int refuse, sn_on_chip_t *oc) {
  *oc = sn_on_chip_t{};
  if (view.A != 1 || sm_count < 1) return;
  int dev = 0, coop = 0, optin = 0;
  cudaFuncAttributes fg{}, fp{}, fs{};
  const sn::GridKernel generic = sn::grid_kernel_for(dtype, false), packed = sn::grid_kernel_for(dtype, true),
                       streamed = sn::grid_streamed_kernel_for(dtype);
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (e == cudaSuccess && coop) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e == cudaSuccess && coop) e = cudaFuncGetAttributes(&fg, generic);
  if (e == cudaSuccess && coop) e = cudaFuncGetAttributes(&fp, packed);
  if (e == cudaSuccess && coop) e = cudaFuncGetAttributes(&fs, streamed);
  if (e != cudaSuccess || !coop) {
    sn::forget(e);
    return;
  }
  // The dynamic shared memory every instance a forward may launch can use (its opt-in limit less
  // its static memory): the generic one, and for rows of whole 16-byte packs, at most one per
  // thread, the packed one too (sn_cuda_on_chip_grid_layout's rule).
  const bool packable = sn::whole_packs(view.B, dtype);
  size_t stat = fg.sharedSizeBytes;
  if (packable && fp.sharedSizeBytes > stat) stat = fp.sharedSizeBytes;
  const size_t avail = (size_t)optin > stat ? (size_t)optin - stat : 0;
  const int G = (int)(view.h < sm_count ? view.h : sm_count);
  sn_on_chip_t L{};
  size_t bytes = sn_cuda_on_chip_grid_layout(view.h, view.B, dtype, G, avail, rows_cap, &L);
  if (bytes == 0) return;
  if (L.stream_rows > 0) {
    // Rows streamed: the streaming instance alone (W and W_sn 16-byte aligned, else the usual
    // kernels), laid out again for its own static shared memory, one block per multiprocessor.
    const size_t avail_s = (size_t)optin > fs.sharedSizeBytes ? (size_t)optin - fs.sharedSizeBytes : 0;
    bytes = sn_cuda_on_chip_grid_layout(view.h, view.B, dtype, G, avail_s, rows_cap, &L);
    if (bytes == 0 || L.stream_rows == 0 || !sn::one_block_per_sm(streamed, bytes)) return;
  } else {
    // Each instance a forward may launch: the generic one unless rows sit in registers (W or W_sn
    // off 16-byte alignment), the packed one for rows of whole packs: its shared memory, and one
    // block per multiprocessor (every block resident at once).
    for (int k = 0; k < 2; ++k) {
      const bool is_packed = k == 1;
      if (is_packed ? !L.packed : L.reg_rows > 0) continue;
      if (!sn::one_block_per_sm(is_packed ? packed : generic, bytes)) return;
    }
  }
  // Its backward: each instance a backward may launch (the packed one for rows of whole packs, the
  // generic one unless rows sit in registers: grid_backward_instance), with the rows of G in
  // shared memory (w_bytes, as W's) and one block per multiprocessor; none with rows streamed (G's
  // would be read twice: the two kernels).
  int backward = L.stream_rows == 0;
  for (int k = 0; k < 2 && backward; ++k) {
    const bool is_packed = k == 1;
    if (is_packed ? sn::row_packs(view.B, dtype) == 0 : L.reg_rows > 0) continue;
    backward = sn::one_block_per_sm(sn::grid_backward_kernel_for(dtype, is_packed), (size_t)L.w_bytes);
  }
  *oc = L;
  oc->cluster = 1;
  oc->grid = G;
  oc->threads = sn::kGridThreads;
  oc->modes = SN_ON_CHIP_TRAIN | SN_ON_CHIP_SCALE | (eval ? SN_ON_CHIP_EVAL : 0);
  oc->refuse = refuse;
  oc->backward = backward;
}
