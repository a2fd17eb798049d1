// Answers of float32 rows written as JSON text in C, on several threads (large ones without the
// GIL); and request bodies read straight into token columns (read_instances, below).
//
// write_rows(rows, prefix, row_open, row_close, separator, suffix, threads) -> bytes:
//     prefix + (row_open + n0,n1,... + row_close) joined by separator + suffix
// for a C-contiguous 2-D float32 buffer. Numbers are written as orjson 3.13 writes a numpy
// float32: Ryu's shortest round-trip digits (_ryu_f32.h), decimal notation for 1e-6 <= |x| < 1e13
// ("0.0", "-2.5", "123456790.0", "0.000001"), else "1e-7" / "1.234567e+13"; NaN and infinities as
// null. So an answer's bytes are those orjson writes for the same rows (tests/test_jsonrows.py).
//
// Why: writing the numbers is the largest cost of an embedding answer (about 7 ms per 1,000 rows
// of 256 values on one core with orjson, README "Serving performance"), and orjson holds the GIL
// on one core. Here the rows are split over `threads` OpenMP threads (torch's pool: native.py),
// each writing its rows into its own stretch of the answer, which are then closed up.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "_ryu_f32.h"

// The longest number is 17 bytes ("-0.00000123456789": nine digits after five zeros); with its
// comma 18. The bound leaves room.
#define MAX_NUMBER_TEXT 24
// Below this many numbers a second thread costs more than it saves.
#define THREADED_FROM 16384
// An answer is split over at most this many threads.
#define MAX_THREADS 64

static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

// The `length` decimal digits of `value` into out[0..length).
static inline void write_digits(uint32_t value, uint32_t length, char *out) {
    char *end = out + length;
    while (value >= 100) {
        end -= 2;
        memcpy(end, DIGIT_PAIRS + 2 * (value % 100), 2);
        value /= 100;
    }
    if (value >= 10) {
        memcpy(end - 2, DIGIT_PAIRS + 2 * value, 2);
    } else {
        end[-1] = (char)('0' + value);
    }
}

// "e-7", "e+13": the exponent as orjson writes it.
static inline char *write_exponent(int32_t exponent, char *out) {
    *out++ = 'e';
    *out++ = exponent < 0 ? '-' : '+';
    uint32_t magnitude = (uint32_t)(exponent < 0 ? -exponent : exponent);
    if (magnitude >= 10) {
        memcpy(out, DIGIT_PAIRS + 2 * magnitude, 2);
        return out + 2;
    }
    *out++ = (char)('0' + magnitude);
    return out;
}

// One float32 as JSON text at `out`; returns the end.
static inline char *write_float(float value, char *out) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    const uint32_t mantissa_bits = bits & ((1u << 23) - 1);
    const uint32_t exponent_bits = (bits >> 23) & 0xff;
    if (exponent_bits == 0xff) {
        memcpy(out, "null", 4);
        return out + 4;
    }
    if (bits >> 31) {
        *out++ = '-';
    }
    if (exponent_bits == 0 && mantissa_bits == 0) {
        memcpy(out, "0.0", 3);
        return out + 3;
    }
    const floating_decimal_32 decimal = f2d(mantissa_bits, exponent_bits);
    const int32_t length = (int32_t)decimalLength9(decimal.mantissa);
    const int32_t k = decimal.exponent;
    const int32_t point = length + k;  // 10^(point-1) <= |value| < 10^point
    if (0 <= k && point <= 13) {  // 1234e7 -> 12340000000.0
        write_digits(decimal.mantissa, (uint32_t)length, out);
        memset(out + length, '0', (size_t)k);
        memcpy(out + point, ".0", 2);
        return out + point + 2;
    }
    if (0 < point && point <= 13) {  // 1234e-2 -> 12.34
        write_digits(decimal.mantissa, (uint32_t)length, out + 1);
        memmove(out, out + 1, (size_t)point);
        out[point] = '.';
        return out + length + 1;
    }
    if (-6 < point && point <= 0) {  // 1234e-6 -> 0.001234
        out[0] = '0';
        out[1] = '.';
        memset(out + 2, '0', (size_t)-point);
        write_digits(decimal.mantissa, (uint32_t)length, out + 2 - point);
        return out + 2 - point + length;
    }
    if (length == 1) {  // 1e30
        *out++ = (char)('0' + decimal.mantissa);
        return write_exponent(point - 1, out);
    }
    write_digits(decimal.mantissa, (uint32_t)length, out + 1);  // 1234e30 -> 1.234e+33
    out[0] = out[1];
    out[1] = '.';
    return write_exponent(point - 1, out + length + 1);
}

