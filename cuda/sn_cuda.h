/* Launch plans and launchers of specnorm's CUDA kernels (C linkage), called from host/.
 * Internal (not installed). */
#ifndef SN_CUDA_H
#define SN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "specnorm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The matrix view of a contiguous weight: W as [A][h][B], M[i, a·B + b] = W[(a·h + i)·B + b]. */
typedef struct {
  int64_t A, h, B;
} sn_view_t;

/* Internal health bit: the next training forward starts from the all-ones vector. */
#define SN_HEALTH_RESTART 0x80000000u
#define SN_HEALTH_PUBLIC SN_HEALTH_ALL

#ifdef __CUDACC__
#define SN_HD __host__ __device__
#else
#define SN_HD
#endif

/* Whether a new σ may be committed (both backends): finite and at least the smallest normal
 * float, so that 1/σ and the scale are finite too. */
static inline SN_HD int sn_sigma_usable(float sig) {
  return sig - sig == 0.0f /* false for NaN and ±inf */ && sig >= 1.17549435e-38f /* FLT_MIN */;
}

/* The health word after a forward whose new σ is `sig`, with γ bound `gamma` (1 without one) and
 * the scale it committed (shared by both backends). A zero (or subnormal) σ in a training forward
 * asks the next one to restart from ones; a usable σ clears that request, and marks the recovery
 * if this forward was such a restart. A non-finite γ or scale is recorded whatever σ is (W_sn is
 * then not finite either). */
static inline SN_HD unsigned sn_health_after(unsigned h, float sig, int training, float gamma,
                                             float scale) {
  if (!(gamma - gamma == 0.0f) || !(scale - scale == 0.0f)) h |= (unsigned)SN_HEALTH_SCALE;
  const int restarted = training && (h & SN_HEALTH_RESTART);
  if (sn_sigma_usable(sig)) return (h & ~SN_HEALTH_RESTART) | (restarted ? (unsigned)SN_HEALTH_RECOVERED : 0u);
  if (!(sig - sig == 0.0f)) return h | (unsigned)SN_HEALTH_NONFINITE;
  if (sig >= 0.0f) return h | (unsigned)SN_HEALTH_ZERO | (training ? SN_HEALTH_RESTART : 0u);
  return h | (unsigned)SN_HEALTH_NEGATIVE;
}

/* A forward that holds every layer on chip in one launch (cuda/on_chip.cu): each layer in the
 * shared memory of one cluster of `cluster` blocks. */
typedef struct {
  int cluster;            /* > 0: blocks per cluster (1, 2, 4, 8); 0: not on chip */
  int threads;            /* per block of the forward: 256 or 512 (sn_cuda_on_chip_threads) */
  int modes;              /* a single layer: the forwards that run on chip (SN_ON_CHIP_*; a
                             group: every one) */
  int clusters;           /* 1: launched as thread-block clusters (sm_90); 0: plain blocks (cluster 1) */
  int w_bytes, w4, rows4; /* the shared-memory layout of every block */
  int backward;           /* a single layer: its backward runs on chip too (cuda/on_chip.cu; with grid,
                             cuda/on_chip_grid.cu) */
  int refuse;             /* tests: launch clusters of 16 blocks, which the device refuses
                             (SPECNORM_TUNE=onchip_refuse=1; sn_forward, sn_backward and
                             sn_group_forward fall back); with grid, that many times too many
                             blocks for a cooperative launch */
  int grid;               /* > 0: a single layer spread over a cooperative grid of this many blocks,
                             one per SM (cuda/on_chip_grid.cu, SPECNORM_TUNE=op_onchip_grid=1 or 2,
                             or by default: kGridVFirstMinElems, cuda/forward.cu);
                             cluster is then 1 and clusters 0; backward 1 where its backward fits
                             the grid too (the layer's backward with ⟨G, W⟩ to compute: one launch) */
  int transposed;         /* grid: a v-first layer whose Mᵀ has rows contiguous (view B = 1, dim −1:
                             Keras', Flax's and Haiku's kernels; or a single row or column), run as
                             the u-first iteration on its Mᵀ with u and v exchanged, as a group runs
                             it (sn_on_grid_view) */
  int smem_rows;          /* grid: the rows a block holds in shared memory at most */
  int reg_rows;           /* grid: how many of a block's rows, beyond smem_rows, it holds in
                             registers (0: none). With any, the layer runs on the grid only where W
                             and W_sn are 16-byte aligned (sn_cuda_forward_on_chip) */
  int stream_rows;        /* grid: how many of a block's rows, beyond smem_rows, it reads from global
                             memory in each iteration and again for the division (the streaming
                             instance: rows too many for the registers or too wide for them; 0:
                             none). With any, the layer runs on the grid only where W and W_sn are
                             16-byte aligned, and its backward keeps its kernels */
  int packed;             /* grid: rows of whole 16-byte packs, at most one per thread, of at least
                             256 elements or with rows in registers, and no rows streamed: the
                             forwards whose W is 16-byte aligned (and W_sn too, with rows in
                             registers) run the packed instance */
} sn_on_chip_t;

