/* The CPU reference: every quantity of SPEC.md in double precision, written for clarity.
 * Loops run over W in memory order ([A][h][B]) so the reference stays usable on large weights.
 * They take W (and G, dW) a chunk of elements at a time as floats (sn_load's values: float32 in
 * place, the 2-byte types converted into a buffer), so that each inner loop is one plain loop over
 * floats, without a call per element. Every sum still adds its terms one at a time in the order of
 * the elements, so the results are those of one element at a time, bit for bit; ⟨G, W⟩ adds blocks
 * of SN_REF_INNER_BLOCK elements so, then the blocks' sums in block order. The products, the
 * division, the blocks of ⟨G, W⟩ and the backward's dW may be split over threads
 * (sn_ref_set_threads); each output (an element, a block's sum) is still one thread's sum in that
 * order, so the bits do not depend on the split. */
#include "sn_reference.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

enum { CHUNK = 512 };

static int64_t chunk_len(int64_t k, int64_t n) { return n - k < CHUNK ? n - k : CHUNK; }

/* Elements [k, k + n) of X (n <= CHUNK) as floats: X itself for float32, else `buf`. */
static const float *floats_at(const void *X, sn_dtype_t dt, int64_t k, int64_t n, float *buf) {
  if (dt == SN_DTYPE_FLOAT32) return (const float *)X + k;
  sn_load_n(X, dt, k, n, buf);
  return buf;
}

sn_view_t sn_ref_view(int ndim, const int64_t *shape, int dim) {
  sn_view_t v = {1, shape[dim], 1};
  for (int k = 0; k < dim; ++k) v.A *= shape[k];
  for (int k = dim + 1; k < ndim; ++k) v.B *= shape[k];
  return v;
}

/* ---- threads: every output element is computed by one range of a split, in the order of the
 * elements, so the results are the same bits for any number of threads ---- */

static _Thread_local int ref_threads = 1;
static _Thread_local int64_t ref_grain = SN_REF_GRAIN;
static _Atomic int64_t threads_started; /* by parallel_for, in the whole process */

int64_t sn_ref_threads_started(void) { return atomic_load(&threads_started); }

int sn_ref_set_threads(int n) {
  const int prev = ref_threads;
  ref_threads = n < 1 ? 1 : n > SN_REF_MAX_THREADS ? SN_REF_MAX_THREADS : n;
  return prev;
}

int64_t sn_ref_grain(void) { return ref_grain; }

int64_t sn_ref_set_grain(int64_t elements) {
  const int64_t prev = ref_grain;
  ref_grain = elements < 1 ? 1 : elements;
  return prev;
}

typedef void (*range_fn)(const void *ctx, int64_t begin, int64_t end);
typedef struct {
  range_fn fn;
  const void *ctx;
  int64_t begin, end;
} range_t;

static void *run_range(void *p) {
  const range_t *r = (const range_t *)p;
  r->fn(r->ctx, r->begin, r->end);
  return NULL;
}

/* The ranges r[0..parts): range 0 on the calling thread, each other on a thread of its own; a range
 * whose thread cannot be created runs on the calling thread afterwards. */
static void run_ranges(const range_t *r, int64_t parts) {
  pthread_t th[SN_REF_MAX_THREADS];
  int started[SN_REF_MAX_THREADS];
  for (int64_t k = 1; k < parts; ++k) {
    started[k] = pthread_create(&th[k], NULL, run_range, (void *)&r[k]) == 0;
    if (started[k]) atomic_fetch_add_explicit(&threads_started, 1, memory_order_relaxed);
  }
  run_range((void *)&r[0]);
  for (int64_t k = 1; k < parts; ++k) {
    if (started[k])
      pthread_join(th[k], NULL);
    else
      run_range((void *)&r[k]);
  }
}

/* How many parts `units` pieces of `work` split into: as many as sn_ref_set_threads allows, at a
 * grain of work a part, at most one a piece. */
