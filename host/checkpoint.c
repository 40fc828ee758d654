/* Checkpoints: the full state of a layer as one self-checking, backend-independent byte blob.
 *
 * Format version 2, every integer and float little-endian, no padding (README, "Reliability"):
 *
 *   offset        size      field
 *   0             8         magic "SPECNRM\0"
 *   8             4  u32    format version (2)
 *   12            4  u32    header bytes = offset of u[0] = 84 + 8·ndim
 *   16            4  u32    ndim (1..8)
 *   20            8·ndim    shape[ndim], i64 each
 *   20 + 8·ndim   4  i32    dim (normalized to [0, ndim))
 *                 4  u32    dtype (sn_dtype_t)
 *                 4  i32    n_power_iterations
 *                 4  f32    eps
 *                 4  i32    warmup_iterations
 *                 4  u32    order (sn_order_t)
 *                 4  f32    norm_bound
 *                 8  u64    seed
 *                 4  u32    warmed_up (0 or 1)
 *                 8  u64    forwards (successful forwards of the layer so far)
 *                 8  i64    h
 *                 8  i64    w
 *   header        4·h f32   u
 *                 4·w f32   v
 *                 12  f32   σ, 1/σ, scale
 *                 4  u32    health: the sn_health_flag_t bits (0-4) and bit 31, set when the next
 *                           training forward restarts from the all-ones vector (after a zero σ);
 *                           no other bit
 *   size - 4      4  u32    CRC-32C (Castagnoli, reflected, init and final xor 0xFFFFFFFF) of
 *                           every byte before it
 *
 * Total: 104 + 8·ndim + 4·(h + w) bytes. Version 1 is version 2 without the health word (100 +
 * 8·ndim + 4·(h + w) bytes); it is still read, and loads with the health word sn_layer_set_state
 * leaves: cleared, and the restart requested for a zero-norm u or v. sn_layer_load
 * checks everything (length, magic, version, checksum, every field's range, finite u, v and σ,
 * 1/σ as a commit writes it for that σ, no unknown health bit (the scale is not checked: a
 * non-finite one loads, and the health word installed records SN_HEALTH_SCALE), shape/dim/dtype
 * against the
 * layer) before it changes anything. It restores u, v, σ, 1/σ, the scale, the health word, the
 * warm-up flag and the forward count, so that a resumed run continues as the uninterrupted one
 * would, restart from ones included; the layer keeps its own settings (iterations, eps, warm-up
 * count, order, norm bound, seed, backend, device, algorithm), which the blob records for
 * inspection only. When the blob's norm bound differs from the layer's, the scale is recomputed
 * as sn_layer_set_state does (1 / max(1, σ / c), or 1 / σ), instead of copied. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "sn_internal.h"
#include "sn_reference.h"

#define CK_VERSION 2u
#define CK_HEALTH_BITS (SN_HEALTH_PUBLIC | SN_HEALTH_RESTART) /* what the health word may hold */
#define CK_PREFIX 16u       /* magic, version, header bytes */
#define CK_FIXED 84u        /* header bytes without the shape */
#define CK_MAX_ITERATIONS 1000000 /* as in layer.c */

static const unsigned char ck_magic[8] = {'S', 'P', 'E', 'C', 'N', 'R', 'M', '\0'};

/* ---- CRC-32C, bit by bit (the blobs are small: u and v, not W) ------------------------------ */

