/* sn_layer_describe, sn_group_describe: a layer's (a group's) backend, shape, plan and recorded
 * paths as one line of text. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sn_internal.h"
#include "sn_reference.h"

/* A growing line: what fits goes into buf (NUL-terminated), `len` counts all of it. */
typedef struct {
  char *buf;
  size_t size, len;
} line_t;

static void put(line_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(line_t *o, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *at = o->len < o->size ? o->buf + o->len : NULL;
  const int n = vsnprintf(at, at ? o->size - o->len : 0, fmt, ap);
  va_end(ap);
  if (n > 0) o->len += (size_t)n;
}

/* The kernels' plan of a CUDA layer (sn_cuda_plan_t, fixed at creation). */
static void put_plan(line_t *o, const sn_layer_t *l) {
  const sn_cuda_plan_t *p = &l->plan;
  if (l->is_1d) {
    put(o, "; 1-D: norm and division");
  } else if (p->one_pass_cols) {
    put(o, "; one pass by columns");
  } else if (p->one_pass) {
    put(o, "; one pass by rows: %d blocks of %d threads, %d pack%s of %d a row per thread, %d row%s a step",
        p->op_blocks, p->op_threads, p->op_vpt, p->op_vpt > 1 ? "s" : "", p->op_elems, p->op_rows,
        p->op_rows > 1 ? "s" : "");
    if (p->op_cluster > 1) put(o, ", clusters of %d", p->op_cluster);
    if (p->op_pp) put(o, ", ring of %d", p->op_pp);
    if (p->op_coop) put(o, ", cooperative in %s", p->op_coop_all ? "every forward" : "forwards without W_sn");
    put(o, ", reduce %d float4 columns a block, eval %d blocks", p->op_reduce_cols, p->op_eval_blocks);
  } else {
    put(o, "; two passes (matrix-vector kernels)");
  }
  const sn_on_chip_t *c = &p->onchip;
  if (c->grid > 0) {
    put(o, "; on chip over a grid of %d blocks (%d rows in shared memory", c->grid, c->smem_rows);
    if (c->reg_rows) put(o, ", %d in registers", c->reg_rows);
    if (c->stream_rows) put(o, ", %d streamed", c->stream_rows);
    put(o, " a block%s%s)", c->transposed ? ", as its transpose" : "", c->backward ? ", backward too" : "");
  } else if (c->cluster > 0) {
    put(o, "; on chip in %s of %d block%s of %d threads (", c->clusters ? "a cluster" : "one block", c->cluster,
        c->cluster > 1 ? "s" : "", c->threads);
    static const char *const modes[3] = {"train", "scale-only", "eval"}; /* SN_ON_CHIP_* bits */
    for (int k = 0, n = 0; k < 3; ++k)
      if (c->modes & (1 << k)) put(o, "%s%s", n++ ? ", " : "", modes[k]);
    put(o, "%s)", c->backward ? ", backward" : "");
  }
  put(o, "; division %d blocks%s%s", p->div_blocks, p->div_stream ? ", streaming" : "",
      p->div_prefetch ? ", prefetching" : "");
  if (!l->is_1d) {
    /* The backward's kernels for 16-byte aligned W, G and dW (NULL is: sn_cuda_backward_shape
     * reads only the addresses' alignment). */
    const sn_cuda_backward_shape_t b = sn_cuda_backward_shape(p, NULL, NULL, NULL);
    put(o, "; backward <G, W> %d blocks%s, dW %s in %d blocks", b.inner_blocks,
        b.inner_kind == 2 ? " (W evict-first)" : "", b.apply_kind == 0 ? "by elements" : "by rows",
        b.apply_blocks);
  }
  if (p->pdl) put(o, "; programmatic dependent launch");
}

/* sn_paths_t's record, and the end of the line: *length, the status. */
static sn_status_t finish(line_t *o, const sn_paths_t *p, size_t *length) {
  put(o, "; paths: train %s, scale-only %s, eval %s, backward %s", sn_path_name(p->train),
      sn_path_name(p->scale_only), sn_path_name(p->eval), sn_path_name(p->backward));
  if (p->dropped) put(o, ", dropped 0x%x", p->dropped);
  if (length) *length = o->len;
  return SN_SUCCESS;
}

/* The checks and the start of either description. A CPU layer of `numel` elements splits each of
 * its calls' loops over W over at most min(threads, numel / grain) threads (host/reference.c,
 * split_parts: the calling thread's grain, as a call from it would take; fewer where a product has
 * fewer rows or columns), so from two grains on, and runs below that on the calling thread alone;
 * a group (numel < 0) over up to the most threads of its members (host/cpu_backend.c). */
static sn_status_t start(line_t *o, char *buf, size_t size, sn_backend_t backend, int device, int threads,
                         int64_t numel) {
  if (!buf && size > 0) return sn__fail(SN_ERROR_NULL_POINTER, "buf is NULL with size = %zu", size);
  *o = (line_t){buf, size, 0};
  if (size > 0) buf[0] = '\0';
  const int64_t grain = sn_ref_grain(), most = numel / grain < threads ? numel / grain : threads;
  if (backend != SN_BACKEND_CPU)
    put(o, "cuda device %d", device);
  else if (threads <= 1)
    put(o, "cpu (1 thread)");
  else if (numel < 0 || most == threads)
    put(o, "cpu (up to %d threads)", threads);
  else if (most >= 2)
    put(o, "cpu (up to %lld of %d threads at %lld elements)", (long long)most, threads, (long long)numel);
  else
    put(o, "cpu (1 thread at %lld elements; %d from %lld)", (long long)numel, threads, (long long)(2 * grain));
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_describe(const sn_layer_t *layer, char *buf, size_t size, size_t *length) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  const sn_layer_desc_t *d = &layer->desc;
  line_t o;
  const sn_status_t st = start(&o, buf, size, d->backend, d->device, layer->cpu_threads, layer->numel);
  if (st != SN_SUCCESS) return st;
  put(&o, ", shape ");
  for (int k = 0; k < d->ndim; ++k) put(&o, "%s%lld", k ? "x" : "", (long long)d->shape[k]);
  int64_t h = 0, w = 0;
  (void)sn_layer_get_dims(layer, &h, &w);
  put(&o, " dim %d (h %lld, w %lld), %s, %s, algo %s", d->dim, (long long)h, (long long)w, sn_dtype_name(d->dtype),
      d->order == SN_ORDER_V_FIRST ? "v-first" : "u-first",
      d->algo == SN_ALGO_ONE_PASS ? "one-pass" : d->algo == SN_ALGO_TWO_PASS ? "two-pass" : "default");
  if (d->backend == SN_BACKEND_CUDA) put_plan(&o, layer);
  return finish(&o, &layer->paths, length);
}

SN_API sn_status_t sn_group_describe(const sn_group_t *group, char *buf, size_t size, size_t *length) {
  if (!group) return sn__fail(SN_ERROR_NULL_POINTER, "group is NULL");
  int threads = 1;
  int64_t numel = 0;
  for (int k = 0; k < group->count; ++k) {
    numel += group->layers[k]->numel;
    if (group->layers[k]->cpu_threads > threads) threads = group->layers[k]->cpu_threads;
  }
  line_t o;
  const sn_status_t st = start(&o, buf, size, group->backend, group->device, threads, -1);
  if (st != SN_SUCCESS) return st;
  put(&o, ", %d layer%s of %lld elements in all", group->count, group->count > 1 ? "s" : "", (long long)numel);
  if (group->backend == SN_BACKEND_CUDA) {
    /* The launches the dispatchers choose (sn_cuda_group_forward_path, ..._backward_path). */
    const sn_cuda_group_t *c = &group->cuda;
    const sn_path_t fw = sn_cuda_group_forward_path(c);
    if (fw == SN_PATH_ON_CHIP)
      put(&o, "; forward on chip in %s of %d block%s of %d threads", c->onchip.clusters ? "clusters" : "blocks",
          c->onchip.cluster, c->onchip.cluster > 1 ? "s" : "", c->onchip.threads);
    else if (fw == SN_PATH_ONE_PASS_COOP)
      put(&o, "; forward one cooperative launch of %d blocks", c->coop_blocks);
    else
      put(&o, "; forward in kernels of %d, %d and %d blocks", c->row_total, c->red_total, c->div_total);
    const sn_cuda_group_bw_t *b = &group->cuda_bw;
    if (!group->G)
      put(&o, "; no gradients bound");
    else if (sn_cuda_group_backward_path(b) == SN_PATH_BACKWARD_COOP)
      put(&o, "; backward one cooperative launch of %d blocks", b->coop_blocks);
    else
      put(&o, "; backward in kernels of %d and %d blocks", b->inner_total, b->apply_total);
  }
  return finish(&o, &group->paths, length);
}