static int64_t split_parts(int64_t work, int64_t units) {
  int64_t parts = ref_threads;
  if (parts > work / ref_grain) parts = work / ref_grain;
  return parts > units ? units : parts;
}

/* fn over [0, n) split in contiguous ranges of whole multiples of `align` (the last may end short),
 * split_parts of them for `work` (elements of W the whole range reads) (run_ranges). */
static void parallel_for(int64_t n, int64_t align, int64_t work, range_fn fn, const void *ctx) {
  const int64_t units = (n + align - 1) / align;
  const int64_t parts = split_parts(work, units);
  if (parts <= 1) {
    fn(ctx, 0, n);
    return;
  }
  range_t r[SN_REF_MAX_THREADS];
  const int64_t per = units / parts, extra = units % parts;
  for (int64_t k = 0, u = 0; k < parts; ++k) {
    const int64_t take = per + (k < extra ? 1 : 0);
    r[k] = (range_t){fn, ctx, u * align, u + take == units ? n : (u + take) * align};
    u += take;
  }
  run_ranges(r, parts);
}

/* sn_ref_run_tasks: a range of tasks, with the caller's grain and 1 thread (a task sets its own). */
typedef struct {
  sn_ref_task_fn fn;
  void *ctx;
  int64_t grain;
} tasks_t;

static void task_range(const void *p, int64_t begin, int64_t end) {
  const tasks_t *t = (const tasks_t *)p;
  const int64_t grain = sn_ref_set_grain(t->grain);
  const int threads = sn_ref_set_threads(1);
  for (int64_t k = begin; k < end; ++k) t->fn(t->ctx, (int)k);
  sn_ref_set_threads(threads);
  sn_ref_set_grain(grain);
}

void sn_ref_run_tasks(int n, const int64_t *work, sn_ref_task_fn fn, void *ctx) {
  const tasks_t tasks = {fn, ctx, ref_grain};
  int64_t total = 0;
  for (int k = 0; k < n; ++k) total += work[k] > 0 ? work[k] : 0;
  const int64_t parts = split_parts(total, n);
  if (parts <= 1) {
    task_range(&tasks, 0, n);
    return;
  }
  /* Range p ends after the first task at which the work so far reaches (p + 1) / parts of the total. */
  range_t r[SN_REF_MAX_THREADS];
  int64_t ranges = 0, begin = 0, sum = 0;
  for (int k = 0; k < n; ++k) {
    sum += work[k] > 0 ? work[k] : 0;
    if (ranges < parts - 1 && (double)sum * (double)parts >= (double)(ranges + 1) * (double)total) {
      r[ranges++] = (range_t){task_range, &tasks, begin, k + 1};
      begin = k + 1;
    }
  }
  if (begin < n) r[ranges++] = (range_t){task_range, &tasks, begin, n};
  run_ranges(r, ranges);
}

/* The loops over W (the products, the division, the backward's dW) are built twice: as the rest of
 * the library, and for AVX2 (4 doubles or 8 floats a step where the baseline x86-64 build takes 2
 * or 4), taken where the CPU has it (sn_cpu_features). Not for FMA: each element gets the same
 * operations in the same order, so the same bits (the Reference tests compare the loops with one
 * element at a time). x86-64 only: a 32-bit x86 baseline may do its double arithmetic on the x87
 * (extended precision), where the AVX2 build uses SSE2, which would change bits by CPU. SN_TWIN(name)
 * defines range function `name` over name##_body. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SN_TWIN(name)                                                                           \
  __attribute__((target("avx2"))) static void name##_avx2(const void *ctx, int64_t b, int64_t e) { \
    name##_body(ctx, b, e);                                                                     \
  }                                                                                             \
  static void name(const void *ctx, int64_t b, int64_t e) {                                     \
    if (sn_cpu_features() & SN_CPU_AVX2)                                                        \
      name##_avx2(ctx, b, e);                                                                   \
    else                                                                                        \
      name##_body(ctx, b, e);                                                                   \
  }
#else
#define SN_TWIN(name) \
  static void name(const void *ctx, int64_t b, int64_t e) { name##_body(ctx, b, e); }
#endif
#if defined(__GNUC__) || defined(__clang__)
#define SN_BODY static inline __attribute__((always_inline)) void
#else
#define SN_BODY static inline void
#endif

typedef struct {
  const void *W;
  sn_dtype_t dt;
  sn_view_t vw;
  const double *x; /* the vector multiplied */
  double *out;
} product_t;

