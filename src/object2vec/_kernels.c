/* The package's loops in C, each a pass over memory that PyTorch's kernels make in several (or
 * with more setup). All are optional: where this extension was not built (no C compiler at
 * install) the same results come from PyTorch or numpy (object2vec/native.py says which is in use).
 *
 * row_adam_step: lazy Adam's update of chosen rows of [rows, dim] float32 tables, in place, in
 * one pass (training/sparse_adam.py, SparseRowAdam). Nothing is gathered: each used row of the
 * weights and of both moments is read once, updated and written back where it lies, so a step
 * moves the least memory it can (four rows read, three written). The arithmetic is that of
 * PyTorch's fused CPU Adam kernel on CPUs with FMA, operation by operation in float32, so both
 * give the same bits (tested on x86-64 with AVX2 and FMA: tests/test_sparse_adam.py):
 *
 *     m = fma(c, g - m, m)              the lerp of m towards g by c = 1 - beta1 (for |c| < 0.5;
 *                                       fma(c - 1, g - m, g) otherwise, as torch's lerp)
 *     v = fma(g * (1 - beta2), g, v * beta2)
 *     w = w - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)
 *
 * Built with -ffp-contract=off and -fno-fast-math, so that the compiler fuses or reorders
 * nothing; on x86-64 the loop is compiled twice, with and without the FMA instruction, and chosen
 * by what the CPU has (fmaf gives the same bits either way, the instruction just faster).
 *
 * dropout_mask: dropout's scaled keep-mask from a counter-based stream (nn/dropout.py), whose
 * numpy twin there gives the same bits.
 *
 * bag_mean: the pooled encoder's mean of token rows per sequence, for inference passes of a few
 * requests (nn/inference.py), with the bits of PyTorch's embedding_bag path.
 *
 * Work is split into contiguous ranges, one per thread of torch's OpenMP pool (run_split; one
 * thread where the compiler has no OpenMP); rows are read ahead where the compiler has
 * __builtin_prefetch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many values a call runs on the calling thread alone (handing work to other threads
 * and waiting for them costs microseconds). */
#define MIN_VALUES_PER_THREAD (1 << 15)
/* Rows are asked of memory this many rows before they are updated: the rows lie scattered over
 * tables far larger than the caches, and waiting for each one in turn took up to 3.5x longer
 * (1.6-1.9 against 6-7 ms for 13,000 rows of a 3,000,000 x 64 table; 4.9-5.2 against 5.9-6.8 ms
 * for 13,000 of 267,522 x 300). */
#define AHEAD 8
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH_FOR_WRITE(address) __builtin_prefetch((address), 1)
#define PREFETCH_FOR_READ(address) __builtin_prefetch((address), 0)
#else
#define PREFETCH_FOR_WRITE(address) ((void)(address))
#define PREFETCH_FOR_READ(address) ((void)(address))
#endif
#if defined(_MSC_VER)
#define restrict __restrict
#endif