/* The forwards of a single layer that run on chip (sn_on_chip_t.modes). */
enum {
  SN_ON_CHIP_TRAIN = 1, /* a training forward that writes W_sn */
  SN_ON_CHIP_SCALE = 2, /* a training forward without W_sn (scale only) */
  SN_ON_CHIP_EVAL = 4,  /* an eval forward */
  SN_ON_CHIP_ALL = 7
};

/* Scalar slots in the plan's scratch `scal` array. */
enum {
  SN_SCAL_M_T = 0,    /* max(‖t‖, eps) of the latest t = M x */
  SN_SCAL_SIG_T = 1,  /* ‖t‖² / max(‖t‖, eps): σ when t is the last product (v-first order) */
  SN_SCAL_M_S = 2,    /* max(‖s‖, eps) of the latest s = Mᵀ y */
  SN_SCAL_SIG_S = 3,  /* ‖s‖² / max(‖s‖, eps): σ of the u-first order */
  SN_SCAL_SIG_DOT = 4,/* uᵀ M v: σ of the eval forward */
  SN_SCAL_SIG_1D = 5, /* max(‖W‖, eps): σ of a 1-D weight */
  SN_SCAL_GW = 6,     /* ⟨G, W⟩ of the backward */
  SN_SCAL_COUNT = 8
};

