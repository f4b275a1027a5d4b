/* Hot loops of the PostgreSQL proxy's result path, in C (optional; see rowscan.py).
 *
 * run_end(buffer, pos, code, limit): where the run of complete messages of type `code` that
 *     starts at `pos` ends (`pos` itself when there is none). Stops before an incomplete
 *     message or one whose length is below 4 or above `limit`: the Python framer reports those.
 *
 * run_count(buffer, pos, code, limit, max_count): (end, count) of that run cut at max_count
 *     messages (a row budget's room: the proxy counts DataRows with it).
 *
 * may_hold_pan(data): engine.masking.may_hold_pan_bytes, one pass over the bytes.
 *
 * copy_run_clean(run, quote): whether every CopyData message of `run` (a run of complete
 *     ones) holds whole text/CSV records that the PAN backstop lets through unchanged: its
 *     data is not empty, ends with a newline, holds an even number of `quote` bytes (CSV;
 *     quote -1: text format) and may_hold_pan finds nothing in it. ValueError on a malformed
 *     run. (`CopyOutRewriter.feed` relays such a message as it is: the run goes out whole.)
 *
 * mask_rows(run, specs): a run of complete DataRow messages with some columns masked, as one
 *     new bytes object. `specs` has one item per column: None (the value is copied) or a pair
 *     (method, transform), `method` one of the METHOD_* codes below. `pan`, `last4` and
 *     `email` are done here for ASCII values, exactly as engine.masking does them; `null` and
 *     a constant (`redact`: the spec holds its bytes) need no value; every other value goes
 *     through `transform(value: bytes) -> bytes | None`, whose exceptions propagate. A `scan`
 *     value is copied when the PAN precheck finds nothing in it, else it goes through its
 *     transform (the scrubber). Errors send the caller back to the reference path in
 *     results.py, which reports a malformed row (ValueError here) precisely.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum {
    METHOD_CALL = 0,  /* the transform, for every value */
    METHOD_PAN = 1,   /* engine.masking.mask_pan on ASCII values, else the transform */
    METHOD_LAST4 = 2, /* mask_last4 on ASCII values, else the transform */
    METHOD_NULL = 3,  /* NULL */
    METHOD_SCAN = 4,  /* copied if the PAN precheck finds nothing in it, else the transform */
    METHOD_CONST = 5, /* the spec's bytes for every non-NULL value (redact) */
    METHOD_EMAIL = 6, /* mask_email on ASCII values, else the transform */
};

#define PAN_MIN_DIGITS 13
#define KEEP_DIGITS 4
#define LAST4_MIN_LENGTH 8
#define MASK '*'

static uint32_t read_u32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void write_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static PyObject *run_end(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, limit;
    int code;
    if (!PyArg_ParseTuple(args, "y*nin", &view, &pos, &code, &limit))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t end = view.len;
    if (pos < 0)
        pos = end;
    while (pos <= end - 5 && buf[pos] == code) {
        uint32_t length = read_u32(buf + pos + 1);
        if (length < 4 || (Py_ssize_t)length > end - pos - 1 || (Py_ssize_t)length + 1 > limit)
            break;
        pos += 1 + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);
}

static PyObject *run_count(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, limit, max_count, count = 0;
    int code;
    if (!PyArg_ParseTuple(args, "y*ninn", &view, &pos, &code, &limit, &max_count))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t end = view.len;
    if (pos < 0)
        pos = end;
    while (count < max_count && pos <= end - 5 && buf[pos] == code) {
        uint32_t length = read_u32(buf + pos + 1);
        if (length < 4 || (Py_ssize_t)length > end - pos - 1 || (Py_ssize_t)length + 1 > limit)
            break;
        pos += 1 + (Py_ssize_t)length;
        count++;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("nn", pos, count);
}

/* engine.masking.may_hold_pan_bytes: is there a run of 13 digit bytes (ASCII digits, or any
 * byte >= 0x80: a digit of another script is multi-byte in UTF-8), each pair separated by at
 * most one space or dash? Two separators in a row, or any other byte, break a run. */
static unsigned char byte_class[256]; /* CLASS_* of every byte, set at import */
enum { CLASS_OTHER = 0, CLASS_DIGIT = 1, CLASS_SEPARATOR = 2 };

static int pan_shape(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        while (i < n && byte_class[p[i]] != CLASS_DIGIT)  /* most bytes: skip to a digit */
            i++;
        Py_ssize_t digits = 0;
        while (i < n) {  /* a run from this digit: digits, single separators between */
            unsigned char cls = byte_class[p[i]];
            if (cls == CLASS_DIGIT) {
                if (++digits >= PAN_MIN_DIGITS)
                    return 1;
                i++;
            } else if (cls == CLASS_SEPARATOR && i + 1 < n &&
                       byte_class[p[i + 1]] == CLASS_DIGIT) {
                i++;
            } else {
                break;
            }
        }
        i++;
    }
    return 0;
}

