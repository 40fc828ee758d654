/* Groups: a fixed list of layers normalized by one call (cuda/group.cu on the GPU; on the CPU
 * backend, the layers' own forwards, the small ones spread over threads (host/cpu_backend.c), which
 * is the grouped call's reference). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "sn_internal.h"
#include "sn_reference.h"

/* Free device memory of the group's device (NULL: nothing). */
static void free_device(const sn_group_t *g, void *p) { sn__free_on_device(g->device, p); }

/* The backward's bindings: the host arrays (the device tables are freed by the caller). */
static void free_gradients(const void **G, void **dW, float **dgamma) {
  free((void *)G);
  free(dW);
  free(dgamma);
}

static void free_group(sn_group_t *g) {
  free_device(g, g->workspace);
  free_device(g, g->bw_workspace);
  free_gradients(g->G, g->dW, g->dgamma);
  free(g->layers);
  free(g->W);
  free(g->W_sn);
  free(g->gamma);
  free(g);
}

SN_API void sn_group_destroy(sn_group_t *group) {
  if (group) free_group(group);
}

/* Member k's W and W_sn (NULL: none) in its backend's memory, named W[k] and W_sn[k]. */
static sn_status_t check_member_memory(const sn_layer_t *l, const void *W, const void *W_sn, int k) {
  char name[2][32];
  snprintf(name[0], sizeof name[0], "W[%d]", k);
  snprintf(name[1], sizeof name[1], "W_sn[%d]", k);
  sn_status_t st = sn__check_weight_pointer(l, W, name[0]);
  return st == SN_SUCCESS && W_sn ? sn__check_weight_pointer(l, W_sn, name[1]) : st;
}

/* Check that every layer can join a group, on either backend (the same rules, so that a group
 * built on the CPU also builds on a GPU): >= 2-D; v-first only with A = 1 or B = 1 (dim 0 or −1:
 * sn_group_view); at most 16384 columns of the matrix the group iterates on (a v-first layer's
 * rows); W_sn[k] is W[k] or does not overlap it, and overlaps no other member's W or W_sn (the
 * grouped kernels write one layer's W_sn while reading the others' W). */
static sn_status_t check_members(sn_layer_t *const *layers, const void *const *W,
                                 void *const *W_sn, int count) {
  for (int k = 0; k < count; ++k) {
    const sn_layer_t *l = layers[k];
    if (!l) return sn__fail(SN_ERROR_NULL_POINTER, "layers[%d] is NULL", k);
    if (!W[k]) return sn__fail(SN_ERROR_NULL_POINTER, "W[%d] is NULL", k);
    if (l->desc.backend != layers[0]->desc.backend)
      return sn__fail(SN_ERROR_INVALID_BACKEND, "layers[%d] has another backend than layers[0]", k);
    if (l->desc.backend == SN_BACKEND_CUDA && l->desc.device != layers[0]->desc.device)
      return sn__fail(SN_ERROR_INVALID_DEVICE, "layers[%d] is on device %d, layers[0] on device %d", k,
                      l->desc.device, layers[0]->desc.device);
    for (int j = 0; j < k; ++j)
      if (layers[j] == l)
        return sn__fail(SN_ERROR_INVALID_VALUE, "layers[%d] and layers[%d] are the same layer", j, k);
    if (l->is_1d)
      return sn__fail(SN_ERROR_NOT_SUPPORTED,
                      "layers[%d] is a 1-D weight (normalized exactly): call sn_forward on it", k);
    sn_view_t ev;
    if (!sn_group_view(l->view, l->desc.order, &ev))
      return sn__fail(SN_ERROR_NOT_SUPPORTED,
                      "layers[%d] is v-first with its dim inside the weight (a view of A = %lld, "
                      "B = %lld: neither dim 0 nor the last one); groups take v-first layers of "
                      "dim 0 or -1: call sn_forward on it",
                      k, (long long)l->view.A, (long long)l->view.B);
    if (ev.A * ev.B > 16384)
      return sn__fail(SN_ERROR_NOT_SUPPORTED,
                      "layers[%d]: the group would iterate on %lld > 16384 columns (its w; its h "
                      "for a v-first layer, whose columns a group takes as rows); call sn_forward "
                      "on it",
                      k, (long long)(ev.A * ev.B));
    char name[2][32];
    snprintf(name[0], sizeof name[0], "W[%d]", k);
    snprintf(name[1], sizeof name[1], "W_sn[%d]", k);
    const void *out = W_sn ? W_sn[k] : NULL;
    sn_status_t st = out ? sn__check_overlap(l, out, name[1], W[k], name[0]) : SN_SUCCESS;
    if (st != SN_SUCCESS) return st;
    const size_t bytes = sn__weight_bytes(l);
    for (int j = 0; out && j < count; ++j) {
      if (!layers[j]) continue;
      /* Every member's γ (sn_layer_set_gamma), its own too, is read while the W_sn are written. */
      const float *gj = layers[j]->plan.gamma;
      if (gj && sn__overlap(gj, sizeof(float), out, bytes))
        return sn__fail(SN_ERROR_INVALID_VALUE,
                        "layers[%d]'s gamma (%p) lies inside W_sn[%d] (%p): the group writes the "
                        "layers' W_sn while it reads their gamma",
                        j, (const void *)gj, k, out);
      if (j == k) continue;
      const size_t nj = sn__weight_bytes(layers[j]);
      if ((W[j] && sn__overlap(out, bytes, W[j], nj)) || (W_sn[j] && sn__overlap(out, bytes, W_sn[j], nj)))
        return sn__fail(SN_ERROR_INVALID_VALUE,
                        "W_sn[%d] (%p) overlaps the W or W_sn of layers[%d]: the group writes one "
                        "layer's W_sn while it reads the others' W",
                        k, out, j);
    }
    /* The buffers in the backend's memory, checked here (and again before a forward's warm-ups,
     * sn_group_forward), so that a grouped forward cannot fail on them halfway through its
     * layers. */
    st = check_member_memory(l, W[k], out, k);
    if (st != SN_SUCCESS) return st;
  }
  return SN_SUCCESS;
}

