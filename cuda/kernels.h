// Launchers of specnorm's kernels, one family per .cu file; sequenced by cuda/forward.cu.
#pragma once

#include <cuda_runtime.h>

#include "sn_cuda.h"

namespace sn {

// allow_shared_memory's verdict that a kernel's shared memory does not fit the device: returned as
// an error ("too many resources requested for launch"), though no runtime call failed. No probe's
// runtime call raises it, so sn::forget knows there is nothing to clear.
constexpr cudaError_t kDoesNotFit = cudaErrorLaunchOutOfResources;

// Count a probe's runtime failure on this thread (cuda/forward.cu): the plan being made leaves out
// what the probe was for (sn_cuda_setup_failures_take).
void note_setup_failure();

// After a probe of ours failed with `e`: clears the runtime's last error if it is `e` (the error
// that call raised), so that it is not left pending, but not after a verdict of our own that
// raised none (kDoesNotFit, or `e` not the last error) and so not an error the caller's code left
// pending before. A runtime failure (anything but kDoesNotFit) is counted: the plan does without
// what the probe was for, and the layer or group says so (SN_DROPPED_SETUP).
inline void forget(cudaError_t e) {
  if (e == cudaSuccess || e == kDoesNotFit) return;
  note_setup_failure();
  if (cudaPeekAtLastError() == e) (void)cudaGetLastError();
}

// What the last block of the t = M x kernel does with t.
enum class TMode {
  kNormalize,  // write t (unnormalized), scal[M_T] = max(‖t‖, eps), scal[SIG_T] = ‖t‖²/max(‖t‖, eps)
  kDot,        // scal[SIG_DOT] = Σ u_i t_i (the eval σ); t is not written
  kNorm1D,     // write t, scal[SIG_1D] = max(‖t‖, eps) with x = ones (a 1-D weight's norm)
};

// W's element type is plan.dtype.
// `health`, when not NULL, is the layer's health word: if its SN_HEALTH_RESTART bit is set, the
// input vector is replaced by ones (the deterministic restart after a zero σ).
// t = M x · (1 / *x_div), x NULL meaning ones; u and u_div are used by TMode::kDot.
cudaError_t launch_matvec(const sn_cuda_plan_t &plan, const void *W, const float *x,
                          const float *x_div, TMode mode, const float *u, const float *u_div,
                          const unsigned *health, cudaStream_t stream);

// s = Mᵀ y · (1 / *y_div); the last block writes scal[M_S] and scal[SIG_S].
cudaError_t launch_matvec_t(const sn_cuda_plan_t &plan, const void *W, const float *y,
                            const float *y_div, const unsigned *health, cudaStream_t stream);

// What the commit-and-divide launch stores when σ is usable.
enum class Commit {
  kSigma,     // σ only (eval)
  kVectors,   // σ, u = t / scal[M_T], v = s / scal[M_S] (a training forward)
  kOneD,      // σ, u = t / σ (= W / max(‖W‖, eps)), v = 1: what a 1-D weight's backward uses
};

// Commit the new state if σ = scal[sigma_slot] is finite and > 0, then write W_sn (may be NULL).
cudaError_t launch_commit_divide(const sn_cuda_plan_t &plan, const sn_cuda_forward_args_t &args,
                                 int sigma_slot, Commit what, cudaStream_t stream);

// One-pass iteration (cuda/one_pass.cu): t = M (x / *x_div) and s = Mᵀ t / max(‖t‖, eps) with one
// read of W, writing the same scratch and scalars as launch_matvec + launch_matvec_t. 2 launches,
// or 1 when `coop` (plan.op_coop set; cuda/one_pass_coop.cu), which also commits u, v and σ as
// the commit kernel would when `commit` (the forward's arguments) is not NULL: then *committed is
// set, and the forward launches no commit. A refused cooperative launch (one_pass_coop_refused; it
// did not run) is returned as cudaErrorCooperativeLaunchTooLarge, whatever the device said.
cudaError_t launch_one_pass(const sn_cuda_plan_t &plan, const void *W, const float *x,
                            const float *x_div, const unsigned *health,
                            const sn_cuda_forward_args_t *commit, bool coop, bool *committed,
                            cudaStream_t stream);
// The cooperative launch itself (plan.op_coop; the same contract).
cudaError_t launch_one_pass_coop(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const unsigned *health,
                                 const sn_cuda_forward_args_t *commit, cudaStream_t stream);
// Whether launch error e is the device refusing the cooperative launch (nothing ran).
bool one_pass_coop_refused(cudaError_t e);
// Whether the plan's one-pass grid (op_blocks in clusters of op_cluster, one row a step) can run
// as one cooperative launch: the device has them and every block fits at once (*fits). Raises the
// cooperative kernel's shared-memory limit.
cudaError_t one_pass_coop_prepare(const sn_cuda_plan_t &plan, bool *fits);
// The eval σ = uᵀ M v (u / *u_div, v = x / *x_div) with the one-pass rows kernel: 1 launch,
// writes scal[SIG_DOT].
cudaError_t launch_one_pass_eval(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const float *u, const float *u_div,
                                 cudaStream_t stream);
// Elements per access of the one-pass kernels for rows of w elements of `dtype`: 8 (16 bytes)
// for the 2-byte types when w % 8 = 0, else 4.
int one_pass_elems(sn_dtype_t dtype, int64_t w);
// Blocks of the one-pass reduction for rows of w4 float4, `cols` of them per block (4, 8, 16;
// each block writes one Σ s² partial).
int64_t one_pass_reduce_blocks(int64_t w4, int cols);
// Threads per block and packs per thread for rows of wp packs.
void one_pass_shape(int wp, int *threads, int *vpt);
// Elements of a row per thread (packs per thread × elements per pack) up to which the one-pass
// rows kernel has instances of two rows per step (SPECNORM_TUNE=op_rows=2; cuda/one_pass.cu).
constexpr int kOnePassPairMaxElems = 16;
// Rows per step of the rows kernel for rows of vpt packs of elems per thread, given SPECNORM_TUNE's
// op_rows (`asked`): 2 where asked and such an instance exists, else 1.
inline int one_pass_rows_per_step(int vpt, int elems, int asked) {
  return asked == 2 && vpt * elems <= kOnePassPairMaxElems ? 2 : 1;
}
// Raise the rows kernel's shared-memory limit (the instance plan.op_rows gives) and report its
// blocks per multiprocessor (training, and eval without clusters) and, for cluster > 1, how many
// clusters of that many blocks fit on the device at once.
// pp_asked (SPECNORM_TUNE's op_pp: 0 never, 1 the ring of two where it is the default, 2 the ring of
// two wherever built, 3 the ring of three wherever built and elsewhere as 1) asks for a ring
// training kernel (cuda/one_pass.cuh); *pp says which ring the instance takes (0 none, 2 or 3: only
// where its blocks per multiprocessor equal the plain kernel's), and the occupancy is that kernel's.
cudaError_t one_pass_prepare(const sn_cuda_plan_t &plan, int cluster, int pp_asked, int *pp,
                             int *blocks_per_sm, int *max_clusters, int *eval_per_sm);

// A forward with every layer on chip, one launch (cuda/on_chip.cu; oc.cluster > 0): the `count`
// layers of the device table `entries`, or (entries NULL, count 1) the layer `one`, passed by value.
cudaError_t launch_on_chip(const sn_on_chip_t &oc, const sn_group_entry_t *entries,
                           const sn_group_entry_t *one, int count, bool pdl, bool training,
                           cudaStream_t stream);
// A single layer's forward (training, or the eval σ) with the layer spread over a cooperative
// grid, one launch (cuda/on_chip_grid.cu; plan.onchip.grid > 0): the layer `e`, passed by value.
cudaError_t launch_on_chip_grid(const sn_cuda_plan_t &plan, const sn_group_entry_t &e, bool training,
                                cudaStream_t stream);
// A single layer's backward with the layer on the grid, one launch (cuda/on_chip_grid.cu;
// plan.onchip.grid > 0 and backward), and the instance it takes for these buffers: 1 packed, 0
// generic, -1 none (the layout holds rows in registers, which only the packed instance serves:
// such a call runs the usual kernels).
int grid_backward_instance(const sn_cuda_plan_t &plan, const void *W, const void *G, const void *dW);
cudaError_t launch_on_chip_grid_backward(const sn_cuda_plan_t &plan, const sn_cuda_backward_args_t &a,
                                         cudaStream_t stream);
// A single layer's backward with the layer in a cluster, one launch (plan.onchip.backward).
cudaError_t launch_on_chip_backward(const sn_cuda_plan_t &plan, const sn_cuda_backward_args_t &a,
                                    cudaStream_t stream);
// Whether thread-block clusters may be used: the device has them and the loaded code was built for
// sm_90 or later (cuda/forward.cu).
bool clusters_usable();

// One-pass iteration of the v-first order, by column panels (cuda/one_pass_cols.cu):
// s = Mᵀ (x / *x_div) and t = M s / max(‖s‖, eps) with one read of W, writing plan.s, plan.t and
// scal[M_S], scal[M_T], scal[SIG_T] as launch_matvec_t + launch_matvec would. 2 launches.
cudaError_t launch_one_pass_cols(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const unsigned *health, cudaStream_t stream);
// Whether h rows of `dtype` fit the column kernel's shared-memory panel.
int one_pass_cols_fits(int64_t h, sn_dtype_t dtype);
// Panels (blocks of the first kernel) for w columns, and blocks of the reduction for h rows.
int64_t one_pass_cols_panels(int64_t w);
int64_t one_pass_cols_reduce_blocks(int64_t h);
// Raise the panel kernel's shared-memory limit for the plan's h and dtype.
cudaError_t one_pass_cols_prepare(const sn_cuda_plan_t &plan);

}  // namespace sn