/* A loop `name(job, begin, end)` over part of a job, compiled from BODY (a macro reading job,
 * begin and end) twice on x86-64, for any CPU and with AVX2, and chosen by what the CPU has: the
 * same operations either way (the build lets nothing fuse), only more of them an instruction. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LOOP_WITH_AVX2(name, BODY)                                                              \
    static void name##_portable(const void *job, Py_ssize_t begin, Py_ssize_t end) { BODY }     \
    __attribute__((target("avx2"))) static void name##_avx2(const void *job, Py_ssize_t begin,  \
                                                             Py_ssize_t end) {                  \
        BODY                                                                                    \
    }                                                                                           \
    static void name(const void *job, Py_ssize_t begin, Py_ssize_t end) {                       \
        if (__builtin_cpu_supports("avx2"))                                                     \
            name##_avx2(job, begin, end);                                                       \
        else                                                                                    \
            name##_portable(job, begin, end);                                                   \
    }
#else
#define LOOP_WITH_AVX2(name, BODY) \
    static void name(const void *job, Py_ssize_t begin, Py_ssize_t end) { BODY }
#endif

typedef struct {
    float *weight, *exp_avg, *exp_avg_sq;
    const float *grad;
    const int64_t *rows;
    Py_ssize_t begin, end, dim;
    float lerp_weight, beta2, grad_coefficient2, step_size, bias_correction2_sqrt, eps;
} RowRange;

#define UPDATE_ROWS_BODY                                                                        \
    const Py_ssize_t dim = work->dim;                                                           \
    const int near = fabsf(work->lerp_weight) < 0.5f;                                            \
    const float coefficient = near ? work->lerp_weight : work->lerp_weight - 1.0f;               \
    for (Py_ssize_t i = work->begin; i < work->end; i++) {                                      \
        const Py_ssize_t row = (Py_ssize_t)work->rows[i];                                       \
        float *w = work->weight + row * dim;                                                    \
        float *m = work->exp_avg + row * dim;                                                   \
        float *v = work->exp_avg_sq + row * dim;                                                \
        const float *g = work->grad + i * dim;                                                  \
        if (i + AHEAD < work->end) {                                                            \
            const Py_ssize_t next = (Py_ssize_t)work->rows[i + AHEAD] * dim;                    \
            for (Py_ssize_t d = 0; d < dim; d += 16) { /* one 64-byte line of 16 floats */      \
                PREFETCH_FOR_WRITE(work->weight + next + d);                                     \
                PREFETCH_FOR_WRITE(work->exp_avg + next + d);                                    \
                PREFETCH_FOR_WRITE(work->exp_avg_sq + next + d);                                 \
            }                                                                                   \
        }                                                                                       \
        for (Py_ssize_t d = 0; d < dim; d++) {                                                  \
            const float exp_avg = fmaf(coefficient, g[d] - m[d], near ? m[d] : g[d]);           \
            const float exp_avg_sq = fmaf(g[d] * work->grad_coefficient2, g[d], v[d] * work->beta2); \
            const float denom = sqrtf(exp_avg_sq) / work->bias_correction2_sqrt + work->eps;    \
            m[d] = exp_avg;                                                                     \
            v[d] = exp_avg_sq;                                                                  \
            w[d] = w[d] - work->step_size * exp_avg / denom;                                    \
        }                                                                                       \
    }

static void update_rows_portable(const RowRange *work) { UPDATE_ROWS_BODY }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("fma"))) static void update_rows_fma(const RowRange *work) { UPDATE_ROWS_BODY }

static void update_rows(const RowRange *work) {
    if (__builtin_cpu_supports("fma"))
        update_rows_fma(work);
    else
        update_rows_portable(work);
}
#else
static void update_rows(const RowRange *work) { update_rows_portable(work); }
#endif

/* The start of part t of [0, count) cut into n parts, moved down to a multiple of align:
 * count * t / n without the product (which could overflow a 32-bit size). */
static Py_ssize_t part_start(Py_ssize_t count, int t, int n, Py_ssize_t align) {
    if (t >= n) return count;
    Py_ssize_t start = count / n * t + count % n * t / n;
    return start - start % align;
}

/* Runs work(job, begin, end) over [0, count) split into up to `threads` ranges, each starting on
 * a multiple of `align`; values_per_item sizes the split (no thread gets under
 * MIN_VALUES_PER_THREAD values). The threads are OpenMP's: the extension links libgomp, and
 * since object2vec/native.py imports torch first, that is the libgomp torch has loaded, so these
 * loops run on torch's own thread pool. Threads of a pool of their own (POSIX threads, tried
 * first) competed with torch's, whose threads spin for a while after each operation: the whole
 * document-embedding step, not only the update, was 25% slower. */
static void run_split(void (*work)(const void *, Py_ssize_t, Py_ssize_t), const void *job, Py_ssize_t count,
                      Py_ssize_t values_per_item, Py_ssize_t align, int threads) {
    Py_ssize_t most = count * values_per_item / MIN_VALUES_PER_THREAD;
    if (threads > most) threads = (int)(most > 1 ? most : 1);
#ifdef _OPENMP
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), n = omp_get_num_threads();
            work(job, part_start(count, t, n, align), part_start(count, t + 1, n, align));
        }
        return;
    }
#endif
    work(job, 0, count);
}

static void update_row_range(const void *job, Py_ssize_t begin, Py_ssize_t end) {
    RowRange work = *(const RowRange *)job;
    work.begin = begin;
    work.end = end;
    update_rows(&work);
}