typedef struct {
    const char *text;
    Py_ssize_t size;
} Piece;

static inline char *put(char *out, Piece piece) {
    memcpy(out, piece.text, (size_t)piece.size);
    return out + piece.size;
}

// Rows [first, last) of `values` (each `width` long) at `out`, each but the very first preceded
// by the separator; returns the end.
static char *write_row_range(const float *values, Py_ssize_t width, Py_ssize_t first, Py_ssize_t last,
                             Piece row_open, Piece row_close, Piece separator, char *out) {
    for (Py_ssize_t row = first; row < last; row++) {
        if (row > 0) {
            out = put(out, separator);
        }
        out = put(out, row_open);
        const float *value = values + row * width;
        for (Py_ssize_t column = 0; column < width; column++) {
            if (column > 0) {
                *out++ = ',';
            }
            out = write_float(value[column], out);
        }
        out = put(out, row_close);
    }
    return out;
}

static int as_piece(PyObject *object, const char *name, Piece *piece) {
    if (!PyBytes_Check(object)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", name);
        return -1;
    }
    piece->text = PyBytes_AS_STRING(object);
    piece->size = PyBytes_GET_SIZE(object);
    return 0;
}

static PyObject *write_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rows_object, *objects[5];
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOOOi", &rows_object, &objects[0], &objects[1], &objects[2], &objects[3],
                          &objects[4], &threads)) {
        return NULL;
    }
    static const char *names[5] = {"prefix", "row_open", "row_close", "separator", "suffix"};
    Piece pieces[5];
    for (int i = 0; i < 5; i++) {
        if (as_piece(objects[i], names[i], &pieces[i]) < 0) {
            return NULL;
        }
    }
    const Piece prefix = pieces[0], row_open = pieces[1], row_close = pieces[2], separator = pieces[3],
                suffix = pieces[4];
    Py_buffer view;
    if (PyObject_GetBuffer(rows_object, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    PyObject *answer = NULL;
    if (view.ndim != 2 || view.itemsize != 4 || view.format == NULL || strcmp(view.format, "f") != 0) {
        PyErr_SetString(PyExc_ValueError, "rows must be a C-contiguous 2-D float32 array");
        goto done;
    }
    const Py_ssize_t count = view.shape[0], width = view.shape[1];
    const Py_ssize_t row_bound = separator.size + row_open.size + row_close.size + width * MAX_NUMBER_TEXT;
    if (count > 0 && row_bound > (PY_SSIZE_T_MAX - prefix.size - suffix.size) / count) {
        PyErr_SetString(PyExc_OverflowError, "the answer would be too large");
        goto done;
    }
    answer = PyBytes_FromStringAndSize(NULL, prefix.size + count * row_bound + suffix.size);
    if (answer == NULL) {
        goto done;
    }
    char *const start = PyBytes_AS_STRING(answer);
    const float *const values = (const float *)view.buf;
    if (threads < 1 || count * width < THREADED_FROM) {
        threads = 1;
    }
    if (threads > MAX_THREADS) {
        threads = MAX_THREADS;
    }
    if (threads > count) {
        threads = (int)(count > 0 ? count : 1);
    }
    char *end;
    // The GIL is let go for large answers only: letting it go hands it to any other thread that
    // waits for it (a pass on the inference thread), and getting it back then waits for that
    // thread to let go in turn, up to a switch interval (5 ms), far longer than a small answer.
    PyThreadState *state = count * width >= THREADED_FROM ? PyEval_SaveThread() : NULL;
    char *out = put(start, prefix);
    if (threads == 1) {
        out = write_row_range(values, width, 0, count, row_open, row_close, separator, out);
    } else {
        // Thread t writes rows [count*t/threads, count*(t+1)/threads) from where the first of them
        // could start at the most; the stretches are then moved up, in order, to close the gaps.
        char *ends[MAX_THREADS];
        char *const body = out;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (int t = 0; t < threads; t++) {
            const Py_ssize_t first = count * t / threads, last = count * (t + 1) / threads;
            ends[t] = write_row_range(values, width, first, last, row_open, row_close, separator,
                                      body + first * row_bound);
        }
        out = ends[0];
        for (int t = 1; t < threads; t++) {
            char *const from = body + (count * t / threads) * row_bound;
            memmove(out, from, (size_t)(ends[t] - from));
            out += ends[t] - from;
        }
    }
    end = put(out, suffix);
    if (state != NULL) PyEval_RestoreThread(state);
    _PyBytes_Resize(&answer, end - start);
done:
    PyBuffer_Release(&view);
    return answer;
}

// ---------------------------------------------------------------------------------------------
// read_instances: a request body straight to token columns, for the requests that need nothing
// else: every instance an object with only "in0" and/or "in1", each a non-empty list of plain
// integers below that side's vocabulary size, or null. Anything else (another key, a float, an
// escape, a duplicate key, a mistake of any kind) is left to the Python decoder, which gives the
// same request or names the mistake: this reader only ever answers "the same request" or "not
// mine" (None), so the grammar it takes is a strict subset of what orjson parses alike.

typedef struct {
    int64_t *data;
    Py_ssize_t size, capacity;
} Ints;

static int push(Ints *ints, int64_t value) {
    if (ints->size == ints->capacity) {
        Py_ssize_t capacity = ints->capacity ? 2 * ints->capacity : 256;
        int64_t *data = PyMem_Realloc(ints->data, (size_t)capacity * sizeof(int64_t));
        if (data == NULL) return -1;
        ints->data = data;
        ints->capacity = capacity;
    }
    ints->data[ints->size++] = value;
    return 0;
}

typedef struct {
    const char *at, *end;
    int lines;  // JSON Lines: a newline ends an instance, so it is no whitespace inside one
    Ints tokens[2], offsets[2], rows[2];
    int64_t vocabulary[2];
} Reader;

enum { READ_OK = 0, NOT_MINE = -1, NO_MEMORY = -2 };

static inline void skip_space(Reader *r) {
    while (r->at < r->end && (*r->at == ' ' || *r->at == '\t' || *r->at == '\r' || (*r->at == '\n' && !r->lines)))
        r->at++;
}

static inline int take(Reader *r, char c) {
    skip_space(r);
    if (r->at < r->end && *r->at == c) {
        r->at++;
        return 1;
    }
    return 0;
}

static inline int take_word(Reader *r, const char *word, Py_ssize_t size) {
    if (r->end - r->at >= size && memcmp(r->at, word, (size_t)size) == 0) {
        r->at += size;
        return 1;
    }
    return 0;
}

// A non-empty list of integers in [0, vocabulary) (no sign, no leading zero, at most 18 digits).
static int read_sequence(Reader *r, int side) {
    if (!take(r, '[')) return NOT_MINE;
    do {
        skip_space(r);
        const char *start = r->at;
        int64_t value = 0;
        while (r->at < r->end && *r->at >= '0' && *r->at <= '9') value = 10 * value + (*r->at++ - '0');
        const Py_ssize_t digits = r->at - start;
        if (digits == 0 || digits > 18 || (digits > 1 && *start == '0')) return NOT_MINE;
        if (value >= r->vocabulary[side]) return NOT_MINE;
        if (push(&r->tokens[side], value) < 0) return NO_MEMORY;
    } while (take(r, ','));
    if (!take(r, ']')) return NOT_MINE;
    return push(&r->offsets[side], r->tokens[side].size) < 0 ? NO_MEMORY : READ_OK;
}

static int read_instance(Reader *r, int64_t index) {
    if (!take(r, '{')) return NOT_MINE;
    int seen[2] = {0, 0}, given[2] = {0, 0};
    if (!take(r, '}')) {
        do {
            skip_space(r);
            int side;
            if (take_word(r, "\"in0\"", 5))
                side = 0;
            else if (take_word(r, "\"in1\"", 5))
                side = 1;
            else
                return NOT_MINE;
            if (seen[side] || !take(r, ':')) return NOT_MINE;
            seen[side] = 1;
            skip_space(r);
            if (take_word(r, "null", 4)) continue;
            int status = read_sequence(r, side);
            if (status != READ_OK) return status;
            given[side] = 1;
        } while (take(r, ','));
        if (!take(r, '}')) return NOT_MINE;
    }
    if (!given[0] && !given[1]) return NOT_MINE;
    for (int side = 0; side < 2; side++)
        if (given[side] && push(&r->rows[side], index) < 0) return NO_MEMORY;
    return READ_OK;
}

// The instances of a JSON document {"instances": [...]}, or of JSON Lines; their count.
static Py_ssize_t read_body(Reader *r, int *status) {
    Py_ssize_t count = 0;
    *status = READ_OK;
    if (!r->lines) {
        if (!take(r, '{')) goto not_mine;
        skip_space(r);
        if (!take_word(r, "\"instances\"", 11) || !take(r, ':') || !take(r, '[')) goto not_mine;
        if (take(r, ']')) goto not_mine;  // no instances: the Python decoder says so
        do {
            if ((*status = read_instance(r, count)) != READ_OK) return 0;
            count++;
        } while (take(r, ','));
        if (!take(r, ']') || !take(r, '}')) goto not_mine;
        skip_space(r);
        if (r->at != r->end) goto not_mine;
        return count;
    }
    for (;;) {
        skip_space(r);
        if (r->at == r->end) break;
        if (*r->at == '\n') {
            r->at++;
            continue;
        }
        if ((*status = read_instance(r, count)) != READ_OK) return 0;
        count++;
        skip_space(r);
        if (r->at < r->end && *r->at++ != '\n') goto not_mine;
    }
    if (count == 0) goto not_mine;
    return count;
not_mine:
    *status = NOT_MINE;
    return 0;
}

// A bytearray, so that numpy's view of it is writable (torch.from_numpy warns of read-only arrays).
static PyObject *as_bytes(const Ints *ints) {
    return PyByteArray_FromStringAndSize((const char *)ints->data, ints->size * (Py_ssize_t)sizeof(int64_t));
}

static PyObject *read_instances(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer body;
    int lines;
    long long vocabulary0, vocabulary1;
    if (!PyArg_ParseTuple(args, "y*pLL", &body, &lines, &vocabulary0, &vocabulary1)) return NULL;
    Reader r;
    memset(&r, 0, sizeof r);
    r.at = (const char *)body.buf;
    r.end = r.at + body.len;
    r.lines = lines;
    r.vocabulary[0] = vocabulary0;
    r.vocabulary[1] = vocabulary1;
    PyObject *result = NULL;
    int status = READ_OK;
    for (int side = 0; side < 2 && status == READ_OK; side++)
        if (push(&r.offsets[side], 0) < 0) status = NO_MEMORY;
    Py_ssize_t count = status == READ_OK ? read_body(&r, &status) : 0;
    if (status == NO_MEMORY) {
        PyErr_NoMemory();
    } else if (status == NOT_MINE) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = Py_BuildValue("(nNNNNNN)", count, as_bytes(&r.tokens[0]), as_bytes(&r.offsets[0]),
                               as_bytes(&r.rows[0]), as_bytes(&r.tokens[1]), as_bytes(&r.offsets[1]),
                               as_bytes(&r.rows[1]));
    }
    for (int side = 0; side < 2; side++) {
        PyMem_Free(r.tokens[side].data);
        PyMem_Free(r.offsets[side].data);
        PyMem_Free(r.rows[side].data);
    }
    PyBuffer_Release(&body);
    return result;
}

static PyMethodDef methods[] = {
    {"read_instances", read_instances, METH_VARARGS,
     "read_instances(body, lines, vocab_size0, vocab_size1) -> (count, tokens0, offsets0, rows0,\n"
     "tokens1, offsets1, rows1) as int64 bytearrays, or None: a request body whose every instance gives\n"
     "only in0 and/or in1 as lists of integers below the vocabulary sizes (or null), as columns\n"
     "(rows: the instances giving that side); None for anything else, which the Python decoder\n"
     "then reads (and names the mistake of)."},
    {"write_rows", write_rows, METH_VARARGS,
     "write_rows(rows, prefix, row_open, row_close, separator, suffix, threads) -> bytes: a 2-D "
     "float32 array's rows as JSON text, prefix + (row_open + numbers + row_close) joined by "
     "separator + suffix, numbers as orjson writes float32 (shortest round trip; NaN, inf: null)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsonrows",
    "Serving's JSON in C: answers' float32 rows written as text (write_rows), request bodies read into\n"
    "token columns (read_instances); see _jsonrows.c.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonrows(void) { return PyModule_Create(&module); }