static size_t pad64(int64_t floats) { return (size_t)((floats + 63) / 64 * 64); }

/* Lay out the CUDA group's scratch and tables, allocate and upload them. */
static sn_status_t create_cuda_group(sn_group_t *g) {
  int sm = 0;
  cudaError_t e = cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, g->device);
  if (e != cudaSuccess) return sn__cuda_fail((int)e, "cudaDeviceGetAttribute(multiprocessor count)");
  sn_group_entry_t *ent = calloc((size_t)g->count, sizeof *ent);
  if (!ent) return sn__fail(SN_ERROR_ALLOCATION, "host memory for a group of %d layers", g->count);
  /* Sizes first (offsets in floats from the start of the scratch area). */
  size_t floats = 0;
  int rows = 0, red = 0, div = 0, max_iters = 1;
  int64_t max_w = 1, max_warp_w = 0;
  int widest = 0; /* the member of max_w */
  double w_bytes = 0; /* the weights' bytes: whether the forward is one cooperative launch */
  for (int k = 0; k < g->count; ++k) {
    const sn_layer_t *l = g->layers[k];
    sn_group_entry_t *x = &ent[k];
    /* A v-first layer as the u-first iteration on its Mᵀ (sn_group_view; check_members). */
    const int tr = l->desc.order == SN_ORDER_V_FIRST;
    sn_view_t ev = l->view;
    (void)sn_group_view(l->view, l->desc.order, &ev);
    const int64_t h = ev.h, w = ev.A * ev.B;
    x->W = g->W[k];
    x->W_sn = g->W_sn[k];
    x->dtype = (int)l->desc.dtype;
    x->n_iters = l->desc.n_power_iterations;
    x->A = ev.A;
    x->h = h;
    x->B = ev.B;
    x->w = w;
    x->numel = l->numel;
    x->u = tr ? l->v : l->u;
    x->v = tr ? l->u : l->v;
    x->sigma = l->sigma;
    x->eps = sn__eps_param(&l->desc);
    x->norm_bound = l->desc.norm_bound;
    x->gamma = l->plan.gamma;
    x->row_block0 = rows;
    x->warp_k = sn_cuda_group_warp_k(w);
    x->row_blocks = sn_cuda_group_row_blocks(h, x->warp_k, sm);
    x->red_block0 = red;
    x->red_blocks = (int)((w + 255) / 256);
    x->div_block0 = div;
    const int64_t nb = (l->numel + 4095) / 4096;
    /* Without W_sn only block 0 works (it commits u, v and σ): one block. */
    x->div_blocks = !x->W_sn ? 1 : (int)(nb < 1 ? 1 : (nb > 16LL * sm ? 16LL * sm : nb));
    rows += x->row_blocks;
    red += x->red_blocks;
    div += x->div_blocks;
    if (x->n_iters > max_iters) max_iters = x->n_iters;
    w_bytes += (double)l->numel * (double)sn_dtype_size(l->desc.dtype);
    if (w > max_w) {
      max_w = w;
      widest = k;
    }
    if (x->warp_k > 0 && w > max_warp_w) max_warp_w = w;
    /* t, s, part, tsq, sq, scal, counter (as floats) */
    floats += pad64(h) + pad64(w) + pad64((int64_t)x->row_blocks * w) + pad64(x->row_blocks) +
              pad64(x->red_blocks) + pad64(SN_SCAL_COUNT) + pad64(1);
  }
  /* Each kernel's block -> layer table: a block finds its layer with one load. */
  const size_t blocks = (size_t)rows + (size_t)red + (size_t)div;
  int *layer_of = malloc(blocks * sizeof *layer_of);
  if (!layer_of) {
    free(ent);
    return sn__fail(SN_ERROR_ALLOCATION, "host memory for a group of %d layers", g->count);
  }
  for (int k = 0; k < g->count; ++k) {
    for (int b = 0; b < ent[k].row_blocks; ++b) layer_of[ent[k].row_block0 + b] = k;
    for (int b = 0; b < ent[k].red_blocks; ++b) layer_of[rows + ent[k].red_block0 + b] = k;
    for (int b = 0; b < ent[k].div_blocks; ++b) layer_of[rows + red + ent[k].div_block0 + b] = k;
  }
  const size_t table = (size_t)g->count * sizeof *ent, lut_bytes = blocks * sizeof(int);
  const size_t bytes = floats * 4 + table + lut_bytes + 256;
  sn_status_t st = SN_SUCCESS;
  e = cudaMalloc(&g->workspace, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    g->workspace = NULL;
    st = sn__fail(SN_ERROR_ALLOCATION, "cudaMalloc of %zu bytes for the group's scratch: %s", bytes,
                  cudaGetErrorString(e));
  }
  if (st == SN_SUCCESS) {
    float *p = g->workspace;
    for (int k = 0; k < g->count; ++k) {
      sn_group_entry_t *x = &ent[k];
      x->t = p, p += pad64(x->h);
      x->s = p, p += pad64(x->w);
      x->part = p, p += pad64((int64_t)x->row_blocks * x->w);
      x->tsq = p, p += pad64(x->row_blocks);
      x->sq = p, p += pad64(x->red_blocks);
      x->scal = p, p += pad64(SN_SCAL_COUNT);
      x->counter = (unsigned *)p, p += pad64(1);
    }
    char *tab = (char *)g->workspace + floats * 4;
    e = cudaMemset(g->workspace, 0, floats * 4);
    if (e == cudaSuccess) e = cudaMemcpy(tab, ent, table, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(tab + table, layer_of, lut_bytes, cudaMemcpyHostToDevice);
    /* The memset is asynchronous and a copy from pageable memory may return before its DMA ends:
     * wait for both (legacy stream), so that a first call on any stream, a non-blocking one
     * included, reads the tables and zeroed counters (sn_group_create blocks). */
    if (e == cudaSuccess) e = cudaStreamSynchronize(0);
    int coop_blocks = 0;
    const int most = rows > red ? (rows > div ? rows : div) : (red > div ? red : div);
    const int coop_cap = sn_cuda_tune_group_coop(w_bytes); /* 0: three kernels */
    if (e == cudaSuccess)
      e = (cudaError_t)sn_cuda_group_prepare(max_w, max_warp_w, most < coop_cap ? most : coop_cap,
                                             &coop_blocks);
    if (e == cudaErrorLaunchOutOfResources) {
      /* The rows kernel's shared memory (v and s of the widest member) is more than the device
       * gives a block: 2 · 4 · w bytes, beyond sm_86's and sm_89's 99 KB from ~12,600 columns.
       * The plan's own verdict, which no runtime call raised: nothing to clear. */
      st = sn__fail(SN_ERROR_NOT_SUPPORTED,
                    "layers[%d]: the group keeps v and s of its %lld columns (for a v-first layer, "
                    "rows) in a block's shared memory, more than device %d allows a block; call "
                    "sn_forward on it",
                    widest, (long long)max_w, g->device);
    } else if (e != cudaSuccess) {
      st = sn__cuda_fail((int)e, "setting up the group's tables");
    } else {
      sn_cuda_group_t *c = &g->cuda;
      c->count = g->count;
      c->max_iters = max_iters;
      c->max_w = max_w;
      c->pdl = sn_cuda_tune_pdl();
      c->max_warp_w = max_warp_w;
      c->row_total = rows;
      c->red_total = red;
      c->div_total = div;
      c->coop_blocks = coop_blocks;
      const int force = sn_cuda_tune_group_grid_force(); /* tests: a launch that is refused */
      if (coop_blocks > 0 && force > 0) c->coop_blocks = force;
      c->entries = (const sn_group_entry_t *)tab;
      c->row_layer = (const int *)(tab + table);
      c->red_layer = c->row_layer + rows;
      c->div_layer = c->red_layer + red;
      /* Every layer on chip in one launch, where they all fit (SPECNORM_TUNE=group_onchip=1). */
      int onchip_cluster = 0, refuse = 0;
      if (sn_cuda_tune_group_onchip(&onchip_cluster, &refuse)) { /* refuse: onchip_refuse (tests) */
        sn_cuda_on_chip_prepare(ent, g->count, onchip_cluster, 0, &c->onchip);
        c->onchip.refuse = refuse && c->onchip.clusters; /* tests: the refused launch */
      }
    }
  }
  free(ent);
  free(layer_of);
  return st;
}