static uint32_t crc32c(const unsigned char *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t k = 0; k < n; ++k) {
    c ^= p[k];
    for (int b = 0; b < 8; ++b) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

/* ---- little-endian encoding ----------------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t x) {
  for (int k = 0; k < 4; ++k) p[k] = (unsigned char)(x >> (8 * k));
}
static void put_u64(unsigned char *p, uint64_t x) {
  for (int k = 0; k < 8; ++k) p[k] = (unsigned char)(x >> (8 * k));
}
static void put_f32(unsigned char *p, float x) {
  uint32_t b;
  memcpy(&b, &x, 4);
  put_u32(p, b);
}
static uint32_t get_u32(const unsigned char *p) {
  uint32_t x = 0;
  for (int k = 0; k < 4; ++k) x |= (uint32_t)p[k] << (8 * k);
  return x;
}
static uint64_t get_u64(const unsigned char *p) {
  uint64_t x = 0;
  for (int k = 0; k < 8; ++k) x |= (uint64_t)p[k] << (8 * k);
  return x;
}
static int32_t get_i32(const unsigned char *p) {
  const uint32_t x = get_u32(p);
  int32_t r;
  memcpy(&r, &x, 4);
  return r;
}
static int64_t get_i64(const unsigned char *p) {
  const uint64_t x = get_u64(p);
  int64_t r;
  memcpy(&r, &x, 8);
  return r;
}
static float get_f32(const unsigned char *p) {
  const uint32_t b = get_u32(p);
  float x;
  memcpy(&x, &b, 4);
  return x;
}

/* Sequential writer over a buffer whose size was checked beforehand. */
typedef struct {
  unsigned char *p;
} ck_writer_t;
static void w_u32(ck_writer_t *w, uint32_t x) { put_u32(w->p, x); w->p += 4; }
static void w_u64(ck_writer_t *w, uint64_t x) { put_u64(w->p, x); w->p += 8; }
static void w_f32(ck_writer_t *w, float x) { put_f32(w->p, x); w->p += 4; }
static void w_i32(ck_writer_t *w, int32_t x) { uint32_t b; memcpy(&b, &x, 4); w_u32(w, b); }
static void w_i64(ck_writer_t *w, int64_t x) { uint64_t b; memcpy(&b, &x, 8); w_u64(w, b); }

/* ---- sizes ---------------------------------------------------------------------------------- */

static int64_t width_of(const sn_layer_t *l) { return l->view.A * l->view.B; }

/* 4-byte words after v: σ, 1/σ, scale, and from version 2 the health word. */
static uint32_t tail_words(uint32_t version) { return version >= 2u ? 4u : 3u; }

/* Bytes of a (current version) checkpoint of a layer of `ndim` dimensions and an h × w view, or
 * 0 if it does not fit in size_t. h and w come from a validated layer: each <= INT64_MAX / 4. */
static size_t blob_bytes(int ndim, int64_t h, int64_t w) {
  const uint64_t hw = (uint64_t)h + (uint64_t)w; /* < 2^62 */
  if (hw > (UINT64_MAX - 200u) / 4u) return 0;
  const uint64_t n = (uint64_t)CK_FIXED + 8u * (uint64_t)ndim + 4u * (hw + tail_words(CK_VERSION)) + 4u;
  if (n > (uint64_t)SIZE_MAX) return 0;
  return (size_t)n;
}

SN_API sn_status_t sn_layer_checkpoint_size(const sn_layer_t *layer, size_t *bytes) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!bytes) return sn__fail(SN_ERROR_NULL_POINTER, "bytes (the output pointer) is NULL");
  const size_t n = blob_bytes(layer->desc.ndim, layer->view.h, width_of(layer));
  if (n == 0)
    return sn__fail(SN_ERROR_SIZE_OVERFLOW, "the checkpoint of a %lld x %lld layer does not fit in size_t",
                    (long long)layer->view.h, (long long)width_of(layer));
  *bytes = n;
  return SN_SUCCESS;
}

/* ---- moving the state between the layer's memory and the host -------------------------------- */

/* A host copy of the state, compact: u (h floats), v (w), then σ, 1/σ, scale and the health word
 * (sn_layer_health_ptr: layer->sigma + 3). The layer's own
 * memory is addressed only through layer->u, layer->v and layer->sigma, whatever its layout. */
static int64_t compact_floats(const sn_layer_t *l) { return l->view.h + width_of(l) + 4; }

/* Copy the state to the compact host array `host` after the work queued on `stream`. Blocks.
 * (The other way: sn__put_state.) */
