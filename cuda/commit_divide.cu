// The last launch of every forward: commit the new u, v and σ when σ is usable, then write
// W_sn = (W / d) · γ with d = σ, or max(1, σ / c) under a norm bound c, and γ = 1 unless bound.
// Work mapping: a grid-stride loop over W, 16 bytes per access (4 floats, 8 of the 2-byte types)
// when W and W_sn are 16-byte aligned, single elements otherwise; 64-bit indices.
// Order: from the END of W backwards. The iteration kernels before this one read W front to back
// (the one-pass kernel takes rows in order), so W's last tens of MB are still in L2 (50 MB on
// H100/H200) when this kernel starts: reading them first turns those reads into L2 hits before
// the writes of W_sn evict them. A layer that fits in L2 is read from DRAM once per forward.
// Measured (H100, e6c00d0, 4096² fp32): only 9 of W's 67 MB came from L2. Each line of W_sn
// written, and each line of W loaded past the end of what L2 still holds, takes the place of the
// least recently used line, which is one of W's lines this kernel has yet to read. With
// div_stream (the default where W takes a quarter of the L2 to twice it, cuda/forward.cu; H100:
// 4096² fp32 train −5%, bf16 −8%) the wide loop loads W and stores W_sn as
// streaming data (ld/st.global.cs, evict-first lines), so that they displace each other rather
// than W's remaining lines: up to what L2 keeps of W after the iteration, less its partials.
// In flight: one 16-byte load per thread (W_sn may be W: each load waits for the store before
// it), 8 blocks of 256 threads per SM at 32 registers (fp32): 32 KB per SM. The 2-byte types
// took 38-40 registers, 6 blocks: 24 KB, and ran at 82% of the copy bandwidth where fp32 ran at
// 90% (H200, e56c4b8, 4096 × 16384: train less scale); since session 13 (the pack count computed
// before the commit) they take 30-31 registers on sm_90, 8 blocks, 32 KB, as fp32: on an H200
// at 64f5bc9, 4096 × 16384 bf16 train −1%, eval −1.5% against the commit before (bench/NOTES.md,
// session 15). Loading 2 or 4 packs per thread before storing them, on a single
// wave of 4 blocks per SM, measured 0-6% slower on an H100 (6626f15; 4096 × 16384 bf16 eval
// 154.2 -> 164.0 µs with 2) and was removed (bench/NOTES.md).
// Bytes: numel·sizeof(T) read + numel·sizeof(T) written (DRAM: less the L2 hits above), plus
// (h + w)·8 when u and v are committed.
#include "kernels.h"
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

struct CommitParams {
  const void *W;
  void *W_sn;
  int64_t n;
  float *u, *v, *sigma;
  const float *t, *s, *scal;
  int64_t h, w;
  int slot;
  Commit what;
  float norm_bound;
  const float *gamma;
};

// The block's early packs (PRE instances only): one 16-byte slot per thread.
template <class R>
__device__ __forceinline__ R *early_slots() {
  __shared__ __align__(16) R slots[kBlock];
  return slots;
}

