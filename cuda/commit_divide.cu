// The last launch of every forward: commit the new u, v and σ when σ is usable, then
// W_sn = W / σ. Work mapping: a grid-stride loop over W in 16-byte vectors when W and W_sn are
// 16-byte aligned (scalars otherwise), 64-bit indices. Bytes: numel·4 read + numel·4 written,
// plus (h + w)·8 when u and v are committed.
#include "kernels.h"
#include "sn_device.cuh"

namespace sn {
namespace {

struct CommitParams {
  const float *W;
  float *W_sn;
  int64_t n;
  float *u, *v, *sigma;
  const float *t, *s, *scal;
  int64_t h, w;
  int slot;
  bool commit_uv;
};

__device__ __forceinline__ float divide(float x, float sigma) {
  return sigma > 0.f ? x / sigma : x * 0.f;
}

template <bool V4>
__global__ void __launch_bounds__(kBlock) commit_divide_kernel(CommitParams p) {
  const float sig_new = p.scal[p.slot];
  const bool good = isfinite(sig_new) && sig_new > 0.f;
  // When σ is not usable nothing below writes p.sigma, so every block reads the same old value.
  const float sig = good ? sig_new : p.sigma[0];
  const int64_t tid = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * kBlock;

  if (good) {
    if (p.commit_uv) {
      const float m_t = p.scal[SN_SCAL_M_T], m_s = p.scal[SN_SCAL_M_S];
      for (int64_t i = tid; i < p.h; i += stride) p.u[i] = p.t[i] / m_t;
      for (int64_t j = tid; j < p.w; j += stride) p.v[j] = p.s[j] / m_s;
    }
    if (tid == 0) {
      p.sigma[0] = sig_new;
      p.sigma[1] = 1.0f / sig_new;
    }
  }
  if (!p.W_sn) return;
  int64_t k0 = 0;
  if (V4) {
    const float4 *in = reinterpret_cast<const float4 *>(p.W);
    float4 *out = reinterpret_cast<float4 *>(p.W_sn);
    const int64_t n4 = p.n / 4;
    for (int64_t k = tid; k < n4; k += stride) {
      float4 x = in[k];
      x.x = divide(x.x, sig);
      x.y = divide(x.y, sig);
      x.z = divide(x.z, sig);
      x.w = divide(x.w, sig);
      out[k] = x;
    }
    k0 = n4 * 4;
  }
  for (int64_t k = k0 + tid; k < p.n; k += stride) p.W_sn[k] = divide(p.W[k], sig);
}

}  // namespace

cudaError_t launch_commit_divide(const sn_cuda_plan_t &plan, const sn_cuda_forward_args_t &a,
                                 int sigma_slot, bool commit_uv, cudaStream_t stream) {
  CommitParams p{a.W, a.W_sn, a.numel, a.u, a.v, a.sigma, plan.t, plan.s, plan.scal,
                 plan.view.h, plan.view.A * plan.view.B, sigma_slot, commit_uv};
  const bool v4 = a.W_sn && ((reinterpret_cast<uintptr_t>(a.W) | reinterpret_cast<uintptr_t>(a.W_sn)) & 15u) == 0;
  if (v4)
    commit_divide_kernel<true><<<plan.div_blocks, kBlock, 0, stream>>>(p);
  else
    commit_divide_kernel<false><<<plan.div_blocks, kBlock, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sn