static sn_status_t fetch(const sn_layer_t *l, float *host, sn_stream_t stream) {
  const int64_t h = l->view.h, w = width_of(l);
  float *const dev[3] = {l->u, l->v, l->sigma};
  float *const hst[3] = {host, host + h, host + h + w};
  /* σ, 1/σ, scale and the health word after them. */
  const size_t bytes[3] = {(size_t)h * sizeof(float), (size_t)w * sizeof(float), 4 * sizeof(float)};
  if (l->desc.backend == SN_BACKEND_CPU) {
    for (int k = 0; k < 3; ++k) memcpy(hst[k], dev[k], bytes[k]);
    return SN_SUCCESS;
  }
  int prev = 0;
  sn_status_t st = sn__enter_device(l->desc.device, &prev);
  if (st != SN_SUCCESS) return st;
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t e = cudaSuccess;
  int queued = 0;
  for (int k = 0; k < 3 && e == cudaSuccess; ++k) {
    e = cudaMemcpyAsync(hst[k], dev[k], bytes[k], cudaMemcpyDeviceToHost, s);
    queued += e == cudaSuccess;
  }
  /* Also after a failed copy: those queued before it write into `host`, which the caller frees. */
  if (queued > 0) {
    const cudaError_t es = cudaStreamSynchronize(s);
    if (e == cudaSuccess) e = es;
  }
  sn__leave_device(l->desc.device, prev);
  if (e != cudaSuccess) {
    return sn__cuda_fail((int)e, "copying the layer state to the host for the checkpoint");
  }
  return SN_SUCCESS;
}

/* ---- save ----------------------------------------------------------------------------------- */

SN_API sn_status_t sn_layer_save(const sn_layer_t *layer, void *buf, size_t size, size_t *written,
                                 sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!buf) return sn__fail(SN_ERROR_NULL_POINTER, "buf is NULL");
  const void *out[2] = {buf, written};
  static const char *const names[2] = {"buf", "written"};
  sn_status_t st = sn__check_host_arrays(2, out, names);
  if (st != SN_SUCCESS) return st;
  size_t need = 0;
  st = sn_layer_checkpoint_size(layer, &need);
  if (st != SN_SUCCESS) return st;
  if (size < need)
    return sn__fail(SN_ERROR_INVALID_VALUE,
                    "size = %zu bytes is smaller than this layer's checkpoint (%zu bytes, "
                    "sn_layer_checkpoint_size)",
                    size, need);

  const int64_t h = layer->view.h, w = width_of(layer);
  /* A CPU layer's state is read in place; a CUDA layer's is staged on the host first, so that
   * nothing is written to buf unless the copy succeeds. */
  float *staged = NULL;
  const float *u = layer->u, *v = layer->v, *sig = layer->sigma;
  if (layer->desc.backend != SN_BACKEND_CPU) {
    const size_t bytes = (size_t)compact_floats(layer) * sizeof(float);
    staged = malloc(bytes);
    if (!staged)
      return sn__fail(SN_ERROR_ALLOCATION, "host staging buffer of %zu bytes for the checkpoint", bytes);
    st = fetch(layer, staged, stream);
    if (st != SN_SUCCESS) {
      free(staged);
      return st;
    }
    u = staged;
    v = staged + h;
    sig = staged + h + w;
  }

  const sn_layer_desc_t *d = &layer->desc;
  ck_writer_t wr = {(unsigned char *)buf};
  memcpy(wr.p, ck_magic, sizeof ck_magic);
  wr.p += sizeof ck_magic;
  w_u32(&wr, CK_VERSION);
  w_u32(&wr, CK_FIXED + 8u * (uint32_t)d->ndim);
  w_u32(&wr, (uint32_t)d->ndim);
  for (int k = 0; k < d->ndim; ++k) w_i64(&wr, d->shape[k]);
  w_i32(&wr, d->dim);
  w_u32(&wr, (uint32_t)d->dtype);
  w_i32(&wr, d->n_power_iterations);
  w_f32(&wr, d->eps);
  w_i32(&wr, d->warmup_iterations);
  w_u32(&wr, (uint32_t)d->order);
  w_f32(&wr, d->norm_bound);
  w_u64(&wr, d->seed);
  w_u32(&wr, layer->warmed_up ? 1u : 0u);
  w_u64(&wr, layer->forwards);
  w_i64(&wr, h);
  w_i64(&wr, w);
  for (int64_t i = 0; i < h; ++i) w_f32(&wr, u[i]);
  for (int64_t j = 0; j < w; ++j) w_f32(&wr, v[j]);
  for (int k = 0; k < 3; ++k) w_f32(&wr, sig[k]);
  uint32_t health;
  memcpy(&health, &sig[3], sizeof health);
  w_u32(&wr, health & CK_HEALTH_BITS);
  free(staged);
  put_u32(wr.p, crc32c((const unsigned char *)buf, need - 4));
  if (written) *written = need;
  return SN_SUCCESS;
}