/* acc[q] += Σ_{e < len} w(first + q·stride + e) · x[e] for q < count (at most DOTS): the runs of
 * W read a chunk at a time, DOTS sums in flight when there are DOTS, each adding its own terms in
 * e order (the same bits as one at a time). A sum is a chain of dependent additions, so its speed
 * is the adder's latency; eight chains keep the CPU's adders busy where four left them half idle. */
enum { DOTS = 8 };
SN_BODY dots_of_runs(const void *W, sn_dtype_t dt, int64_t first, int64_t stride, int count,
                     int64_t len, const double *x, double *acc) {
  float buf[DOTS][CHUNK];
  for (int64_t c0 = 0; c0 < len; c0 += CHUNK) {
    const int64_t n = chunk_len(c0, len);
    const float *r[DOTS];
    for (int q = 0; q < count; ++q) r[q] = floats_at(W, dt, first + q * stride + c0, n, buf[q]);
    const double *xc = x + c0;
    if (count == DOTS) {
      double s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3];
      double s4 = acc[4], s5 = acc[5], s6 = acc[6], s7 = acc[7];
      for (int64_t e = 0; e < n; ++e) {
        const double xe = xc[e];
        s0 += (double)r[0][e] * xe;
        s1 += (double)r[1][e] * xe;
        s2 += (double)r[2][e] * xe;
        s3 += (double)r[3][e] * xe;
        s4 += (double)r[4][e] * xe;
        s5 += (double)r[5][e] * xe;
        s6 += (double)r[6][e] * xe;
        s7 += (double)r[7][e] * xe;
      }
      acc[0] = s0, acc[1] = s1, acc[2] = s2, acc[3] = s3;
      acc[4] = s4, acc[5] = s5, acc[6] = s6, acc[7] = s7;
    } else {
      for (int q = 0; q < count; ++q)
        for (int64_t e = 0; e < n; ++e) acc[q] += (double)r[q][e] * xc[e];
    }
  }
}

/* t_i for the rows i in [i0, i1), DOTS at a time: DOTS sums in flight, each adding its own row's
 * terms in order. With B = 1 (dim −1: a row of M is strided, each a is a contiguous column of h)
 * a row's sum over b is its one term, added to t_i as 0 + term, as the general loop does. */
SN_BODY matvec_rows_body(const void *ctx, int64_t i_begin, int64_t i_end) {
  const product_t *p = (const product_t *)ctx;
  const sn_view_t vw = p->vw;
  const double *x = p->x;
  double *t = p->out;
  enum { R = DOTS };
  for (int64_t i = i_begin; i < i_end; ++i) t[i] = 0.0;
  if (vw.B == 1) {
    float buf[CHUNK];
    for (int64_t a = 0; a < vw.A; ++a)
      for (int64_t i0 = i_begin; i0 < i_end; i0 += CHUNK) {
        const int64_t n = chunk_len(i0, i_end);
        const float *col = floats_at(p->W, p->dt, a * vw.h + i0, n, buf);
        for (int64_t i = 0; i < n; ++i) t[i0 + i] += 0.0 + (double)col[i] * x[a];
      }
    return;
  }
  for (int64_t a = 0; a < vw.A; ++a) {
    for (int64_t i0 = i_begin; i0 < i_end; i0 += R) {
      const int rows = i_end - i0 < R ? (int)(i_end - i0) : R;
      double acc[R] = {0.0};
      dots_of_runs(p->W, p->dt, (a * vw.h + i0) * vw.B, vw.B, rows, vw.B, x + a * vw.B, acc);
      for (int q = 0; q < rows; ++q) t[i0 + q] += acc[q];
    }
  }
}
SN_TWIN(matvec_rows)