/* How the kernels of one layer are launched, fixed at creation, and where its scratch lives. */
typedef struct {
  sn_view_t view;
  sn_dtype_t dtype;   /* element type of W, W_sn, G, dW */
  float eps;          /* signed: eps > 0 means N(x) = x / max(‖x‖, eps) (SN_EPS_CLAMP_NORM), eps < 0
                         x / sqrt(‖x‖² − eps) (SN_EPS_ADD_SQUARED of |eps|); host: sn__eps_param,
                         device: norm_divisor (sn_device.cuh), CPU: the reference's eps */
  float norm_bound;   /* c > 0: W_sn = W / max(1, σ / c); 0: W / σ */
  const float *gamma; /* σReparam: W_sn = γ · W / σ with γ read from here each forward; NULL: 1 */
  int sm_count;
  int p1_tb;          /* t = M x: threads per row, a power of two <= 256 */
  int p1_asplit;      /* t = M x: blocks along A, each writing a partial t */
  int p2_tb;          /* s = Mᵀ y: threads along columns, a power of two <= 32 */
  int p2_isplit;      /* s = Mᵀ y: blocks along h, each writing a partial s */
  int64_t p2_tiles;   /* s = Mᵀ y: column tiles */
  int div_blocks;     /* blocks of the commit-and-divide kernel */
  int one_pass;       /* 1: training iterations use the one-pass kernels: by rows for the u-first
                         order (cuda/one_pass.cu), by columns for v-first (cuda/one_pass_cols.cu) */
  int one_pass_cols;  /* 1: the v-first one-pass kernels (then no op_* launch shape is used) */
  int op_threads;     /* one-pass: threads per block (256 or 512) */
  int op_elems;       /* one-pass: elements per access (4, or 8 for 2-byte types) */
  int op_vpt;         /* one-pass: accesses of a row per thread (1, 2, 4 or 8) */
  int op_rows;        /* one-pass rows: rows per step of the rows kernel, 1 or 2
                         (SPECNORM_TUNE=op_rows=2) */
  int op_pp;          /* one-pass rows: the training rows kernel's ring of row buffers, 0 (none:
                         the plain loop), 2 (the ping-pong loop: by default for the 2-byte rows
                         of 512 threads × 4 packs of 8; SPECNORM_TUNE=op_pp=2 for every instance
                         of one row a step) or 3 (op_pp=3, bf16), each only where its blocks per
                         SM equal the plain kernel's */
  int op_reduce_cols; /* one-pass reduce: float4 columns per block, 4, 8 or 16 (by width, or
                         SPECNORM_TUNE=op_reduce_cols) */
  int op_blocks;      /* one-pass: persistent blocks, each writing a partial Mᵀ t */
  int op_eval_blocks; /* one-pass rows: blocks of the eval kernel (the eval instance's own
                         occupancy, or with SPECNORM_TUNE=op_eval_own=0 op_blocks) */
  int op_coop;        /* one-pass rows of 256 threads whose grid fits at once (by default on sm_90
                         and up, or SPECNORM_TUNE=op_coop): 1, each iteration's two kernels as one
                         cooperative launch that also commits a scale-only forward
                         (cuda/one_pass_coop.cu; op_coop_all says in which forwards); 2, tests:
                         that launch refused; 3: as 1, also a programmatic dependent launch (pdl
                         on); 0: none */
  int op_coop_all;    /* 1: op_coop in every forward (SPECNORM_TUNE=op_coop); 0: only in those
                         without W_sn (scale only, warm-up): the default */
  int pdl;            /* 1: launches overlap the kernel boundaries (programmatic dependent launch,
                         sm_90; SPECNORM_TUNE=pdl=1) */
  int op_cluster;     /* one-pass: blocks per thread-block cluster adding their partials on chip
                         (1: none); op_blocks is a multiple of it */
  int bw_stream;      /* 1: the backward's ⟨G, W⟩ loads W as streaming (evict-first) data
                         (SPECNORM_TUNE=bw_stream=1) */
  int bw_grid;        /* > 0: at most this many blocks of the backward's apply kernel by rows
                         (SPECNORM_TUNE=bw_grid=N; 0 by default: a block per row) */
  int div_stream;     /* 1: the division loads W and stores W_sn as streaming (evict-first) data
                         (by W's bytes against the L2, or SPECNORM_TUNE=div_stream=0|1) */
  int div_prefetch;   /* 1: the division copies each thread's first pack of W to shared memory
                         before its PDL wait (SPECNORM_TUNE=div_prefetch=1; off by default) */
  sn_on_chip_t onchip;/* cluster > 0: a warmed-up forward of onchip.modes is one launch with the
                         layer on chip (sn_cuda_layer_on_chip_modes, cuda/on_chip.cu) */
  /* Scratch, inside the layer's one device workspace. */
  float *t;           /* h: t = M x, unnormalized */
  float *s;           /* w: s = Mᵀ y, unnormalized */
  float *part1;       /* p1_asplit × h */
  float *part2;       /* p2_isplit × w */
  float *tile_sq;     /* p2_tiles: Σ s² per column tile */
  float *scal;        /* SN_SCAL_COUNT */
  unsigned *counters; /* 1 (t) + p2_tiles + 1 (s) + 1 (one-pass) + 1 (backward): arrival
                         counters, zero between launches */
  float *op_part;     /* one-pass: (op_blocks / op_cluster) × w partial Mᵀ t */
  float *op_tsq;      /* one-pass: max(op_blocks, op_eval_blocks) partial Σ t² (eval: Σ u_i t_i) */
  float *op_sq;       /* one-pass: Σ s² per reduction block */
  float *oc_ssq;      /* one-pass by columns: Σ s² per panel (op_part holds panels × h partial t,
                         op_tsq Σ t² per reduction block) */
  float *bw_part;     /* backward: div_blocks partial ⟨G, W⟩ */
  float *ocg_part;    /* the layer on chip over a grid (onchip.grid = G > 0): G × w partial s,
                         then G partial Σ t² and G partial Σ s² */
} sn_cuda_plan_t;