/* ---- load ----------------------------------------------------------------------------------- */

/* Every field of a parsed blob. */
typedef struct {
  uint32_t ndim;
  int64_t shape[SN_MAX_DIMS];
  int32_t dim;
  uint32_t dtype;
  int32_t n_power_iterations;
  float eps;
  int32_t warmup_iterations;
  uint32_t order;
  float norm_bound;
  uint64_t seed;
  uint32_t warmed_up;
  uint64_t forwards;
  int64_t h, w;
  const unsigned char *u, *v, *sigma; /* inside the blob */
  uint32_t health;                    /* the health word the load installs */
} ck_blob_t;

/* A stored 1/σ of a σ > 2^126, whose 1/σ is subnormal: 0 (a process flushing subnormals wrote it),
 * or within one step of the subnormal grid (2^-149) of the exact 1/σ. Read from the bits and
 * computed in double, so that a loader flushing subnormals reads it as written. */
static int subnormal_inverse_ok(float sigma, float inv) {
  uint32_t bits;
  memcpy(&bits, &inv, sizeof bits);
  if (bits >> 23) return 0; /* the sign or an exponent: not +0 or a positive subnormal */
  return bits == 0 || fabs((double)bits - ldexp(1.0 / (double)sigma, 149)) <= 1.0;
}