SN_API sn_status_t sn_group_create(sn_group_t **group, sn_layer_t *const *layers,
                                   const void *const *W, void *const *W_sn, int count) {
  if (!group) return sn__fail(SN_ERROR_NULL_POINTER, "group (the output pointer) is NULL");
  *group = NULL;
  if (!layers) return sn__fail(SN_ERROR_NULL_POINTER, "layers is NULL");
  if (!W) return sn__fail(SN_ERROR_NULL_POINTER, "W is NULL");
  if (count < 1) return sn__fail(SN_ERROR_INVALID_VALUE, "count = %d must be >= 1", count);
  sn_status_t st = check_members(layers, W, W_sn, count);
  if (st != SN_SUCCESS) return st;

  sn_group_t *g = calloc(1, sizeof *g);
  if (!g) return sn__fail(SN_ERROR_ALLOCATION, "host memory for the group");
  g->count = count;
  g->backend = layers[0]->desc.backend;
  g->device = layers[0]->desc.device;
  g->layers = malloc((size_t)count * sizeof *g->layers);
  g->W = malloc((size_t)count * sizeof *g->W);
  g->W_sn = calloc((size_t)count, sizeof *g->W_sn);
  g->gamma = malloc((size_t)count * sizeof *g->gamma);
  if (!g->layers || !g->W || !g->W_sn || !g->gamma) {
    free_group(g);
    return sn__fail(SN_ERROR_ALLOCATION, "host memory for a group of %d layers", count);
  }
  for (int k = 0; k < count; ++k) {
    g->layers[k] = layers[k];
    g->W[k] = W[k];
    g->W_sn[k] = W_sn ? W_sn[k] : NULL;
    g->gamma[k] = layers[k]->plan.gamma;
  }
  if (g->backend == SN_BACKEND_CUDA) {
    int prev = 0;
    st = sn__enter_device(g->device, &prev);
    if (st == SN_SUCCESS) {
      (void)sn_cuda_setup_failures_take(); /* this creation's alone */
      st = create_cuda_group(g);
      g->setup_failed = sn_cuda_setup_failures_take() > 0;
      if (g->setup_failed) g->paths.dropped |= SN_DROPPED_SETUP;
      sn__leave_device(g->device, prev);
    }
    if (st != SN_SUCCESS) {
      free_group(g);
      return st;
    }
  }
  *group = g;
  return SN_SUCCESS;
}