void sn_ref_matvec(const void *W, sn_dtype_t dt, sn_view_t vw, const double *x, double *t) {
  const product_t p = {W, dt, vw, x, t};
  /* Rows in ranges of 16 at least with B = 1 (a thread's part of a column of h is a whole number
   * of 64-byte lines of fp32), of any number else. */
  parallel_for(vw.h, vw.B == 1 ? 16 : 1, vw.A * vw.h * vw.B, matvec_rows, &p);
}

/* s_j for the columns j = a·B + b in [j0, j1), each the sum over the rows in row order. With B = 1
 * that is the sum over the contiguous column a. */
SN_BODY matvec_t_cols_body(const void *ctx, int64_t j_begin, int64_t j_end) {
  const product_t *p = (const product_t *)ctx;
  const sn_view_t vw = p->vw;
  const double *y = p->x;
  double *s = p->out;
  enum { R = 4 };
  if (vw.B == 1) { /* column a of M is W's contiguous a-th run of h: DOTS columns at a time, DOTS
                    * sums in flight, each adding its own column's terms in order (as M v's rows) */
    for (int64_t a0 = j_begin; a0 < j_end; a0 += DOTS) {
      const int cols = j_end - a0 < DOTS ? (int)(j_end - a0) : DOTS;
      double acc[DOTS] = {0.0};
      dots_of_runs(p->W, p->dt, a0 * vw.h, vw.h, cols, vw.h, y, acc);
      for (int q = 0; q < cols; ++q) s[a0 + q] = acc[q];
    }
    return;
  }
  /* Four rows a sweep over the range's columns: each s_j takes their four terms in row order, as
   * one row at a time would (the same bits), and is loaded and stored once for the four. */
  float buf[R][CHUNK];
  for (int64_t j = j_begin; j < j_end; ++j) s[j] = 0.0;
  for (int64_t a = j_begin / vw.B; a * vw.B < j_end; ++a) {
    /* this range's part [b_lo, b_hi) of the columns of a */
    const int64_t b_lo = j_begin > a * vw.B ? j_begin - a * vw.B : 0;
    const int64_t b_hi = j_end < (a + 1) * vw.B ? j_end - a * vw.B : vw.B;
    double *sa = s + a * vw.B;
    for (int64_t i0 = 0; i0 < vw.h; i0 += R) {
      const int rows = vw.h - i0 < R ? (int)(vw.h - i0) : R;
      const int64_t row0 = (a * vw.h + i0) * vw.B;
      for (int64_t b0 = b_lo; b0 < b_hi; b0 += CHUNK) {
        const int64_t n = chunk_len(b0, b_hi);
        const float *r[R];
        for (int q = 0; q < rows; ++q) r[q] = floats_at(p->W, p->dt, row0 + q * vw.B + b0, n, buf[q]);
        double *sb = sa + b0;
        if (rows == R) {
          const double y0 = y[i0], y1 = y[i0 + 1], y2 = y[i0 + 2], y3 = y[i0 + 3];
          for (int64_t b = 0; b < n; ++b) {
            double acc = sb[b];
            acc += (double)r[0][b] * y0;
            acc += (double)r[1][b] * y1;
            acc += (double)r[2][b] * y2;
            acc += (double)r[3][b] * y3;
            sb[b] = acc;
          }
        } else {
          for (int q = 0; q < rows; ++q)
            for (int64_t b = 0; b < n; ++b) sb[b] += (double)r[q][b] * y[i0 + q];
        }
      }
    }
  }
}
SN_TWIN(matvec_t_cols)