static PyObject *may_hold_pan(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int found = pan_shape(view.buf, view.len);
    PyBuffer_Release(&view);
    return PyBool_FromLong(found);
}

static PyObject *copy_run_clean(PyObject *self, PyObject *args) {
    Py_buffer view;
    int quote;
    if (!PyArg_ParseTuple(args, "y*i", &view, &quote))
        return NULL;
    const unsigned char *run = view.buf;
    const Py_ssize_t size = view.len;
    Py_ssize_t pos = 0;
    int clean = 1;
    while (pos < size) {
        if (size - pos < 5 || run[pos] != 'd') {
            PyErr_SetString(PyExc_ValueError, "not a run of complete CopyData messages");
            goto fail;
        }
        uint32_t length = read_u32(run + pos + 1);
        if (length < 4 || (Py_ssize_t)length > size - pos - 1) {
            PyErr_SetString(PyExc_ValueError, "CopyData length out of bounds");
            goto fail;
        }
        const unsigned char *data = run + pos + 5;
        Py_ssize_t n = (Py_ssize_t)length - 4;
        pos += 1 + (Py_ssize_t)length;
        if (!clean)
            continue;  /* the rest is only checked for framing */
        if (n == 0 || data[n - 1] != '\n') {
            clean = 0;
            continue;
        }
        if (quote >= 0) {
            Py_ssize_t quotes = 0;
            for (Py_ssize_t i = 0; i < n; i++)
                quotes += data[i] == quote;
            if (quotes & 1) {
                clean = 0;
                continue;
            }
        }
        if (pan_shape(data, n))
            clean = 0;
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(clean);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* A growing output buffer. */
typedef struct {
    unsigned char *data;
    Py_ssize_t len, cap;
} Out;

static int out_reserve(Out *out, Py_ssize_t more) {
    if (out->len + more <= out->cap)
        return 0;
    Py_ssize_t cap = out->cap ? out->cap : 4096;
    while (cap < out->len + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    unsigned char *data = PyMem_Realloc(out->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->data = data;
    out->cap = cap;
    return 0;
}

static int is_ascii(const unsigned char *v, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (v[i] & 0x80)
            return 0;
    return 1;
}

/* mask_pan on an ASCII value (engine.masking.mask_pan): digits are hidden but for the last 4
 * when the value has 13 or more positions (digits or `*`), else all of them. */
static void mask_pan_ascii(const unsigned char *v, Py_ssize_t n, unsigned char *dst) {
    Py_ssize_t positions = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        positions += (v[i] >= '0' && v[i] <= '9') || v[i] == MASK;
    Py_ssize_t keep_from = positions >= PAN_MIN_DIGITS ? positions - KEEP_DIGITS : positions;
    Py_ssize_t seen = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = v[i];
        if (ch >= '0' && ch <= '9') {
            dst[i] = seen >= keep_from ? ch : MASK;
            seen++;
        } else {
            dst[i] = ch;
            seen += ch == MASK;
        }
    }
}

/* mask_last4 on an ASCII value: the last 4 shown when at least 8 characters. */
static void mask_last4_ascii(const unsigned char *v, Py_ssize_t n, unsigned char *dst) {
    Py_ssize_t hidden = n < LAST4_MIN_LENGTH ? n : n - KEEP_DIGITS;
    memset(dst, MASK, (size_t)hidden);
    memcpy(dst + hidden, v + hidden, (size_t)(n - hidden));
}

/* Append a length and a value. */
static int append_value(Out *out, const unsigned char *v, Py_ssize_t n) {
    if (n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "value too long");
        return -1;
    }
    if (out_reserve(out, 4 + n) < 0)
        return -1;
    write_u32(out->data + out->len, (uint32_t)n);
    memcpy(out->data + out->len + 4, v, (size_t)n);
    out->len += 4 + n;
    return 0;
}

/* mask_email on an ASCII value: `alice@example.com` -> `a***@example.com`, `***` without `@`. */
static int append_email_ascii(Out *out, const unsigned char *v, Py_ssize_t n) {
    Py_ssize_t at = n - 1;
    while (at >= 0 && v[at] != '@')
        at--;
    if (at < 0)
        return append_value(out, (const unsigned char *)"***", 3);
    Py_ssize_t shown = at > 0 ? 1 : 0, domain = n - at - 1;
    if (out_reserve(out, 4 + shown + 4 + domain) < 0)
        return -1;
    unsigned char *dst = out->data + out->len;
    write_u32(dst, (uint32_t)(shown + 4 + domain));
    memcpy(dst + 4, v, (size_t)shown);
    memcpy(dst + 4 + shown, "***@", 4);
    memcpy(dst + 8 + shown, v + at + 1, (size_t)domain);
    out->len += 8 + shown + domain;
    return 0;
}

/* Append the length and value that `transform(value)` gives. */
static int call_transform(Out *out, PyObject *transform, const unsigned char *v,
                          Py_ssize_t n) {
    PyObject *value = PyBytes_FromStringAndSize((const char *)v, n);
    if (value == NULL)
        return -1;
    PyObject *result = PyObject_CallOneArg(transform, value);
    Py_DECREF(value);
    if (result == NULL)
        return -1;
    if (result == Py_None) {
        Py_DECREF(result);
        if (out_reserve(out, 4) < 0)
            return -1;
        write_u32(out->data + out->len, 0xFFFFFFFFu);
        out->len += 4;
        return 0;
    }
    if (!PyBytes_Check(result)) {
        PyErr_Format(PyExc_TypeError, "transform returned %.100s, expected bytes or None",
                     Py_TYPE(result)->tp_name);
        Py_DECREF(result);
        return -1;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(result);
    if (size > INT32_MAX || out_reserve(out, 4 + size) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "transformed value too long");
        Py_DECREF(result);
        return -1;
    }
    write_u32(out->data + out->len, (uint32_t)size);
    memcpy(out->data + out->len + 4, PyBytes_AS_STRING(result), (size_t)size);
    out->len += 4 + size;
    Py_DECREF(result);
    return 0;
}

static PyObject *mask_rows(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *specs;
    if (!PyArg_ParseTuple(args, "y*O!", &view, &PyTuple_Type, &specs))
        return NULL;
    const unsigned char *run = view.buf;
    const Py_ssize_t size = view.len;
    const Py_ssize_t ncols = PyTuple_GET_SIZE(specs);
    int *methods = PyMem_Calloc((size_t)(ncols ? ncols : 1), sizeof(int));
    PyObject **transforms = PyMem_Calloc((size_t)(ncols ? ncols : 1), sizeof(PyObject *));
    Out out = {NULL, 0, 0};
    if (methods == NULL || transforms == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < ncols; i++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, i);
        methods[i] = -1;
        if (spec == Py_None)
            continue;
        if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2) {
            PyErr_SetString(PyExc_TypeError, "a column spec is None or (method, transform)");
            goto fail;
        }
        long method = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
        if (method == -1 && PyErr_Occurred())
            goto fail;
        if (method < METHOD_CALL || method > METHOD_EMAIL) {
            PyErr_Format(PyExc_ValueError, "unknown method code %ld", method);
            goto fail;
        }
        methods[i] = (int)method;
        transforms[i] = PyTuple_GET_ITEM(spec, 1);  /* borrowed: specs holds it */
        if (method == METHOD_CONST && !PyBytes_Check(transforms[i])) {
            PyErr_SetString(PyExc_TypeError, "a METHOD_CONST spec holds bytes");
            goto fail;
        }
    }
    if (out_reserve(&out, size + size / 4 + 64) < 0)
        goto fail;
    Py_ssize_t pos = 0;
    while (pos < size) {
        if (size - pos < 7 || run[pos] != 'D') {
            PyErr_SetString(PyExc_ValueError, "not a run of complete DataRow messages");
            goto fail;
        }
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)read_u32(run + pos + 1);
        if (stop > size || stop < pos + 7) {
            PyErr_SetString(PyExc_ValueError, "DataRow length out of bounds");
            goto fail;
        }
        Py_ssize_t count = (run[pos + 5] << 8) | run[pos + 6];
        if (count != ncols) {
            PyErr_Format(PyExc_ValueError, "DataRow has %zd columns, its description has %zd",
                         count, ncols);
            goto fail;
        }
        if (out_reserve(&out, stop - pos) < 0)
            goto fail;
        Py_ssize_t row_start = out.len;
        memcpy(out.data + out.len, run + pos, 7);
        out.len += 7;
        Py_ssize_t p = pos + 7;
        for (Py_ssize_t i = 0; i < ncols; i++) {
            if (stop - p < 4) {
                PyErr_Format(PyExc_ValueError, "DataRow truncated at column #%zd", i);
                goto fail;
            }
            int32_t length = (int32_t)read_u32(run + p);
            if (length < -1 || (length > 0 && length > stop - p - 4)) {
                PyErr_Format(PyExc_ValueError, "DataRow column #%zd has bad length %d", i,
                             (int)length);
                goto fail;
            }
            Py_ssize_t n = length > 0 ? length : 0;
            const unsigned char *v = run + p + 4;
            int method = methods[i];
            if (method < 0 || length == -1 || (method == METHOD_SCAN && !pan_shape(v, n))) {
                if (out_reserve(&out, 4 + n) < 0)
                    goto fail;
                memcpy(out.data + out.len, run + p, (size_t)(4 + n));
                out.len += 4 + n;
            } else if (method == METHOD_NULL) {
                if (out_reserve(&out, 4) < 0)
                    goto fail;
                write_u32(out.data + out.len, 0xFFFFFFFFu);
                out.len += 4;
            } else if ((method == METHOD_PAN || method == METHOD_LAST4) && is_ascii(v, n)) {
                if (out_reserve(&out, 4 + n) < 0)
                    goto fail;
                memcpy(out.data + out.len, run + p, 4);
                if (method == METHOD_PAN)
                    mask_pan_ascii(v, n, out.data + out.len + 4);
                else
                    mask_last4_ascii(v, n, out.data + out.len + 4);
                out.len += 4 + n;
            } else if (method == METHOD_CONST) {
                PyObject *constant = transforms[i];
                if (append_value(&out, (const unsigned char *)PyBytes_AS_STRING(constant),
                                 PyBytes_GET_SIZE(constant)) < 0)
                    goto fail;
            } else if (method == METHOD_EMAIL && is_ascii(v, n)) {
                if (append_email_ascii(&out, v, n) < 0)
                    goto fail;
            } else if (call_transform(&out, transforms[i], v, n) < 0) {
                goto fail;
            }
            p += 4 + n;
        }
        if (p != stop) {
            PyErr_Format(PyExc_ValueError, "DataRow has %zd trailing bytes", stop - p);
            goto fail;
        }
        Py_ssize_t row_length = out.len - row_start - 1;
        if (row_length > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "rewritten DataRow too long");
            goto fail;
        }
        write_u32(out.data + row_start + 1, (uint32_t)row_length);
        pos = stop;
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)out.data, out.len);
    PyMem_Free(out.data);
    PyMem_Free(methods);
    PyMem_Free(transforms);
    PyBuffer_Release(&view);
    return result;