/* The backward's arrival counter among the plan's counters (the last; see `counters`). */
static inline unsigned *sn_cuda_backward_counter(const sn_cuda_plan_t *plan) {
  return plan->counters + plan->p2_tiles + 3;
}

/* Whether the one-pass kernels can run this view, order and dtype (see SN_ALGO_ONE_PASS). */
int sn_cuda_one_pass_supported(sn_view_t view, sn_order_t order, sn_dtype_t dtype);

/* Fill `plan` for a view on the current device, which has `sm_count` multiprocessors; with
 * one_pass, also prepare the one-pass kernels (shared-memory limit, occupancy); with on_chip, the
 * on-chip paths where the layer fits (plan.onchip; 0 for a layer that none may take: one that asks
 * for two passes, or a 1-D weight). *workspace_bytes receives the size of the one device allocation
 * it needs (0 on overflow: the caller reports it). Returns a cudaError_t. */
int sn_cuda_plan_init(sn_cuda_plan_t *plan, sn_view_t view, sn_dtype_t dtype, sn_order_t order,
                      float eps, int sm_count, int one_pass, int on_chip, size_t *workspace_bytes);
/* How many of the probes that plans make (the device's attributes, kernels' shared memory and
 * occupancy, clusters, cooperative launches) failed on this thread with an error of the runtime
 * since the last call, which it resets: each time the plan went without what that probe was for
 * (a failure that is only "does not fit" is not counted). */
int sn_cuda_setup_failures_take(void);
/* Point the plan's scratch into `workspace` (device memory of the size above, zero-filled). */
void sn_cuda_plan_bind(sn_cuda_plan_t *plan, void *workspace);

typedef struct {
  const void *W;    /* numel elements of the layer's dtype */
  void *W_sn;       /* numel, may equal W; NULL: no W_sn written (warm-up, scale-only forward) */
  int64_t numel;
  float *u, *v;     /* state, h and w */
  float *sigma;     /* state, {σ, 1/σ, scale, health bits}: W_sn = scale · W (up to rounding) */
  int training;     /* run n_iters updates; else the eval σ = uᵀ M v */
  int warmup_iters; /* updates run first (0 once warmed up) */
  int n_iters;
  sn_order_t order;
  int is_1d;        /* 1-D weight: σ = max(‖W‖, eps), no iteration */
} sn_cuda_forward_args_t;

/* Enqueue one forward on `stream`. Returns a cudaError_t (0 on success). Allocates nothing and
 * does not synchronize. */
int sn_cuda_forward(const sn_cuda_plan_t *plan, const sn_cuda_forward_args_t *args,
                    sn_stream_t stream);
/* Whether that forward is the one launch of the layer on chip (plan->onchip, its modes). */
int sn_cuda_forward_on_chip(const sn_cuda_plan_t *plan, const sn_cuda_forward_args_t *args);
/* The kernels that forward runs (sn_path_t): the choice sn_cuda_forward itself makes. */
sn_path_t sn_cuda_forward_path(const sn_cuda_plan_t *plan, const sn_cuda_forward_args_t *args);
/* Whether launch error e of a forward is the refusal of the plan's cooperative one-pass launch
 * (plan->op_coop; fewer blocks can be resident than the plan's occupancy query said). The refused
 * launch did not run; earlier iterations' launches of the same forward may have, but nothing is
 * committed before the last launch, so running the forward again redoes them all. */
int sn_cuda_one_pass_coop_refused(const sn_cuda_plan_t *plan, int e);