void sn_ref_matvec_t(const void *W, sn_dtype_t dt, sn_view_t vw, const double *y, double *s) {
  const product_t p = {W, dt, vw, y, s};
  /* Ranges of 16 columns at least: a thread's part of a row is a whole number of 64-byte lines of
   * fp32 (when B is a multiple of 16). */
  parallel_for(vw.A * vw.B, vw.B == 1 ? 1 : 16, vw.A * vw.h * vw.B, matvec_t_cols, &p);
}

double sn_ref_dot(const double *x, const double *y, int64_t n) {
  double acc = 0.0;
  for (int64_t k = 0; k < n; ++k) acc += x[k] * y[k];
  return acc;
}

double sn_ref_norm(const double *x, int64_t n) { return sqrt(sn_ref_dot(x, x, n)); }

double sn_ref_norm_divisor(double ssq, double eps) {
  if (eps < 0.0) return sqrt(ssq - eps); /* SN_EPS_ADD_SQUARED */
  const double norm = sqrt(ssq);
  return norm > eps ? norm : eps;
}

/* x ← N(x) = x / sn_ref_norm_divisor(‖x‖², eps); returns ‖x‖² before scaling. */
static double normalize(double *x, int64_t n, double eps) {
  const double ssq = sn_ref_dot(x, x, n), m = sn_ref_norm_divisor(ssq, eps);
  for (int64_t k = 0; k < n; ++k) x[k] /= m;
  return ssq;
}

double sn_ref_iterate(const void *W, sn_dtype_t dt, sn_view_t vw, double *u, double *v, double eps,
                      sn_order_t order) {
  int64_t h = vw.h, w = vw.A * vw.B;
  double last;
  if (order == SN_ORDER_U_FIRST) {
    sn_ref_matvec(W, dt, vw, v, u);   /* u = M v */
    normalize(u, h, eps);             /* u = N(M v) */
    sn_ref_matvec_t(W, dt, vw, u, v); /* v = Mᵀ u */
    last = normalize(v, w, eps);      /* v = N(Mᵀ u) */
  } else {
    sn_ref_matvec_t(W, dt, vw, u, v);
    normalize(v, w, eps);
    sn_ref_matvec(W, dt, vw, v, u);
    last = normalize(u, h, eps);
  }
  /* σ = uᵀ M v = ‖p‖² / max(‖p‖, eps) with p the last product (SPEC.md); with the squared eps,
   * ‖p‖² / sqrt(‖p‖² + eps), what uᵀ M v is there too. */
  return last / sn_ref_norm_divisor(last, eps);
}

double sn_ref_sigma(const void *W, sn_dtype_t dt, sn_view_t vw, const double *u, const double *v,
                    double *scratch) {
  sn_ref_matvec(W, dt, vw, v, scratch);
  return sn_ref_dot(u, scratch, vw.h);
}

float sn_ref_divisor(float sigma, float norm_bound) {
  if (norm_bound > 0.0f) {
    const float r = sigma / norm_bound;
    return r > 1.0f ? r : 1.0f;
  }
  return sigma;
}

typedef struct {
  const void *W;
  void *W_sn;
  sn_dtype_t dt;
  float sigma, d, g;
} divide_t;

SN_BODY divide_range_body(const void *ctx, int64_t begin, int64_t end) {
  const divide_t *p = (const divide_t *)ctx;
  float in[CHUNK], out[CHUNK];
  for (int64_t k0 = begin; k0 < end; k0 += CHUNK) { /* W_sn may be W: a chunk is read before it is written */
    const int64_t m = chunk_len(k0, end);
    const float *x = floats_at(p->W, p->dt, k0, m, in);
    if (p->sigma > 0.0f)
      for (int64_t e = 0; e < m; ++e) out[e] = (x[e] / p->d) * p->g;
    else
      for (int64_t e = 0; e < m; ++e) out[e] = x[e] * 0.0f;
    sn_store_n(p->W_sn, p->dt, k0, m, out);
  }
}
SN_TWIN(divide_range)