fail:
    PyMem_Free(out.data);
    PyMem_Free(methods);
    PyMem_Free(transforms);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"run_end", run_end, METH_VARARGS,
     "run_end(buffer, pos, code, limit) -> end of the run of complete messages of type code"},
    {"run_count", run_count, METH_VARARGS,
     "run_count(buffer, pos, code, limit, max_count) -> (end, count): run_end of at most "
     "max_count messages"},
    {"may_hold_pan", may_hold_pan, METH_O,
     "may_hold_pan(data) -> engine.masking.may_hold_pan_bytes(data), in C"},
    {"copy_run_clean", copy_run_clean, METH_VARARGS,
     "copy_run_clean(run, quote) -> whether every CopyData of the run is whole records in "
     "which the PAN precheck finds nothing (an even count of quote bytes; -1: text format)"},
    {"mask_rows", mask_rows, METH_VARARGS,
     "mask_rows(run, specs) -> the run of DataRows with the specified columns masked"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowscan",
    "C loops of the PostgreSQL proxy's result path (see adapters/postgres/rowscan.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__rowscan(void) {
    for (int b = 0; b < 256; b++)
        byte_class[b] = ((b >= '0' && b <= '9') || b >= 0x80) ? CLASS_DIGIT
                        : (b == ' ' || b == '-')              ? CLASS_SEPARATOR
                                                              : CLASS_OTHER;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "METHOD_CALL", METHOD_CALL) < 0 ||
        PyModule_AddIntConstant(m, "METHOD_PAN", METHOD_PAN) < 0 ||
        PyModule_AddIntConstant(m, "METHOD_LAST4", METHOD_LAST4) < 0 ||
        PyModule_AddIntConstant(m, "METHOD_NULL", METHOD_NULL) < 0 ||
        PyModule_AddIntConstant(m, "METHOD_SCAN", METHOD_SCAN) < 0 ||
        PyModule_AddIntConstant(m, "METHOD_CONST", METHOD_CONST) < 0 ||
        PyModule_AddIntConstant(m, "METHOD_EMAIL", METHOD_EMAIL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