typedef struct {
  const void *W, *G;
  void *dW;
  int64_t numel;
  const float *u, *v, *sigma; /* state of the last forward: u, v, {σ, 1/σ, scale} */
  int accumulate;
  int detach_sigma;
  float *dgamma;              /* NULL: not wanted */
  float clamp_eps;            /* > 0: a 1-D weight's eps clamp; σ <= clamp_eps drops the σ term */
} sn_cuda_backward_args_t;

/* How a layer's backward runs with these buffers (cuda/backward.cu): sn_backward and the grouped
 * backward both take it from here, so that they run the same blocks and give the same bits. */
typedef struct {
  int inner_blocks; /* blocks of ⟨G, W⟩ (the plan's div_blocks) */
  int inner_kind;   /* 0: element by element; 1: 16-byte packs of G and W; 2: the same, W's
                       loaded evict-first (plan.bw_stream) */
  int apply_blocks; /* blocks of dW = a·G − b·u vᵀ */
  int apply_kind;   /* 0: element by element (B < 32); 1: by rows; 2: by rows in 16-byte packs */
} sn_cuda_backward_shape_t;
sn_cuda_backward_shape_t sn_cuda_backward_shape(const sn_cuda_plan_t *plan, const void *W,
                                                const void *G, const void *dW);

/* Enqueue the backward (cuda/backward.cu) on `stream`. Returns a cudaError_t. */
int sn_cuda_backward(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *args,
                     sn_stream_t stream);
/* Whether that backward is the one launch of the layer on chip (op_onchip=1 only). */
int sn_cuda_backward_on_chip(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *args);
/* The kernels that backward runs (sn_path_t): the choice sn_cuda_backward itself makes. */
sn_path_t sn_cuda_backward_path(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *args);

/* One layer of a group (cuda/group.cu), as the grouped kernels see it: they run the u-first
 * iteration on the matrix of the view A × h × B (w = A·B) with the vectors u (h) and v (w); for a
 * v-first layer that is its Mᵀ (sn_group_view) with the layer's v and u. */
typedef struct {
  const void *W;
  void *W_sn;                 /* NULL: scale only */
  int dtype;                  /* sn_dtype_t */
  int n_iters;
  int64_t A, h, B, w, numel;
  float *u, *v, *sigma;       /* the layer's state ({σ, 1/σ, scale, health}) */
  float *t, *s, *part, *tsq, *sq, *scal; /* the group's scratch for this layer */
  unsigned *counter;
  float eps, norm_bound;      /* eps signed as the plan's */
  const float *gamma;
  int row_block0, row_blocks; /* rows kernel: this layer's blocks */
  int warp_k;                 /* rows kernel: 0, a block per row; K > 0, a warp per row, K columns
                                 per lane (w <= 32·K) */
  int red_block0, red_blocks; /* reduce kernel */
  int div_block0, div_blocks; /* commit-and-divide kernel */
} sn_group_entry_t;

/* The view whose u-first iteration a group runs for a layer of view `layer` in `order`: the view
 * itself for u-first; for v-first, a view of Mᵀ, since the v-first iteration on M is the u-first
 * one on Mᵀ with u and v exchanged (v = N(Mᵀ u) is Mᵀ's first product, u = N(M v) its second, σ
 * comes from the same last product, and the restart's ones go to the first product's input, the
 * layer's u). Mᵀ is a view of the same W when A = 1 (M = W, h × B: Mᵀ[i, j] = W[j·B + i], the view
 * h × B × 1 as A × h × B) or B = 1 (dim −1: W holds Mᵀ row-major, the view 1 × (A) × h); returns 0 for a
 * v-first layer with A > 1 and B > 1, whose Mᵀ is no such view. */
static inline SN_HD int sn_group_view(sn_view_t layer, sn_order_t order, sn_view_t *out) {
  if (order != SN_ORDER_V_FIRST) {
    *out = layer;
    return 1;
  }
  if (layer.B == 1) {
    out->A = 1, out->h = layer.A, out->B = layer.h;
    return 1;
  }
  if (layer.A == 1) {
    out->A = layer.h, out->h = layer.B, out->B = 1;
    return 1;
  }
  return 0;
}