/* Whether launch error e is the refusal of the group's single launch: the on-chip one (its
 * clusters cannot be scheduled) or the cooperative one (too many blocks to be resident). */
static int refused_single_launch(const sn_cuda_group_t *c, int e) {
  if (c->onchip.cluster > 0) return sn_cuda_on_chip_refused(e);
  return c->coop_blocks > 0 && e == (int)cudaErrorCooperativeLaunchTooLarge;
}

/* A grouped call's single `launch` refused during a capture (fewer blocks or clusters can be
 * resident than when `since` set it up): the group has dropped it, and the caller captures its
 * `call` again. */
static sn_status_t refused_in_capture(const char *launch, const char *since, const char *call) {
  return sn__fail(SN_ERROR_CUDA,
                  "the group's %s launch was refused (fewer blocks can be resident than at %s) "
                  "while a stream capture is active; the group does without it from now on: end "
                  "this capture and capture the %s again",
                  launch, since, call);
}

/* The group's kernels hold each layer's γ binding as it was at creation (the CUDA tables): a
 * binding changed since would be ignored, and its old buffer may be gone. Both backends alike. */
static sn_status_t check_gamma_bindings(const sn_group_t *group) {
  for (int k = 0; k < group->count; ++k)
    if (group->layers[k]->plan.gamma != group->gamma[k])
      return sn__fail(SN_ERROR_INVALID_STATE,
                      "layers[%d]'s gamma binding (sn_layer_set_gamma) changed after the group was "
                      "created; create the group again",
                      k);
  return SN_SUCCESS;
}