/* Parse and check a blob on its own (not against a layer). Reads only inside buf[0, size). */
static sn_status_t parse(const unsigned char *p, size_t size, ck_blob_t *b) {
  if (size < CK_PREFIX)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "size = %zu bytes is too short for a checkpoint (at least %u bytes of header)",
                    size, CK_PREFIX + 4u);
  if (memcmp(p, ck_magic, sizeof ck_magic) != 0)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "buf does not start with the checkpoint magic \"SPECNRM\\0\": not a specnorm "
                    "checkpoint");
  const uint32_t version = get_u32(p + 8);
  if (version > CK_VERSION)
    return sn__fail(SN_ERROR_CHECKPOINT_VERSION,
                    "buf is a checkpoint of format version %u; this library (%s) reads versions up "
                    "to %u",
                    version, SN_VERSION_STRING, CK_VERSION);
  if (version == 0) return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf has format version 0, which does not exist");
  const uint32_t header = get_u32(p + 12);
  if (size < CK_PREFIX + 4u)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "size = %zu bytes is truncated inside the header", size);
  b->ndim = get_u32(p + 16);
  if (b->ndim < 1 || b->ndim > SN_MAX_DIMS)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: ndim = %u is outside 1..%d", b->ndim, SN_MAX_DIMS);
  if (header != CK_FIXED + 8u * b->ndim)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "buf: header bytes = %u, but a version-%u header of ndim %u has %u bytes", header,
                    version, b->ndim, CK_FIXED + 8u * b->ndim);
  if (size < (size_t)header)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "size = %zu bytes is truncated inside the header (%u bytes)", size, header);

  /* The header is in bounds: read it. */
  const unsigned char *q = p + 20;
  for (uint32_t k = 0; k < b->ndim; ++k, q += 8) b->shape[k] = get_i64(q);
  b->dim = get_i32(q); q += 4;
  b->dtype = get_u32(q); q += 4;
  b->n_power_iterations = get_i32(q); q += 4;
  b->eps = get_f32(q); q += 4;
  b->warmup_iterations = get_i32(q); q += 4;
  b->order = get_u32(q); q += 4;
  b->norm_bound = get_f32(q); q += 4;
  b->seed = get_u64(q); q += 8;
  b->warmed_up = get_u32(q); q += 4;
  b->forwards = get_u64(q); q += 8;
  b->h = get_i64(q); q += 8;
  b->w = get_i64(q);

  /* The length the header announces, from h and w alone (a corrupted h or w must not make us
   * read outside buf: compare in a form that cannot overflow). After u and v: the tail words and
   * the checksum. */
  if (b->h < 1 || b->w < 1)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: h = %lld and w = %lld must both be >= 1",
                    (long long)b->h, (long long)b->w);
  const uint64_t extra = 4u * (tail_words(version) + 1u);
  const uint64_t body = (uint64_t)(size - header); /* bytes after the header */
  const uint64_t room = body / 4u;                  /* floats that would fit */
  if (body < extra || (uint64_t)b->h > room - extra / 4u ||
      (uint64_t)b->w > room - extra / 4u - (uint64_t)b->h)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "size = %zu bytes is truncated: the header announces h = %lld, w = %lld, which "
                    "need %u + 4·(h + w) + %u bytes",
                    size, (long long)b->h, (long long)b->w, header, (unsigned)extra);
  const uint64_t total = (uint64_t)header + extra + 4u * ((uint64_t)b->h + (uint64_t)b->w);
  if ((uint64_t)size != total)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "size = %zu bytes, but the checkpoint is %llu bytes long (%llu trailing bytes)",
                    size, (unsigned long long)total, (unsigned long long)((uint64_t)size - total));
  const uint32_t stored = get_u32(p + size - 4);
  const uint32_t actual = crc32c(p, size - 4);
  if (stored != actual)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "buf: checksum mismatch (stored CRC-32C 0x%08x, computed 0x%08x): the "
                    "checkpoint is corrupted",
                    stored, actual);

  /* Field ranges: what sn_layer_create and sn_layer_set_state would accept. */
  int64_t numel = 1;
  for (uint32_t k = 0; k < b->ndim; ++k) {
    if (b->shape[k] <= 0)
      return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: shape[%u] = %lld must be > 0", k,
                      (long long)b->shape[k]);
    if (numel > (INT64_MAX / 4) / b->shape[k])
      return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                      "buf: the element count overflows 64-bit byte sizes at shape[%u] = %lld", k,
                      (long long)b->shape[k]);
    numel *= b->shape[k];
  }
  if (b->dim < 0 || (uint32_t)b->dim >= b->ndim)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: dim = %d must be in [0, %u)", (int)b->dim, b->ndim);
  if (b->h != b->shape[b->dim] || b->w != numel / b->h)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                    "buf: h = %lld, w = %lld do not match shape and dim (h = %lld, w = %lld)",
                    (long long)b->h, (long long)b->w, (long long)b->shape[b->dim],
                    (long long)(numel / b->shape[b->dim]));
  if (b->dtype != SN_DTYPE_FLOAT32 && b->dtype != SN_DTYPE_FLOAT16 && b->dtype != SN_DTYPE_BFLOAT16)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: dtype = %u is not a sn_dtype_t", b->dtype);
  if (b->n_power_iterations < 1 || b->n_power_iterations > CK_MAX_ITERATIONS)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: n_power_iterations = %d must be in 1..%d",
                    (int)b->n_power_iterations, CK_MAX_ITERATIONS);
  if (!(b->eps > 0.0f) || !isfinite(b->eps))
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: eps = %g must be finite and > 0", (double)b->eps);
  if (b->warmup_iterations < 0 || b->warmup_iterations > CK_MAX_ITERATIONS)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: warmup_iterations = %d must be in 0..%d",
                    (int)b->warmup_iterations, CK_MAX_ITERATIONS);
  if (b->order != SN_ORDER_U_FIRST && b->order != SN_ORDER_V_FIRST)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: order = %u is not a sn_order_t", b->order);
  if (!(b->norm_bound >= 0.0f) || !isfinite(b->norm_bound))
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: norm_bound = %g must be finite and >= 0",
                    (double)b->norm_bound);
  if (b->warmed_up > 1u)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: warmed_up = %u must be 0 or 1", b->warmed_up);

  b->u = p + header;
  b->v = b->u + 4 * b->h;
  b->sigma = b->v + 4 * b->w;
  int zero_u = 1, zero_v = 1;
  for (int64_t i = 0; i < b->h; ++i) {
    const float x = get_f32(b->u + 4 * i);
    if (!isfinite(x)) return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: u[%lld] = %g is not finite", (long long)i, (double)x);
    zero_u = zero_u && x == 0.0f;
  }
  for (int64_t j = 0; j < b->w; ++j) {
    const float x = get_f32(b->v + 4 * j);
    if (!isfinite(x)) return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: v[%lld] = %g is not finite", (long long)j, (double)x);
    zero_v = zero_v && x == 0.0f;
  }
  const float sigma = get_f32(b->sigma), inv = get_f32(b->sigma + 4);
  /* What a forward can commit: σ = 0 (no estimate yet) or a usable σ, and its 1/σ. */
  if (!(sigma == 0.0f || sn_sigma_usable(sigma)))
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: sigma = %g must be 0 or finite and >= FLT_MIN",
                    (double)sigma);
  /* 1/σ as every commit writes it (0 with no estimate): a consumer GEMM may take it as alpha.
   * (Below FLT_MIN, a 1/σ of σ > 2^126, either side may have flushed it to 0, as -ffast-math sets
   * up: subnormal_inverse_ok.) */
  const float inv_of_sigma = sigma > 0.0f ? 1.0f / sigma : 0.0f;
  const int tiny = sigma > 0.0f && 1.0 / (double)sigma < (double)FLT_MIN && subnormal_inverse_ok(sigma, inv);
  if (memcmp(&inv, &inv_of_sigma, sizeof inv) != 0 && !tiny)
    return sn__fail(SN_ERROR_BAD_CHECKPOINT, "buf: 1/sigma = %g is not 1/%g (%g)", (double)inv,
                    (double)sigma, (double)inv_of_sigma);
  /* The health word to install: version 2's as stored (a zero u of a 1-D layer with a zero
   * weight comes without the restart request, and must round-trip so); version 1 has none, and
   * gets what sn_layer_set_state leaves: cleared, the restart requested for a zero-norm u or v. */
  if (version >= 2u) {
    b->health = get_u32(b->sigma + 12);
    if (b->health & ~(uint32_t)CK_HEALTH_BITS)
      return sn__fail(SN_ERROR_BAD_CHECKPOINT,
                      "buf: health word 0x%08x has bits outside 0x%08x (the SN_HEALTH_* flags and "
                      "the restart request)",
                      b->health, (uint32_t)CK_HEALTH_BITS);
  } else {
    b->health = sn__health_after_set_state(b->ndim == 1, zero_u, zero_v);
  }
  /* The scale is not checked: a non-finite one (a γ that was not finite, or γ / σ beyond float
   * range) is what the forward left, and loads as it is, so that such a layer reloads its own
   * checkpoint (sn_layer_load). */
  return SN_SUCCESS;
}