/* The matrix a layer on chip over the grid iterates on (cuda/on_chip_grid.cu): the layer's own
 * view, or with onchip.transposed its Mᵀ's (sn_group_view), whose u and v are the layer's v and u.
 * Its rows are contiguous (A = 1) either way. */
static inline SN_HD sn_view_t sn_on_grid_view(const sn_cuda_plan_t *plan) {
  sn_view_t v = plan->view;
  if (plan->onchip.transposed) (void)sn_group_view(plan->view, SN_ORDER_V_FIRST, &v);
  return v;
}

typedef struct {
  int count;
  int max_iters;
  int64_t max_w;      /* the widest layer's w */
  int64_t max_warp_w; /* the widest w of the layers with warp_k > 0 (0: none) */
  int pdl;            /* launches overlap the kernel boundaries (see sn_cuda_plan_t.pdl) */
  int row_total, red_total, div_total;
  int coop_blocks;    /* > 0: the forward is one cooperative launch of this many blocks
                         (sn_cuda_tune_group_coop, cuda/group.cu); 0: three kernels */
  sn_on_chip_t onchip;/* cluster > 0: the forward is one launch with every layer on chip
                         (cuda/on_chip.cu); it takes precedence over coop_blocks */
  const sn_group_entry_t *entries; /* device */
  const int *row_layer, *red_layer, *div_layer; /* device: the layer of each block of the rows,
                                                   reduce and commit kernels */
} sn_cuda_group_t;

/* The rows kernel's warp_k for a layer of w columns: 0 (a block per row) when w is too wide for a
 * warp per row. */
int sn_cuda_group_warp_k(int64_t w);
/* Whether launches on the current device use programmatic dependent launch (SPECNORM_TUNE,
 * cuda/forward.cu). */
int sn_cuda_tune_pdl(void);

/* Blocks of the rows kernel for a layer of h rows on `sm_count` multiprocessors, with a block
 * (warp_k == 0) or a warp (warp_k > 0) per row. */
int sn_cuda_group_row_blocks(int64_t h, int warp_k, int sm_count);
/* Raise the rows kernel's shared-memory limit for a group whose widest layer has max_w columns
 * and whose widest warp-per-row layer has max_warp_w (0: none). With coop_max > 0 (the most
 * blocks of the three steps), also prepare the cooperative kernel: *coop_blocks receives its grid
 * (at most coop_max, as many as can be resident), or 0 where the device has no cooperative
 * launch or its setup fails (not an error: the three kernels run). cudaError_t of the rows
 * kernel's setup. */
int sn_cuda_group_prepare(int64_t max_w, int64_t max_warp_w, int coop_max, int *coop_blocks);
/* Whether a group whose weights take w_bytes runs its forward as one cooperative launch: 0 if not
 * (three kernels), else the most blocks it may have (group_grid=N, or INT_MAX). SPECNORM_TUNE's
 * group_coop=0|1 decides where set; otherwise groups of at most 8 MiB of weights (cuda/forward.cu
 * says why). */
int sn_cuda_tune_group_coop(double w_bytes);
/* The same for a grouped backward (cuda/group_backward.cu), whatever its bytes: group_bw_coop=0|1
 * decides where set, else group_coop=0|1; otherwise 0, two kernels (cuda/forward.cu says why). */
int sn_cuda_tune_group_backward_coop(void);
/* SPECNORM_TUNE's group_grid_force=N (0 if unset): a cooperative grouped forward of exactly N
 * blocks, even more than can be resident, so that tests can have the launch refused. */
int sn_cuda_tune_group_grid_force(void);
/* Whether the current device runs this build's code with thread-block clusters (compute
 * capability 9.0 and up, and code built for it). */