/* Whether a member runs its warm-up on its own before the grouped kernels. */
static int needs_warmup(const sn_layer_t *l) { return !l->warmed_up && l->desc.warmup_iterations > 0; }

/* Whether any member writes a W_sn (sn_paths_t: the group's forward is then a "train" one). */
static int any_output(const sn_group_t *g) {
  for (int k = 0; k < g->count; ++k)
    if (g->W_sn[k]) return 1;
  return 0;
}

SN_API sn_status_t sn_group_forward(sn_group_t *group, int training, sn_stream_t stream) {
  if (!group) return sn__fail(SN_ERROR_NULL_POINTER, "group is NULL");
  sn_status_t st = check_gamma_bindings(group);
  if (st != SN_SUCCESS) return st;
  if (group->backend == SN_BACKEND_CPU) {
    /* Every member's buffers before any runs, so that a failure moves no layer's state. */
    for (int k = 0; k < group->count; ++k) {
      st = check_member_memory(group->layers[k], group->W[k], group->W_sn[k], k);
      if (st != SN_SUCCESS) return st;
    }
    sn__cpu_group_forward(group->layers, group->W, group->W_sn, group->count, training);
    sn__record_forward_path(&group->paths, training, any_output(group), SN_PATH_CPU);
    return SN_SUCCESS;
  }
  /* Layers not yet warmed up run their warm-up on their own first (refused during a capture).
   * Before any runs (only in a call with warm-ups to run, so once), every layer's buffers are
   * checked again, so that a buffer freed since sn_group_create fails the call before a warm-up
   * has moved an earlier layer's state, rather than in a warm-up or in the grouped kernels; and
   * the group's device is entered first, so that after a warm-up only a launch that fails (a CUDA
   * error: the members warmed up before it keep their warm-up) can fail the call. */
  int warmups = 0;
  for (int k = 0; k < group->count; ++k) warmups += needs_warmup(group->layers[k]);
  for (int k = 0; warmups && k < group->count; ++k) {
    st = check_member_memory(group->layers[k], group->W[k], group->W_sn[k], k);
    if (st != SN_SUCCESS) return st;
  }
  int prev = 0;
  st = sn__enter_device(group->device, &prev);
  if (st != SN_SUCCESS) return st;
  for (int k = 0; k < group->count; ++k) {
    sn_layer_t *l = group->layers[k];
    if (!needs_warmup(l)) continue;
    st = sn__run_forward(l, group->W[k], NULL, 1, 1, stream);
    if (st != SN_SUCCESS) {
      sn__leave_device(group->device, prev);
      return st;
    }
  }
  int e = sn_cuda_group_forward(&group->cuda, training, stream);
  const char *refused = NULL; /* the single launch refused during a capture */
  while (!refused && refused_single_launch(&group->cuda, e)) {
    /* Fewer blocks or clusters can be resident than the occupancy queries said at creation (the
     * GPU shared with other processes under MPS, an SM limit): nothing ran. The group drops
     * that launch for good (refused_single_launch): the on-chip launch for the cooperative one
     * or the three kernels, the cooperative launch for the three kernels, which need no
     * co-residency. Eagerly the next runs at once; a capture may have been invalidated by the
     * refused launch, so the caller captures again. */
    const char *what = group->cuda.onchip.cluster > 0 ? "on-chip" : "cooperative";
    (void)cudaGetLastError();
    if (group->cuda.onchip.cluster > 0) {
      group->cuda.onchip.cluster = 0;
      group->paths.dropped |= SN_DROPPED_ON_CHIP;
    } else {
      group->cuda.coop_blocks = 0;
      group->paths.dropped |= SN_DROPPED_COOP;
    }
    if (sn__may_retry_on(stream))
      e = sn_cuda_group_forward(&group->cuda, training, stream);
    else
      refused = what;
  }
  sn__leave_device(group->device, prev);
  if (refused) return refused_in_capture(refused, "sn_group_create", "forward");
  if (e != 0) {
    return sn__cuda_fail(e, "launching the grouped kernels");
  }
  for (int k = 0; k < group->count; ++k) {
    group->layers[k]->warmed_up = 1;
    group->layers[k]->forwards += 1;
  }
  sn__record_forward_path(&group->paths, training, any_output(group),
                          sn_cuda_group_forward_path(&group->cuda));
  return SN_SUCCESS;
}

