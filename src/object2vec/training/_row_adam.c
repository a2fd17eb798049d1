/* Lazy Adam's update of chosen rows of [rows, dim] float32 tables, in place, in one pass.
 *
 * The Python side (sparse_adam.py, SparseRowAdam) gathers nothing: each used row of the
 * weights and of both moments is read once, updated and written back where it lies, so a
 * step moves the least memory it can (four rows read, three written). The arithmetic is that
 * of PyTorch's fused CPU Adam kernel on CPUs with FMA, operation by operation in float32, so
 * both give the same bits (tests/test_sparse_adam.py):
 *
 *     m = fma(c, g - m, m)              the lerp of m towards g by c = 1 - beta1 (for c < 0.5;
 *                                       fma(c - 1, g - m, g) otherwise, as torch's lerp)
 *     v = fma(g * (1 - beta2), g, v * beta2)
 *     w = w - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)
 *
 * Built with -ffp-contract=off, so that the compiler fuses nothing else; on x86-64 the loop is
 * compiled twice, with and without the FMA instruction, and chosen by what the CPU has (fmaf
 * gives the same bits either way, the instruction just faster). Rows are split into contiguous
 * ranges, one per thread (POSIX threads; one thread elsewhere).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef _WIN32
#include <pthread.h>
#define ROW_ADAM_THREADS 1
#endif

/* Below this many values a step runs on the calling thread alone (starting a thread costs
 * tens of microseconds). */
#define MIN_VALUES_PER_THREAD (1 << 15)
#define MAX_THREADS 64
/* Rows are asked of memory this many rows before they are updated: the rows lie scattered over
 * tables far larger than the caches, and waiting for each one in turn took up to 3.5x longer
 * (1.6-1.9 against 6-7 ms for 13,000 rows of a 3,000,000 x 64 table; 4.9-5.2 against 5.9-6.8 ms
 * for 13,000 of 267,522 x 300). */
#define AHEAD 8

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
                __builtin_prefetch(work->weight + next + d, 1);                                 \
                __builtin_prefetch(work->exp_avg + next + d, 1);                                \
                __builtin_prefetch(work->exp_avg_sq + next + d, 1);                             \
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

#ifdef ROW_ADAM_THREADS
static void *update_rows_thread(void *work) {
    update_rows((const RowRange *)work);
    return NULL;
}
#endif

/* Runs the update over all rows with up to `threads` threads (the calling thread one of them);
 * the rows of a thread that cannot be started are updated on the calling thread. */
static void run_update(const RowRange *all, int threads) {
    Py_ssize_t count = all->end - all->begin;
    Py_ssize_t most = count * all->dim / MIN_VALUES_PER_THREAD;
    if (threads > most) threads = (int)(most > 1 ? most : 1);
    if (threads > MAX_THREADS) threads = MAX_THREADS;
#ifdef ROW_ADAM_THREADS
    if (threads > 1) {
        RowRange parts[MAX_THREADS];
        pthread_t handles[MAX_THREADS];
        int started[MAX_THREADS];
        for (int t = 0; t < threads; t++) {
            parts[t] = *all;
            parts[t].begin = all->begin + count * t / threads;
            parts[t].end = all->begin + count * (t + 1) / threads;
        }
        for (int t = 1; t < threads; t++)
            started[t] = pthread_create(&handles[t], NULL, update_rows_thread, &parts[t]) == 0;
        update_rows(&parts[0]);
        for (int t = 1; t < threads; t++) {
            if (started[t])
                pthread_join(handles[t], NULL);
            else
                update_rows(&parts[t]);
        }
        return;
    }
#endif
    update_rows(all);
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

static int get_rows(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *format = view->format;
    if (view->ndim != 1 || view->itemsize != 8 || (strcmp(format, "q") != 0 && strcmp(format, "l") != 0)) {
        PyErr_SetString(PyExc_TypeError, "rows must be a 1-D contiguous int64 array");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(step_doc,
    "step(weight, exp_avg, exp_avg_sq, grad, rows, step_size, lerp_weight, beta2, grad_coefficient2,\n"
    "     bias_correction2_sqrt, eps, threads)\n\n"
    "Adam's update of rows `rows` (int64, strictly increasing, each in range) of the [N, dim]\n"
    "float32 tables weight, exp_avg and exp_avg_sq, in place; grad holds one [dim] row per entry\n"
    "of rows, in order.\n"
    "The coefficients are those of PyTorch's fused Adam kernel, rounded to float32 by the call.");

static PyObject *step(PyObject *self, PyObject *args) {
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
    if (get_rows(objects[4], &views[4]) < 0) goto done;
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
    run_update(&all, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int t = 0; t < taken; t++) PyBuffer_Release(&views[t]);
    return result;
}

static PyMethodDef methods[] = {
    {"step", step, METH_VARARGS, step_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_row_adam",
    "Lazy Adam's update of chosen rows of float32 tables, in place (see sparse_adam.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__row_adam(void) { return PyModule_Create(&module); }