int sn_cuda_clusters_usable(void);
/* SPECNORM_TUNE's group_onchip (0 if unset), group_onchip_cluster (*cluster, 0 if unset) and
 * onchip_refuse (*refuse). */
int sn_cuda_tune_group_onchip(int *cluster, int *refuse);
/* SPECNORM_TUNE's onchip_threads (256 or 512; 0 if unset or bad). */
int sn_cuda_tune_onchip_threads(void);
/* Rows per step of the one-pass rows kernel for a u-first layer of w columns (w % 4 = 0, w <=
 * 16384) of dtype, given SPECNORM_TUNE's op_rows (`asked`, 1 or 2): 2 where asked and a row is at
 * most 16 elements per thread, else 1. */
int sn_cuda_one_pass_rows_per_step(sn_dtype_t dtype, int64_t w, int asked);
/* SPECNORM_TUNE's op_onchip (0 or 1; -1 if unset or bad). */
int sn_cuda_tune_op_onchip(void);
/* Threads per block of the on-chip forward when SPECNORM_TUNE does not say: for a single layer
 * (group = 0) of numel elements, 256 below 64K elements and 512 from there; for a group, 512
 * (cuda/forward.cu says what was measured). */
int sn_cuda_on_chip_threads(int64_t numel, int group);
/* The forwards of a single u-first layer of numel elements that run on chip (SN_ON_CHIP_*), given
 * SPECNORM_TUNE's op_onchip (-1 unset, 0, 1) and whether the device has clusters: op_onchip=1
 * every one, 0 none; unset, with clusters, the training forwards of small layers (cuda/forward.cu
 * says which sizes), else none. */
int sn_cuda_layer_on_chip_modes(int64_t numel, int op_onchip, int clusters);
/* Whether the `count` layers that ent describes (host memory; A, h, w and dtype are read) can all
 * be held on chip in one launch on the current device, and how (cuda/on_chip.cu says which):
 * fills *oc, oc->cluster = 0 when not (also when a device query fails: the other paths need
 * none of this). force_cluster > 0: only that cluster size. prefer_large: the largest cluster
 * that fits (a single layer, whose launch is its cluster alone); else the smallest that brings
 * every block's share of W under 64 KB (a group, whose clusters share the device). */
void sn_cuda_on_chip_prepare(const sn_group_entry_t *ent, int count, int force_cluster, int prefer_large,
                             sn_on_chip_t *oc);
/* A single layer held on chip (*oc from sn_cuda_on_chip_prepare, oc->cluster > 0): let the on-chip
 * backward kernel have the shared memory it needs and set oc->backward, or leave it 0 where the
 * device refuses (SPECNORM_TUNE=op_onchip=1 only: cuda/forward.cu). */
void sn_cuda_on_chip_allow_backward(sn_on_chip_t *oc);
/* Whether launch error e is the refusal of an on-chip launch (its clusters cannot be scheduled
 * now: fewer SMs than at its preparation, the GPU shared under MPS): nothing ran, and the usual
 * kernels can run instead. */
int sn_cuda_on_chip_refused(int e);
/* A single layer's matrix with rows contiguous (view.A = 1: a u-first layer's own, or a v-first
 * layer's Mᵀ, sn_on_grid_view) spread over one block per SM (at most view.h blocks) of a cooperative
 * launch (cuda/on_chip_grid.cu): fills *oc (oc->grid > 0; its training forwards, and with eval its
 * eval forwards too) where the device has cooperative launches and each block's share fits its
 * shared memory and registers, or is streamed (sn_cuda_on_chip_grid_layout), else zeroes it;
 * oc->backward = 1 where its backward kernels fit the same grid too. rows_cap > 0 (tests): at most
 * that many rows per block in shared memory. refuse: tests (oc->refuse). */
void sn_cuda_on_chip_grid_prepare(sn_view_t view, sn_dtype_t dtype, int sm_count, int eval, int rows_cap,
                                  int refuse, sn_on_chip_t *oc);