SN_API sn_status_t sn_group_get_paths(const sn_group_t *group, sn_paths_t *paths) {
  if (!group) return sn__fail(SN_ERROR_NULL_POINTER, "group is NULL");
  if (!paths) return sn__fail(SN_ERROR_NULL_POINTER, "paths is NULL");
  *paths = group->paths;
  return SN_SUCCESS;
}

/* ---- backward ------------------------------------------------------------------------------ */

/* The gradient buffers of sn_group_set_gradients: each layer's as sn_backward's, and dW[k]
 * overlapping no other member's W, G or dW (the apply kernel writes one layer's dW while it reads
 * the others' G, and sn_backward called layer after layer would see an earlier layer's dW in a
 * later one's W or G). */
static sn_status_t check_gradients(const sn_group_t *g, const void *const *G, void *const *dW,
                                   float *const *dgamma) {
  for (int k = 0; k < g->count; ++k) {
    if (!G[k]) return sn__fail(SN_ERROR_NULL_POINTER, "G[%d] is NULL", k);
    if (!dW[k]) return sn__fail(SN_ERROR_NULL_POINTER, "dW[%d] is NULL", k);
  }
  static const char *const what[4] = {"W", "G", "dW", "dgamma"};
  for (int k = 0; k < g->count; ++k) {
    const sn_layer_t *l = g->layers[k];
    char name[4][32];
    const char *names[4];
    for (int q = 0; q < 4; ++q) {
      snprintf(name[q], sizeof name[q], "%s[%d]", what[q], k);
      names[q] = name[q];
    }
    const float *dg = dgamma ? dgamma[k] : NULL;
    sn_status_t st = sn__check_backward_buffers(l, g->W[k], G[k], dW[k], dg, names);
    if (st != SN_SUCCESS) return st;
    const size_t bytes = sn__weight_bytes(l);
    for (int j = 0; j < g->count; ++j) {
      const size_t nj = sn__weight_bytes(g->layers[j]);
      const void *other[3] = {g->W[j], G[j], dW[j]};
      for (int q = 0; q < 3; ++q) {
        if (j != k && sn__overlap(dW[k], bytes, other[q], nj))
          return sn__fail(SN_ERROR_INVALID_VALUE,
                          "dW[%d] (%p) overlaps %s[%d] (%p): the group writes one layer's dW while "
                          "it reads the others' W and G",
                          k, dW[k], what[q], j, other[q]);
        /* ∂L/∂γ is written while the buffers are read or written, its own layer's too. */
        if (dg && sn__overlap(dg, sizeof(float), other[q], nj))
          return sn__fail(SN_ERROR_INVALID_VALUE, "dgamma[%d] (%p) lies inside %s[%d] (%p)", k,
                          (const void *)dg, what[q], j, other[q]);
      }
      if (dg && j < k && dgamma[j] && sn__overlap(dg, sizeof(float), dgamma[j], sizeof(float)))
        return sn__fail(SN_ERROR_INVALID_VALUE, "dgamma[%d] and dgamma[%d] overlap", j, k);
      /* The others' γ are read while this layer's dW and ∂L/∂γ are written. */
      const float *gj = g->gamma[j];
      if (j != k && gj && sn__overlap(gj, sizeof(float), dW[k], bytes))
        return sn__fail(SN_ERROR_INVALID_VALUE, "layers[%d]'s gamma (%p) lies inside dW[%d] (%p)", j,
                        (const void *)gj, k, dW[k]);
      if (j != k && gj && dg && sn__overlap(gj, sizeof(float), dg, sizeof(float)))
        return sn__fail(SN_ERROR_INVALID_VALUE, "dgamma[%d] (%p) is layers[%d]'s gamma", k,
                        (const void *)dg, j);
    }
  }
  return SN_SUCCESS;
}

/* The CUDA backward's tables for these buffers: entries and block -> layer tables in one new
 * device allocation (*workspace), described by *bw. */