void sn_ref_divide(const void *W, void *W_sn, sn_dtype_t dt, int64_t n, float sigma,
                   float norm_bound, float g) {
  const divide_t p = {W, W_sn, dt, sigma, sn_ref_divisor(sigma, norm_bound), g};
  parallel_for(n, CHUNK, n, divide_range, &p);
}

typedef struct {
  const void *G, *W;
  sn_dtype_t dt;
  int64_t n, block0; /* the elements; the first block of this round */
  double *sums;      /* this round's block sums */
} inner_t;

/* The sums of blocks [block0 + begin, block0 + end), each over its elements in order: four whole
 * blocks at a time, four sums in flight (the last block of W may be short: alone). */
_Static_assert(SN_REF_INNER_BLOCK % CHUNK == 0, "whole chunks a block");
SN_BODY inner_blocks_body(const void *ctx, int64_t begin, int64_t end) {
  const inner_t *p = (const inner_t *)ctx;
  enum { R = 4 };
  float gb[R][CHUNK], wb[R][CHUNK];
  int64_t b = begin;
  for (; b + R <= end && (p->block0 + b + R) * SN_REF_INNER_BLOCK <= p->n; b += R) {
    const int64_t k_begin = (p->block0 + b) * SN_REF_INNER_BLOCK;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    for (int64_t c = 0; c < SN_REF_INNER_BLOCK; c += CHUNK) {
      const float *g[R], *w[R];
      for (int q = 0; q < R; ++q) {
        g[q] = floats_at(p->G, p->dt, k_begin + q * SN_REF_INNER_BLOCK + c, CHUNK, gb[q]);
        w[q] = floats_at(p->W, p->dt, k_begin + q * SN_REF_INNER_BLOCK + c, CHUNK, wb[q]);
      }
      for (int64_t e = 0; e < CHUNK; ++e) {
        s0 += (double)g[0][e] * (double)w[0][e];
        s1 += (double)g[1][e] * (double)w[1][e];
        s2 += (double)g[2][e] * (double)w[2][e];
        s3 += (double)g[3][e] * (double)w[3][e];
      }
    }
    p->sums[b] = s0, p->sums[b + 1] = s1, p->sums[b + 2] = s2, p->sums[b + 3] = s3;
  }
  for (; b < end; ++b) {
    const int64_t k_begin = (p->block0 + b) * SN_REF_INNER_BLOCK;
    const int64_t k_end = p->n - k_begin < SN_REF_INNER_BLOCK ? p->n : k_begin + SN_REF_INNER_BLOCK;
    double acc = 0.0;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += CHUNK) {
      const int64_t m = chunk_len(k0, k_end);
      const float *g = floats_at(p->G, p->dt, k0, m, gb[0]), *w = floats_at(p->W, p->dt, k0, m, wb[0]);
      for (int64_t e = 0; e < m; ++e) acc += (double)g[e] * (double)w[e];
    }
    p->sums[b] = acc;
  }
}
SN_TWIN(inner_blocks)

/* Rounds of up to ROUND blocks (4M elements): their sums in parallel into a buffer on the stack,
 * then added to the total in block order on the calling thread. */
double sn_ref_inner(const void *G, const void *W, sn_dtype_t dt, int64_t n) {
  enum { ROUND = 64 };
  double sums[ROUND], total = 0.0;
  const int64_t blocks = (n + SN_REF_INNER_BLOCK - 1) / SN_REF_INNER_BLOCK;
  for (int64_t b0 = 0; b0 < blocks; b0 += ROUND) {
    const int64_t count = blocks - b0 < ROUND ? blocks - b0 : ROUND;
    const inner_t p = {G, W, dt, n, b0, sums};
    const int64_t first = b0 * SN_REF_INNER_BLOCK;
    const int64_t elements = n - first < count * SN_REF_INNER_BLOCK ? n - first : count * SN_REF_INNER_BLOCK;
    parallel_for(count, 1, elements, inner_blocks, &p);
    for (int64_t b = 0; b < count; ++b) total += sums[b];
  }
  return total;
}