// 16 bytes from global to shared memory in flight (cp.async.cg: through L2 only), and with
// EVICT_FIRST at L2's evict-first priority, as the streaming division's loads (ld.global.cs).
// The thread waits for its own copies with early_wait().
template <bool EVICT_FIRST>
__device__ __forceinline__ void early_copy(void *smem, const void *gmem) {
#ifdef SN_EMULATION  // tests/emu_cuda/: the copy done at once (16-byte aligned, as cp.async needs)
  if (((uintptr_t)smem | (uintptr_t)gmem) & 15u) __trap();
  memcpy(smem, gmem, 16);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (EVICT_FIRST) {
    asm volatile(
        "{\n\t.reg .b64 pol;\n\t"
        "createpolicy.fractional.L2::evict_first.b64 pol, 1.0;\n\t"
        "cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, pol;\n\t}" ::"r"(s),
        "l"(gmem)
        : "memory");
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

__device__ __forceinline__ void early_wait() {
#ifndef SN_EMULATION
  asm volatile("cp.async.wait_group 0;" ::: "memory");
#endif
}

// PRE (plan.div_prefetch): each thread's first pack of W is copied into its slot of shared memory
// (cp.async: no registers held; evict-first in L2 with STREAM) before the PDL wait, and divided
// and stored right after it.
template <bool WIDE, class T, bool STREAM = false, bool PRE = false>
__global__ void __launch_bounds__(kBlock) commit_divide_kernel(CommitParams p) {
  static_assert(WIDE || !STREAM, "streaming accesses: the 16-byte packs only");
  static_assert(WIDE || !PRE, "the early load: the 16-byte packs only");
  const int64_t tid = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * kBlock;
  const T *in = static_cast<const T *>(p.W);
  T *out = static_cast<T *>(p.W_sn);
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  using R = typename V::raw;
  // Whole 16-byte packs. (Computed here, before the commit, the 2-byte types' instances take 30-31
  // registers, 8 blocks per SM, where they took 38-40, 6 blocks, with it after the commit.)
  const int64_t nq = WIDE && out ? p.n / E : 0;
  auto load = [&](int64_t q) -> R {
    if constexpr (STREAM) return load_streaming<R>(in + E * q);
    else return V::load_raw(in + E * q);
  };
  // div_prefetch: this thread's first pack (of the last packs of W: see the top of the file) is
  // loaded before the wait, while the kernels before it still run. Only the kernels of this
  // forward come before it, and none writes W: each one's own wait came before its trigger, so
  // whatever wrote W before this forward has completed (host/layer.c launches nothing else
  // between them). The same loads, the same bits.
  const bool first_early = PRE && tid < nq;
  if constexpr (PRE) {
    if (first_early) early_copy<STREAM>(early_slots<R>() + threadIdx.x, in + E * (nq - 1 - tid));
  }
  pdl_enter();
  const CommitScale cs = commit_scale(p.scal[p.slot], p.sigma, p.norm_bound, p.gamma);
  auto scale = [&](float x) { return cs.apply(x); };
  auto divide_store = [&](int64_t q, R r) {
    float x[E];
    V::cvt(r, x);
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = scale(x[e]);
    if constexpr (STREAM) store_streaming(out + E * q, V::pack(x));
    else V::store(out + E * q, x);
  };
  if constexpr (PRE) {
    if (first_early) {
      early_wait();  // this thread's own copy: no barrier needed
      divide_store(nq - 1 - tid, early_slots<R>()[threadIdx.x]);
    }
  }

  if (cs.good && p.what == Commit::kVectors) {
    const float m_t = p.scal[SN_SCAL_M_T], m_s = p.scal[SN_SCAL_M_S];
    for (int64_t i = tid; i < p.h; i += stride) p.u[i] = p.t[i] / m_t;
    for (int64_t j = tid; j < p.w; j += stride) p.v[j] = p.s[j] / m_s;
  } else if (cs.good && p.what == Commit::kOneD) {
    for (int64_t i = tid; i < p.h; i += stride) p.u[i] = p.t[i] / cs.sig_new;
    if (tid == 0) p.v[0] = 1.f;
  }
  // Only an iterated forward asks for (or reports) a restart from ones: a 1-D weight has none.
  if (tid == 0) commit_state_word(p.sigma, cs, p.what == Commit::kVectors);
  if (!out) return;
  // Elements after the last whole pack first (all of them without WIDE), then the packs, last
  // first (see the top of the file).
  for (int64_t j = nq * E + tid; j < p.n; j += stride) out[j] = from_f<T>(scale(to_f(in[j])));
  // W_sn may be W itself, so the compiler keeps each load after the previous store: a thread has
  // one load in flight.
  // This thread's packs, counted from the end of W (the first one done above under PRE).
  for (int64_t k = PRE ? tid + stride : tid; k < nq; k += stride)
    divide_store(nq - 1 - k, load(nq - 1 - k));
}

}  // namespace

cudaError_t launch_commit_divide(const sn_cuda_plan_t &plan, const sn_cuda_forward_args_t &a,
                                 int sigma_slot, Commit what, cudaStream_t stream) {
  CommitParams p{a.W, a.W_sn, a.numel, a.u, a.v, a.sigma, plan.t, plan.s, plan.scal,
                 plan.view.h, plan.view.A * plan.view.B, sigma_slot, what,
                 plan.norm_bound, plan.gamma};
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    const bool wide = a.W_sn && aligned16(a.W) && aligned16(a.W_sn);
    // Without W_sn there is only u, v and σ to commit: blocks for max(h, w) threads.
    const int64_t hw = plan.view.h > p.w ? plan.view.h : p.w;
    const int64_t small = (hw + kBlock - 1) / kBlock;
    const int blocks = a.W_sn || small >= plan.div_blocks ? plan.div_blocks : (int)small;
    void (*kernel)(CommitParams) = commit_divide_kernel<false, T>;
    if (wide && plan.div_prefetch)
      kernel = plan.div_stream ? commit_divide_kernel<true, T, true, true>
                               : commit_divide_kernel<true, T, false, true>;
    else if (wide)
      kernel = plan.div_stream ? commit_divide_kernel<true, T, true> : commit_divide_kernel<true, T, false>;
    return launch(plan.pdl, kernel, blocks, kBlock, 0, stream, p);
  };
  return SN_DISPATCH_DTYPE(plan.dtype, run);
}

}  // namespace sn