/* The blob must describe this layer's weight: same shape, dim and dtype. */
static sn_status_t match(const sn_layer_t *l, const ck_blob_t *b) {
  const sn_layer_desc_t *d = &l->desc;
  int same_shape = (int)b->ndim == d->ndim;
  for (int k = 0; same_shape && k < d->ndim; ++k) same_shape = b->shape[k] == d->shape[k];
  if (!same_shape) {
    char have[160], want[160];
    size_t n = 0;
    have[0] = want[0] = '\0';
    for (uint32_t k = 0; k < b->ndim && n < sizeof have; ++k)
      n += (size_t)snprintf(have + n, sizeof have - n, k ? "x%lld" : "%lld", (long long)b->shape[k]);
    n = 0;
    for (int k = 0; k < d->ndim && n < sizeof want; ++k)
      n += (size_t)snprintf(want + n, sizeof want - n, k ? "x%lld" : "%lld", (long long)d->shape[k]);
    return sn__fail(SN_ERROR_CHECKPOINT_MISMATCH,
                    "buf is a checkpoint of a weight of shape %s; the layer's shape is %s", have, want);
  }
  if (b->dim != d->dim)
    return sn__fail(SN_ERROR_CHECKPOINT_MISMATCH, "buf is a checkpoint with dim = %d; the layer has dim = %d",
                    (int)b->dim, d->dim);
  if (b->dtype != (uint32_t)d->dtype)
    return sn__fail(SN_ERROR_CHECKPOINT_MISMATCH,
                    "buf is a checkpoint of a %s weight; the layer's dtype is %s",
                    b->dtype <= SN_DTYPE_BFLOAT16 ? sn_dtype_name((sn_dtype_t)b->dtype) : "?",
                    sn_dtype_name(d->dtype));
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_load(sn_layer_t *layer, const void *buf, size_t size,
                                 sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!buf) return sn__fail(SN_ERROR_NULL_POINTER, "buf is NULL");
  const void *in[1] = {buf};
  static const char *const names[1] = {"buf"};
  sn_status_t st = sn__check_host_arrays(1, in, names);
  if (st != SN_SUCCESS) return st;
  ck_blob_t b;
  memset(&b, 0, sizeof b);
  st = parse((const unsigned char *)buf, size, &b);
  if (st == SN_SUCCESS) st = match(layer, &b);
  if (st != SN_SUCCESS) return st;

  /* Everything checks out: decode the new state, then write it to the layer. */
  const int64_t h = layer->view.h, w = width_of(layer);
  const size_t bytes = (size_t)compact_floats(layer) * sizeof(float);
  float *state = malloc(bytes);
  if (!state) return sn__fail(SN_ERROR_ALLOCATION, "host staging buffer of %zu bytes for the checkpoint", bytes);
  for (int64_t i = 0; i < h; ++i) state[i] = get_f32(b.u + 4 * i);
  for (int64_t j = 0; j < w; ++j) state[h + j] = get_f32(b.v + 4 * j);
  float *sig = state + h + w;
  for (int k = 0; k < 3; ++k) sig[k] = get_f32(b.sigma + 4 * k);
  /* The saved scale is of another norm bound (by value: -0 and 0 are both no bound): recomputed,
   * as sn_layer_set_state does. */
  if (b.norm_bound != layer->desc.norm_bound)
    sig[2] = sig[0] > 0.0f ? 1.0f / sn_ref_divisor(sig[0], layer->desc.norm_bound) : 0.0f;
  /* parse: the blob's health word, or version 1's derived one; a non-finite scale installed is
   * recorded there even where the user had read and cleared SN_HEALTH_SCALE before saving. */
  if (!isfinite(sig[2])) b.health |= SN_HEALTH_SCALE;
  memcpy(&sig[3], &b.health, sizeof b.health);
  st = sn__put_state(layer, state, state + h, sig, stream, "copying the checkpoint's state to the device");
  free(state);
  if (st != SN_SUCCESS) return st;
  layer->warmed_up = (int)b.warmed_up;
  layer->forwards = b.forwards;
  return SN_SUCCESS;
}