static int get_table(PyObject *obj, Py_buffer *view, const char *name, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->ndim != 2 || view->itemsize != 4 || strcmp(view->format, "f") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a 2-D C-contiguous float32 array", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int get_vector(PyObject *obj, Py_buffer *view, const char *name, const char *kind, Py_ssize_t itemsize) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *format = view->format;
    int matches = itemsize == 4 ? strcmp(format, "f") == 0 : (strcmp(format, "q") == 0 || strcmp(format, "l") == 0);
    if (view->ndim != 1 || view->itemsize != itemsize || !matches) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-D contiguous %s array", name, kind);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(row_adam_step_doc,
    "row_adam_step(weight, exp_avg, exp_avg_sq, grad, rows, step_size, lerp_weight, beta2,\n"
    "              grad_coefficient2, bias_correction2_sqrt, eps, threads)\n\n"
    "Adam's update of rows `rows` (int64, strictly increasing, each in range) of the [N, dim]\n"
    "float32 tables weight, exp_avg and exp_avg_sq, in place; grad holds one [dim] row per entry\n"
    "of rows, in order.\n"
    "The coefficients are those of PyTorch's fused Adam kernel, rounded to float32 by the call.");

static PyObject *row_adam_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[5];
    float step_size, lerp_weight, beta2, coefficient2, bias_correction2_sqrt, eps;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOOffffffi", &objects[0], &objects[1], &objects[2], &objects[3],
                          &objects[4], &step_size, &lerp_weight, &beta2, &coefficient2,
                          &bias_correction2_sqrt, &eps, &threads))
        return NULL;
    static const char *names[4] = {"weight", "exp_avg", "exp_avg_sq", "grad"};
    Py_buffer views[5];
    int taken = 0;
    PyObject *result = NULL;
    for (; taken < 4; taken++)
        if (get_table(objects[taken], &views[taken], names[taken], taken < 3) < 0) goto done;
    if (get_vector(objects[4], &views[4], "rows", "int64", 8) < 0) goto done;
    taken = 5;
    Py_ssize_t table_rows = views[0].shape[0], dim = views[0].shape[1], count = views[4].shape[0];
    for (int t = 1; t < 3; t++) {
        if (views[t].shape[0] != table_rows || views[t].shape[1] != dim) {
            PyErr_Format(PyExc_ValueError, "%s must have the weight's shape", names[t]);
            goto done;
        }
    }
    if (views[3].shape[0] != count || views[3].shape[1] != dim) {
        PyErr_SetString(PyExc_ValueError, "grad must hold one row of the weight's width per entry of rows");
        goto done;
    }
    const int64_t *rows = (const int64_t *)views[4].buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (rows[i] < 0 || rows[i] >= table_rows) {
            PyErr_Format(PyExc_IndexError, "row %lld is outside a table of %zd rows", (long long)rows[i],
                         table_rows);
            goto done;
        }
        if (i > 0 && rows[i] <= rows[i - 1]) { /* a row twice would be updated twice, maybe at once */
            PyErr_SetString(PyExc_ValueError, "rows must be strictly increasing");
            goto done;
        }
    }
    RowRange all = {
        (float *)views[0].buf, (float *)views[1].buf, (float *)views[2].buf, (const float *)views[3].buf,
        rows, 0, count, dim, lerp_weight, beta2, coefficient2, step_size, bias_correction2_sqrt, eps,
    };
    Py_BEGIN_ALLOW_THREADS
    run_split(update_row_range, &all, count, dim, 1, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int t = 0; t < taken; t++) PyBuffer_Release(&views[t]);
    return result;
}


/* splitmix64's output for the counter value `seed + (word + 1) * golden`: a 64-bit mix that
 * passes BigCrush as a generator, each word computable on its own, so any split of the work
 * gives the same stream. */
