/* sn_layer_describe: a layer's backend, shape, plan and recorded paths as one line of text. */
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
  put(o, "; division %d blocks%s%s%s", p->div_blocks, p->div_stream ? ", streaming" : "",
      p->div_prefetch ? ", prefetching" : "", p->pdl ? "; programmatic dependent launch" : "");
}

SN_API sn_status_t sn_layer_describe(const sn_layer_t *layer, char *buf, size_t size, size_t *length) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!buf && size > 0) return sn__fail(SN_ERROR_NULL_POINTER, "buf is NULL with size = %zu", size);
  line_t o = {buf, size, 0};
  if (size > 0) buf[0] = '\0';
  const sn_layer_desc_t *d = &layer->desc;
  if (d->backend == SN_BACKEND_CPU)
    put(&o, "cpu (%d thread%s)", layer->cpu_threads, layer->cpu_threads > 1 ? "s" : "");
  else
    put(&o, "cuda device %d", d->device);
  put(&o, ", shape ");
  for (int k = 0; k < d->ndim; ++k) put(&o, "%s%lld", k ? "x" : "", (long long)d->shape[k]);
  int64_t h = 0, w = 0;
  (void)sn_layer_get_dims(layer, &h, &w);
  put(&o, " dim %d (h %lld, w %lld), %s, %s, algo %s", d->dim, (long long)h, (long long)w, sn_dtype_name(d->dtype),
      d->order == SN_ORDER_V_FIRST ? "v-first" : "u-first",
      d->algo == SN_ALGO_ONE_PASS ? "one-pass" : d->algo == SN_ALGO_TWO_PASS ? "two-pass" : "default");
  if (d->backend == SN_BACKEND_CUDA) put_plan(&o, layer);
  const sn_paths_t *p = &layer->paths;
  put(&o, "; paths: train %s, scale-only %s, eval %s, backward %s", sn_path_name(p->train),
      sn_path_name(p->scale_only), sn_path_name(p->eval), sn_path_name(p->backward));
  if (p->dropped) put(&o, ", dropped 0x%x", p->dropped);
  if (length) *length = o.len;
  return SN_SUCCESS;
}