/* The layout of that launch for an h × w layer of `dtype` over `blocks` blocks with `avail` bytes of
 * dynamic shared memory per block (no device needed): each block holds up to oc->smem_rows of its
 * rows in shared memory (as many as fit beside v, t, u and a float per thread; at most rows_cap > 0)
 * and the rest, at most 7 (oc->reg_rows), in registers, which takes rows of whole 16-byte packs, at
 * most one per thread (oc->packed: such rows, where they are 256 elements or more or some sit in
 * registers); or, where the registers cannot take them, streamed from global memory
 * (oc->stream_rows: rows of whole packs, at most two per thread, with at least a third of the
 * block's rows in shared memory). Fills oc->w_bytes, w4, rows4, smem_rows, reg_rows, stream_rows,
 * packed and returns the dynamic shared memory per block; 0 (and those fields 0) where the layer
 * cannot be laid out so. */
size_t sn_cuda_on_chip_grid_layout(int64_t h, int64_t w, sn_dtype_t dtype, int blocks, size_t avail,
                                   int rows_cap, sn_on_chip_t *oc);
/* Enqueue a grouped forward (every layer warmed up). Returns a cudaError_t. */
int sn_cuda_group_forward(const sn_cuda_group_t *group, int training, sn_stream_t stream);
/* The kernels of a grouped forward (sn_path_t): the choice sn_cuda_group_forward makes. */
sn_path_t sn_cuda_group_forward_path(const sn_cuda_group_t *group);

/* One layer of a grouped backward (cuda/group_backward.cu), as its kernels see it. */
typedef struct {
  const void *W, *G;
  void *dW;
  float *dgamma;              /* NULL: ∂L/∂γ not wanted */
  int dtype;                  /* sn_dtype_t */
  int64_t A, h, B, numel;
  const float *u, *v, *sigma; /* the layer's state */
  const float *gamma;
  float norm_bound;
  float *part, *scal;         /* the layer's own backward scratch (plan.bw_part, plan.scal) */
  unsigned *counter;          /* its arrival counter (sn_cuda_backward_counter) */
  sn_cuda_backward_shape_t shape;
  int inner_block0, apply_block0; /* the layer's first block in each kernel's grid */
} sn_group_bw_entry_t;

typedef struct {
  int count;
  int pdl;
  int inner_total, apply_total;         /* blocks of the two kernels */
  int coop_blocks;                      /* > 0: both steps as one cooperative launch of this many
                                           blocks; 0: two kernels */
  const sn_group_bw_entry_t *entries;   /* device */
  const int *inner_layer, *apply_layer; /* device: the layer of each block of either kernel */
} sn_cuda_group_bw_t;

/* Fill a grouped backward's entry for a layer (its plan and state) and its buffers; the block
 * offsets are left to the caller. */
void sn_cuda_group_backward_entry(const sn_cuda_plan_t *plan, const float *u, const float *v,
                                  const float *sigma, const void *W, const void *G, void *dW,
                                  float *dgamma, sn_group_bw_entry_t *e);
/* The grid of the grouped backward's cooperative launch: *coop_blocks = at most coop_max (0: no
 * cooperative launch), as many as can be resident; 0 where the device has no cooperative launch
 * or a query fails (not an error: the two kernels run). */
void sn_cuda_group_backward_prepare(int coop_max, int *coop_blocks);
/* Enqueue a grouped backward: ⟨G, W⟩ of every layer that needs it (not detached, or ∂L/∂γ wanted)
 * when need_inner, then dW of every layer; one cooperative launch when group->coop_blocks > 0
 * (refused, it returns cudaErrorCooperativeLaunchTooLarge and nothing ran). Returns a
 * cudaError_t. */
int sn_cuda_group_backward(const sn_cuda_group_bw_t *group, int accumulate, int detach,
                           int need_inner, sn_stream_t stream);
/* The kernels of a grouped backward (sn_path_t): the choice sn_cuda_group_backward makes. */
sn_path_t sn_cuda_group_backward_path(const sn_cuda_group_bw_t *group);

#ifdef __cplusplus
}
#endif

#endif