static inline uint64_t splitmix64(uint64_t seed, uint64_t word) {
    uint64_t z = seed + (word + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct {
    float *out;
    uint64_t seed;
    uint32_t threshold;
    float scale;
} MaskJob;

/* A value of the mask from its 32-bit draw: scale when the draw is at least threshold, else 0. */
static inline float keep(const MaskJob *mask, uint32_t draw) {
    return (float)(draw >= mask->threshold) * mask->scale;
}

/* Values [begin, end) of the mask (begin even): value i is the low (even i) or high (odd i) half
 * of word i / 2. */
#define FILL_MASK_BODY                                                                          \
    const MaskJob *mask = (const MaskJob *)job;                                                 \
    Py_ssize_t i = begin;                                                                       \
    for (; i + 1 < end; i += 2) {                                                               \
        const uint64_t z = splitmix64(mask->seed, (uint64_t)(i / 2));                           \
        mask->out[i] = keep(mask, (uint32_t)z);                                                 \
        mask->out[i + 1] = keep(mask, (uint32_t)(z >> 32));                                     \
    }                                                                                           \
    if (i < end) mask->out[i] = keep(mask, (uint32_t)splitmix64(mask->seed, (uint64_t)(i / 2)));

/* With AVX2 the loop runs four words a vector: 0.22 against 1.45 ms for 262,144 values here. */
LOOP_WITH_AVX2(fill_mask, FILL_MASK_BODY)

PyDoc_STRVAR(dropout_mask_doc,
    "dropout_mask(out, seed, threshold, scale, threads)\n\n"
    "Fills the C-contiguous float32 array out with dropout's keep-mask: value i is scale where\n"
    "the i-th 32-bit draw of the splitmix64 stream of seed (the low then the high half of each\n"
    "64-bit word) is at least threshold, else 0.");

static PyObject *dropout_mask(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *object;
    unsigned long long seed;
    unsigned long threshold;
    float scale;
    int threads;
    if (!PyArg_ParseTuple(args, "OKkfi", &object, &seed, &threshold, &scale, &threads)) return NULL;
    if (threshold > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "threshold must fit 32 bits");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(object, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        return NULL;
    if (view.itemsize != 4 || strcmp(view.format, "f") != 0) {
        PyErr_SetString(PyExc_TypeError, "out must be a C-contiguous float32 array");
        PyBuffer_Release(&view);
        return NULL;
    }
    MaskJob job = {(float *)view.buf, (uint64_t)seed, (uint32_t)threshold, scale};
    Py_ssize_t count = view.len / 4;
    Py_BEGIN_ALLOW_THREADS
    run_split(fill_mask, &job, count, 1, 2, threads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

typedef struct {
    const float *table, *bias;
    const int64_t *tokens, *offsets;
    float *out;
    Py_ssize_t dim;
    int64_t max_len; /* each bag's first max_len tokens only; < 0: all of them */
} BagJob;

/* Bags [begin, end): each output row the sum of its tokens' table rows, in token order, divided
 * by the token count (1 for an empty bag) and plus the bias: float32 operations in the order of
 * PyTorch's embedding_bag(mode="sum"), div_ and add_ (nn/inference.py:_pooled), so the same bits.
 * Rows are read BAG_AHEAD tokens ahead in the column, across bags (past a bag's max_len cut too). For a few bags this takes 3-12 us where
 * embedding_bag takes 10-30 (its setup); from about a thousand tokens embedding_bag, which keeps
 * more rows in flight from memory, is faster (1,000 bags of 5-32 rows of 256: 1.2-1.3 against
 * 0.7-0.9 ms, one thread), and nn/inference.py calls it there instead. */
#define BAG_AHEAD 4
#define MEAN_BAGS_BODY                                                                          \
    const BagJob *bags = (const BagJob *)job;                                                   \
    const Py_ssize_t dim = bags->dim;                                                           \
    const float *restrict table = bags->table;                                                  \
    const int64_t *restrict tokens = bags->tokens;                                              \
    const int64_t stop = begin < end ? bags->offsets[end] : 0;                                  \
    for (int64_t i = begin < end ? bags->offsets[begin] : 0; i < stop && i < bags->offsets[begin] + BAG_AHEAD; i++) \
        for (Py_ssize_t d = 0; d < dim; d += 16) PREFETCH_FOR_READ(table + tokens[i] * dim + d); \
    for (Py_ssize_t bag = begin; bag < end; bag++) {                                            \
        float *restrict out = bags->out + bag * dim;                                            \
        const int64_t first = bags->offsets[bag], end_of_bag = bags->offsets[bag + 1];          \
        const int64_t last =                                                                    \
            bags->max_len >= 0 && end_of_bag - first > bags->max_len ? first + bags->max_len : end_of_bag; \
        for (Py_ssize_t d = 0; d < dim; d++) out[d] = 0.0f;                                     \
        for (int64_t i = first; i < last; i++) {                                                \
            if (i + BAG_AHEAD < stop) {                                                         \
                const float *next = table + tokens[i + BAG_AHEAD] * dim;                        \
                for (Py_ssize_t d = 0; d < dim; d += 16) PREFETCH_FOR_READ(next + d);           \
            }                                                                                   \
            const float *restrict row = table + tokens[i] * dim;                                \
            for (Py_ssize_t d = 0; d < dim; d++) out[d] = out[d] + row[d];                      \
        }                                                                                       \
        const float count = (float)(last > first ? last - first : 1);                           \
        for (Py_ssize_t d = 0; d < dim; d++) out[d] = out[d] / count;                           \
        if (bags->bias != NULL)                                                                 \
            for (Py_ssize_t d = 0; d < dim; d++) out[d] = out[d] + bags->bias[d];               \
    }

/* AVX2: eight floats an instruction instead of SSE2's four (adds and divisions: the same bits). */
LOOP_WITH_AVX2(mean_bags, MEAN_BAGS_BODY)

PyDoc_STRVAR(bag_mean_doc,
    "bag_mean(table, tokens, offsets, bias, out, max_len, threads)\n\n"
    "out[i] = mean of table[tokens[offsets[i]:offsets[i+1]][:max_len]] (zeros for an empty bag)\n"
    "+ bias (max_len < 0: every token; every token must be in the table, cut or not):\n"
    "the pooled encodings of nn/inference.py with the bits of PyTorch's embedding_bag(mode='sum'),\n"
    "div_ by the length and add_ of the bias. table [V, D] and out [n, D] float32, tokens and\n"
    "offsets ([n + 1], non-decreasing) int64, bias a [D] float32 array or None.\n"
    "tokens and offsets may also be two lists of such arrays, one pair per column: the columns'\n"
    "bags then fill out's rows one column after another (one call for a pass of a few requests).");

/* One column of bags: its tokens and offsets (int64 buffers, held until released), checked. */
typedef struct {
    Py_buffer tokens, offsets;
    Py_ssize_t bags, first, last; /* its bags; the tokens they span */
} Column;

/* Take and check a column against the table; 0, or -1 with an exception set (nothing held). */
static int take_column(const Py_buffer *table, PyObject *tokens_object, PyObject *offsets_object, Column *column) {
    if (get_vector(tokens_object, &column->tokens, "tokens", "int64", 8) < 0) return -1;
    if (get_vector(offsets_object, &column->offsets, "offsets", "int64", 8) < 0) {
        PyBuffer_Release(&column->tokens);
        return -1;
    }
    const Py_ssize_t vocabulary = table->shape[0], bags = column->offsets.shape[0] - 1;
    const int64_t *offset = (const int64_t *)column->offsets.buf, *token = (const int64_t *)column->tokens.buf;
    if (bags < 0) {
        PyErr_SetString(PyExc_ValueError, "offsets must hold at least one entry");
        goto refused;
    }
    for (Py_ssize_t i = 0; i < bags; i++) {
        if (offset[i] < 0 || offset[i] > offset[i + 1] || offset[i + 1] > column->tokens.shape[0]) {
            PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing and within the tokens");
            goto refused;
        }
    }
    column->bags = bags;
    column->first = bags > 0 ? offset[0] : 0;
    column->last = bags > 0 ? offset[bags] : 0;
    for (Py_ssize_t i = column->first; i < column->last; i++) {
        if (token[i] < 0 || token[i] >= vocabulary) {
            PyErr_Format(PyExc_IndexError, "token %lld is outside a table of %zd rows", (long long)token[i],
                         vocabulary);
            goto refused;
        }
    }
    return 0;
refused:
    PyBuffer_Release(&column->tokens);
    PyBuffer_Release(&column->offsets);
    return -1;
}

static void release_column(Column *column) {
    PyBuffer_Release(&column->tokens);
    PyBuffer_Release(&column->offsets);
}

/* A checked column's bags into out's rows from `row` on. `may_release`: a large column may run
 * without the GIL (only when no other column waits, checked, for its turn). */
static void mean_column(const Py_buffer *table, const float *bias, const Column *column, const Py_buffer *out,
                        Py_ssize_t row, int64_t max_len, int threads, int may_release) {
    const Py_ssize_t dim = table->shape[1], bags = column->bags;
    BagJob job = {(const float *)table->buf, bias, (const int64_t *)column->tokens.buf,
                  (const int64_t *)column->offsets.buf, (float *)out->buf + row * dim, dim, max_len};
    Py_ssize_t values_per_bag = dim * (bags > 0 ? (column->last - column->first) / bags + 1 : 1);
    /* The GIL is kept for small calls (the usual ones, a few microseconds): letting it go hands
     * it to a waiting thread, and getting it back can wait a switch interval (5 ms). */
    PyThreadState *state =
        may_release && bags * values_per_bag >= MIN_VALUES_PER_THREAD ? PyEval_SaveThread() : NULL;
    run_split(mean_bags, &job, bags, values_per_bag, 1, threads);
    if (state != NULL) PyEval_RestoreThread(state);
}

static PyObject *bag_mean(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *table_object, *tokens_object, *offsets_object, *bias_object, *out_object;
    long long max_len;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOOLi", &table_object, &tokens_object, &offsets_object, &bias_object,
                          &out_object, &max_len, &threads))
        return NULL;
    Py_buffer table, bias, out;
    int have_bias = 0, have_out = 0;
    PyObject *result = NULL, *tokens_tuple = NULL, *offsets_tuple = NULL;
    Column one, *columns = &one;
    Py_ssize_t count = 0, taken = 0; /* columns; those taken (held) so far */
    if (get_table(table_object, &table, "table", 0) < 0) return NULL;
    if (bias_object != Py_None) {
        if (get_vector(bias_object, &bias, "bias", "float32", 4) < 0) goto done;
        have_bias = 1;
        if (bias.shape[0] != table.shape[1]) {
            PyErr_SetString(PyExc_ValueError, "bias must have the table's width");
            goto done;
        }
    }
    if (get_table(out_object, &out, "out", 1) < 0) goto done;
    have_out = 1;
    if (out.shape[1] != table.shape[1]) {
        PyErr_SetString(PyExc_ValueError, "out must have the table's width");
        goto done;
    }
    if (!PyList_Check(tokens_object)) {
        count = 1;
        if (take_column(&table, tokens_object, offsets_object, &one) < 0) goto done;
        taken = 1;
    } else {
        if (!PyList_Check(offsets_object) || PyList_GET_SIZE(offsets_object) != PyList_GET_SIZE(tokens_object)) {
            PyErr_SetString(PyExc_TypeError, "tokens and offsets must be two arrays or two lists of one length");
            goto done;
        }
        /* snapshots: tuples own their items, and no other thread can change them */
        tokens_tuple = PyList_AsTuple(tokens_object);
        offsets_tuple = PyList_AsTuple(offsets_object);
        if (tokens_tuple == NULL || offsets_tuple == NULL) goto done;
        count = PyTuple_GET_SIZE(tokens_tuple);
        if (count > 1 && (columns = PyMem_Malloc((size_t)count * sizeof(Column))) == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (; taken < count; taken++) { /* every column checked before any is computed */
            if (take_column(&table, PyTuple_GET_ITEM(tokens_tuple, taken), PyTuple_GET_ITEM(offsets_tuple, taken),
                            &columns[taken]) < 0)
                goto done;
        }
    }
    Py_ssize_t rows = 0;
    for (Py_ssize_t c = 0; c < count; c++) rows += columns[c].bags;
    if (rows != out.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "out must have exactly one row for each bag");
        goto done;
    }
    const float *bias_values = have_bias ? (const float *)bias.buf : NULL;
    for (Py_ssize_t c = 0, row = 0; c < count; row += columns[c].bags, c++)
        mean_column(&table, bias_values, &columns[c], &out, row, (int64_t)max_len, threads, count == 1);
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t c = 0; c < taken; c++) release_column(&columns[c]);
    if (columns != &one) PyMem_Free(columns);
    Py_XDECREF(tokens_tuple);
    Py_XDECREF(offsets_tuple);
    PyBuffer_Release(&table);
    if (have_bias) PyBuffer_Release(&bias);
    if (have_out) PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"row_adam_step", row_adam_step, METH_VARARGS, row_adam_step_doc},
    {"dropout_mask", dropout_mask, METH_VARARGS, dropout_mask_doc},
    {"bag_mean", bag_mean, METH_VARARGS, bag_mean_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "The package's loops in C: row_adam_step (training/sparse_adam.py), dropout_mask (nn/dropout.py),\n"
    "bag_mean (nn/inference.py).", -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