static sn_status_t upload_backward(const sn_group_t *g, const void *const *G, void *const *dW,
                                   float *const *dgamma, void **workspace, sn_cuda_group_bw_t *bw) {
  *workspace = NULL;
  sn_group_bw_entry_t *ent = calloc((size_t)g->count, sizeof *ent);
  if (!ent) return sn__fail(SN_ERROR_ALLOCATION, "host memory for a group of %d layers", g->count);
  int64_t inner = 0, apply = 0;
  for (int k = 0; k < g->count; ++k) {
    const sn_layer_t *l = g->layers[k];
    sn_cuda_group_backward_entry(&l->plan, l->u, l->v, l->sigma, g->W[k], G[k], dW[k],
                                 dgamma ? dgamma[k] : NULL, &ent[k]);
    ent[k].inner_block0 = (int)inner;
    ent[k].apply_block0 = (int)apply;
    inner += ent[k].shape.inner_blocks;
    apply += ent[k].shape.apply_blocks;
    if (inner > INT32_MAX || apply > INT32_MAX) {
      free(ent);
      return sn__fail(SN_ERROR_NOT_SUPPORTED,
                      "the group's backward would take more than 2^31 - 1 blocks in one launch; "
                      "make smaller groups");
    }
  }
  int *layer_of = malloc((size_t)(inner + apply) * sizeof *layer_of);
  if (!layer_of) {
    free(ent);
    return sn__fail(SN_ERROR_ALLOCATION, "host memory for a group of %d layers", g->count);
  }
  for (int k = 0; k < g->count; ++k) {
    for (int b = 0; b < ent[k].shape.inner_blocks; ++b) layer_of[ent[k].inner_block0 + b] = k;
    for (int b = 0; b < ent[k].shape.apply_blocks; ++b) layer_of[inner + ent[k].apply_block0 + b] = k;
  }
  const size_t table = (size_t)g->count * sizeof *ent, lut = (size_t)(inner + apply) * sizeof(int);
  sn_status_t st = SN_SUCCESS;
  cudaError_t e = cudaMalloc(workspace, table + lut);
  if (e != cudaSuccess) {
    *workspace = NULL;
    st = sn__fail(SN_ERROR_ALLOCATION, "cudaMalloc of %zu bytes for the group's backward tables: %s",
                  table + lut, cudaGetErrorString(e));
  } else {
    char *tab = *workspace;
    e = cudaMemcpy(tab, ent, table, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(tab + table, layer_of, lut, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaStreamSynchronize(0); /* as create_cuda_group's tables */
    if (e != cudaSuccess) {
      st = sn__cuda_fail((int)e, "uploading the group's backward tables");
      (void)cudaFree(*workspace);
      *workspace = NULL;
    } else {
      bw->count = g->count;
      bw->pdl = g->cuda.pdl;
      bw->inner_total = (int)inner;
      bw->apply_total = (int)apply;
      /* One cooperative launch where SPECNORM_TUNE asks (sn_cuda_tune_group_backward_coop). */
      const int64_t most = inner > apply ? inner : apply;
      const int cap = sn_cuda_tune_group_backward_coop();
      sn_cuda_group_backward_prepare(cap < most ? cap : (int)most, &bw->coop_blocks);
      const int force = sn_cuda_tune_group_grid_force(); /* tests: a launch that is refused */
      if (bw->coop_blocks > 0 && force > 0) bw->coop_blocks = force;
      bw->entries = (const sn_group_bw_entry_t *)tab;
      bw->inner_layer = (const int *)(tab + table);
      bw->apply_layer = bw->inner_layer + inner;
    }
  }
  if (st != SN_SUCCESS) (void)cudaGetLastError();
  free(ent);
  free(layer_of);
  return st;
}

SN_API sn_status_t sn_group_set_gradients(sn_group_t *group, const void *const *G, void *const *dW,
                                          float *const *dgamma) {
  if (!group) return sn__fail(SN_ERROR_NULL_POINTER, "group is NULL");
  if (!G) return sn__fail(SN_ERROR_NULL_POINTER, "G is NULL");
  if (!dW) return sn__fail(SN_ERROR_NULL_POINTER, "dW is NULL");
  /* The tables take each layer's γ binding from its plan: the one at creation, checked here and
   * by every backward. */
  sn_status_t st = check_gamma_bindings(group);
  if (st == SN_SUCCESS) st = check_gradients(group, G, dW, dgamma);
  if (st != SN_SUCCESS) return st;
  const size_t n = (size_t)group->count;
  const void **g_G = malloc(n * sizeof *g_G);
  void **g_dW = malloc(n * sizeof *g_dW);
  float **g_dgamma = dgamma ? malloc(n * sizeof *g_dgamma) : NULL;
  if (!g_G || !g_dW || (dgamma && !g_dgamma)) {
    free_gradients(g_G, g_dW, g_dgamma);
    return sn__fail(SN_ERROR_ALLOCATION, "host memory for a group of %d layers", group->count);
  }
  for (size_t k = 0; k < n; ++k) {
    g_G[k] = G[k];
    g_dW[k] = dW[k];
    if (dgamma) g_dgamma[k] = dgamma[k];
  }
  void *ws = NULL;
  sn_cuda_group_bw_t bw = {0};
  int setup_failed = 0;
  if (group->backend == SN_BACKEND_CUDA) {
    int prev = 0;
    st = sn__enter_device(group->device, &prev);
    if (st == SN_SUCCESS) {
      (void)sn_cuda_setup_failures_take(); /* this binding's alone */
      st = upload_backward(group, G, dW, dgamma, &ws, &bw);
      setup_failed = sn_cuda_setup_failures_take() > 0;
      sn__leave_device(group->device, prev);
    }
    if (st != SN_SUCCESS) { /* the earlier binding, if any, stays */
      free_gradients(g_G, g_dW, g_dgamma);
      return st;
    }
  }
  free_device(group, group->bw_workspace);
  free_gradients(group->G, group->dW, group->dgamma);
  /* Tried again (sn_group_set_gradients); the setup bit says what this binding's probes and the
   * creation's did, not an earlier binding's. */
  group->paths.dropped &= ~(unsigned)(SN_DROPPED_BACKWARD_COOP | SN_DROPPED_SETUP);
  if (setup_failed || group->setup_failed) group->paths.dropped |= SN_DROPPED_SETUP;
  group->G = g_G;
  group->dW = g_dW;
  group->dgamma = g_dgamma;
  group->bw_workspace = ws;
  group->cuda_bw = bw;
  return SN_SUCCESS;
}

SN_API sn_status_t sn_group_backward(sn_group_t *group, unsigned flags, sn_stream_t stream) {
  if (!group) return sn__fail(SN_ERROR_NULL_POINTER, "group is NULL");
  if (sn__check_backward_flags(flags) != SN_SUCCESS) return SN_ERROR_INVALID_VALUE;
  if (!group->G)
    return sn__fail(SN_ERROR_INVALID_STATE,
                    "the group has no gradient buffers: call sn_group_set_gradients first");
  sn_status_t st = check_gamma_bindings(group);
  if (st != SN_SUCCESS) return st;
  for (int k = 0; k < group->count; ++k)
    if (!group->layers[k]->warmed_up)
      return sn__fail(SN_ERROR_INVALID_STATE,
                      "layers[%d] is not warmed up (no forward or sn_layer_warmup since its "
                      "creation, sn_layer_reset, or a state or checkpoint with warmed_up = 0): the "
                      "backward needs the u, v and sigma of a forward",
                      k);
  if (group->backend == SN_BACKEND_CPU) {
    sn__cpu_group_backward(group->layers, group->W, group->G, group->dW, group->dgamma, group->count,
                           flags);
    group->paths.backward = SN_PATH_CPU;
    return SN_SUCCESS;
  }
  const int detach = (flags & SN_BACKWARD_DETACH_SIGMA) != 0;
  int need_inner = !detach; /* ⟨G, W⟩: the σ term, or a ∂L/∂γ */
  for (int k = 0; !need_inner && group->dgamma && k < group->count; ++k) need_inner = group->dgamma[k] != NULL;
  const int acc = (flags & SN_BACKWARD_ACCUMULATE) != 0;
  int prev = 0;
  st = sn__enter_device(group->device, &prev);
  if (st != SN_SUCCESS) return st;
  int e = sn_cuda_group_backward(&group->cuda_bw, acc, detach, need_inner, stream);
  int refused = 0; /* the cooperative launch refused during a capture */
  if (group->cuda_bw.coop_blocks > 0 && e == (int)cudaErrorCooperativeLaunchTooLarge) {
    /* Fewer blocks can be resident than at sn_group_set_gradients (as in sn_group_forward): nothing
     * ran; the binding does without the cooperative launch from now on. */
    (void)cudaGetLastError();
    group->cuda_bw.coop_blocks = 0;
    group->paths.dropped |= SN_DROPPED_BACKWARD_COOP;
    if (sn__may_retry_on(stream))
      e = sn_cuda_group_backward(&group->cuda_bw, acc, detach, need_inner, stream);
    else
      refused = 1;
  }
  sn__leave_device(group->device, prev);
  if (refused) return refused_in_capture("cooperative backward", "sn_group_set_gradients", "backward");
  if (e != 0) {
    return sn__cuda_fail(e, "launching the grouped backward kernels");
  }
  group->paths.backward = sn_cuda_group_backward_path(&group->cuda_bw);
  return SN_SUCCESS;
}