/* m elements of dW = a·G − b·u_i·v_j (+ dW) from `g` (and `old`, accumulating) into `out`:
 * element e has u_i = uu[e·us] and v_j = vv[e·vs] (a stride of 0 holds one across the run). */
SN_BODY backward_run(double a, double b, const float *g, const float *old, const float *uu,
                    int64_t us, const float *vv, int64_t vs, int64_t m, float *out) {
  for (int64_t e = 0; e < m; ++e) {
    double x = a * g[e] - b * (double)uu[e * us] * (double)vv[e * vs];
    if (old) x += old[e];
    out[e] = (float)x;
  }
}

typedef struct {
  const void *G;
  void *dW;
  sn_dtype_t dt;
  sn_view_t vw;
  const float *u, *v;
  double a, b;
  int accumulate;
} backward_t;

/* Runs of contiguous elements, each read before it is written (dW may be G): a row's B elements
 * (one u_i, B of v); with B = 1 (dim −1), an A's h elements (h of u, one v_A). */
SN_BODY backward_runs_body(const void *ctx, int64_t r_begin, int64_t r_end) {
  const backward_t *p = (const backward_t *)ctx;
  const sn_view_t vw = p->vw;
  float gb[CHUNK], db[CHUNK], out[CHUNK];
  const int by_rows = vw.B > 1;
  const int64_t len = by_rows ? vw.B : vw.h;
  for (int64_t r = r_begin; r < r_end; ++r)
    for (int64_t c0 = 0; c0 < len; c0 += CHUNK) {
      const int64_t k = r * len + c0, m = chunk_len(c0, len);
      const float *gk = floats_at(p->G, p->dt, k, m, gb);
      const float *old = p->accumulate ? floats_at(p->dW, p->dt, k, m, db) : NULL;
      if (by_rows) /* row r = A·h + i */
        backward_run(p->a, p->b, gk, old, p->u + r % vw.h, 0, p->v + (r / vw.h) * vw.B + c0, 1, m, out);
      else /* A = r */
        backward_run(p->a, p->b, gk, old, p->u + c0, 1, p->v + r, 0, m, out);
      sn_store_n(p->dW, p->dt, k, m, out);
    }
}
SN_TWIN(backward_runs)

double sn_ref_backward(const void *W, const void *G, void *dW, sn_dtype_t dt, sn_view_t vw,
                       const float *u, const float *v, float sigma, float norm_bound, float g,
                       float clamp_eps, int detach_sigma, int accumulate) {
  const int64_t n = vw.A * vw.h * vw.B;
  /* σ <= 0 (no σ yet): a = b = 0, so dW = 0·G (+ dW): ±0, and NaN where G is not finite, as the
   * GPU's kernels compute it (the derivative of W_sn = W · 0). (The GPU forms u_i·v_j in float:
   * with vectors set by hand so large that it overflows, its 0·inf is NaN where this gives ±0.) */
  const int have_sigma = sigma > 0.0f;
  const double d = sn_ref_divisor(sigma, norm_bound);
  const double gw = have_sigma ? sn_ref_inner(G, W, dt, n) : 0.0;
  const double a = have_sigma ? (double)g / d : 0.0;
  const int depends = have_sigma && !detach_sigma && !(norm_bound > 0.0f && sigma <= norm_bound) &&
                      !(sigma <= clamp_eps);
  const double b = depends ? a * gw / (double)sigma : 0.0;
  const backward_t p = {G, dW, dt, vw, u, v, a, b, accumulate};
  parallel_for(vw.B > 1 ? vw.A * vw.h : vw.A, 1, n, backward_runs, &p);
  return have_sigma ? gw / d : 0.0;
}
