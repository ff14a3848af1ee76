/*
 * greenserve._static: --static's common answer in C, a small file whole from memory.
 *
 * Why: a 10 KB file from --static took about 78 us of a worker's CPU per request under wrk,
 * against 35 us for a hello (tests/bench/static.py's set-up on one worker, /proc's user and
 * system time, 2026-12-07): the Python of Static.__call__ and _serve, the stat_result os.stat
 * builds, and the header list made anew on every request. A minimal Python app that sent the
 * same bytes with a fixed header list and one os.stat took 58 us.
 *
 * Front(ready, fallback, requests, bytes_sent, prefixes, app) is called as the WSGI app. A
 * request whose PATH_INFO is under none of the mounts' ``prefixes`` goes straight to ``app``
 * (Static.__call__'s test, in C too: through the Python layer an app request took about 3,500
 * more instructions than without --static). Under a mount, a request is answered here when
 * all of this holds, and otherwise handed, unchanged, to ``fallback`` (the Static layer,
 * worker/static.py), so every other rule has one definition, in Python:
 *   - its PATH_INFO is a key of ``ready`` (Static puts a file there once it has served it: a
 *     file kept in memory, under its canonical path, not a precompressed sibling);
 *   - the method is GET or HEAD;
 *   - no If-Modified-Since or Range (a date to parse, a 206 or a 416 is Static's) unless an
 *     If-None-Match matches; an If-None-Match is compared here (ASCII: else Static's) and a
 *     match is answered 304 Not Modified, as Static answers it;
 *   - for a file with precompressed siblings, an Accept-Encoding value Static has answered
 *     before (the Ready's ``by_accept``: the sibling it sent, or None for the file), or none;
 *   - the file's stat (inode, device, mtime in ns, size) is still the one Static read, and the
 *     sibling's when one is sent, checked on every request as Static does.
 * The answer is what Static answers then: the mount's request and byte (or 304) counts,
 * start_response with a copy of the file's header list (without its Content-Length for a 304),
 * and the content (nothing for HEAD or a 304).
 *
 * The stat is made with the GIL held: it is one system call on a path the kernel has cached,
 * and releasing the GIL around it costs more than it takes; the worker's loop waits for it
 * either way (os.stat is not cooperative under gevent).
 *
 * Ready(path, key, headers, data, label, vary, etag) is one such answer: the file's path as
 * bytes, its stat key (inode, device, mtime_ns, size), the header list (Content-Length last),
 * the content, the mount's label on /metrics, whether its response varies by Accept-Encoding,
 * and its ETag.
 *
 * ABI is compared by greenserve.worker.static: a build older than its source is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <structmember.h>
#include <sys/stat.h>

#define STATIC_ABI 1

static PyTypeObject *ready_type;
static PyObject *k_path_info, *k_method, *k_accept_encoding, *k_if_none_match,
    *k_if_modified_since, *k_range, *v_ok, *v_not_modified, *v_zero, *v_one;

/* traverse, clear and dealloc of a heap type whose object fields ``LIST`` names (an X-macro):
 * each instance holds a reference to its type, released last. */
#define GC_VISIT(name) Py_VISIT(self->name);
#define GC_CLEAR(name) Py_CLEAR(self->name);
#define GC_FUNCTIONS(prefix, Type, LIST)                                                          \
    static int prefix##_traverse(Type *self, visitproc visit, void *arg) {                       \
        Py_VISIT(Py_TYPE(self));                                                                  \
        LIST(GC_VISIT)                                                                            \
        return 0;                                                                                 \
    }                                                                                             \
    static int prefix##_clear(Type *self) {                                                       \
        LIST(GC_CLEAR)                                                                            \
        return 0;                                                                                 \
    }                                                                                             \
    static void prefix##_dealloc(Type *self) {                                                    \
        PyTypeObject *type = Py_TYPE(self);                                                       \
        PyObject_GC_UnTrack(self);                                                                \
        prefix##_clear(self);                                                                     \
        type->tp_free((PyObject *)self);                                                          \
        Py_DECREF(type);                                                                          \
    }

/* -- Ready ------------------------------------------------------------------------------------ */

#define READY_OBJECTS(X) X(path) X(headers) X(data) X(label) X(etag) X(by_accept) X(length)

typedef struct {
    PyObject_HEAD
#define FIELD(name) PyObject *name;
    READY_OBJECTS(FIELD)
#undef FIELD
    unsigned long long ino, dev;
    long long mtime_ns, size;
    int vary;
} Ready;

static PyObject *ready_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"path", "key", "headers", "data", "label", "vary", "etag", NULL};
    PyObject *path, *headers, *data, *label, *etag;
    unsigned long long ino, dev;
    long long mtime_ns, size;
    int vary;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!(KKLL)O!O!O!pO!:Ready", names,
                                     &PyBytes_Type, &path, &ino, &dev, &mtime_ns, &size,
                                     &PyList_Type, &headers, &PyBytes_Type, &data, &PyUnicode_Type,
                                     &label, &vary, &PyUnicode_Type, &etag))
        return NULL;
    /* a 304 has the 200's headers but its Content-Length, which comes last */
    Py_ssize_t count = PyList_GET_SIZE(headers);
    PyObject *last = count > 0 ? PyList_GET_ITEM(headers, count - 1) : NULL;
    if (last == NULL || !PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(last, 0)) ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(last, 0), "Content-Length") != 0) {
        PyErr_SetString(PyExc_ValueError, "Ready: the last header must be Content-Length");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(etag)) {
        PyErr_SetString(PyExc_ValueError, "Ready: the ETag must be ASCII");
        return NULL;
    }
    if (strlen(PyBytes_AS_STRING(path)) != (size_t)PyBytes_GET_SIZE(path)) {
        PyErr_SetString(PyExc_ValueError, "Ready: the path has a NUL byte");
        return NULL;
    }
    if (size != PyBytes_GET_SIZE(data)) {
        PyErr_SetString(PyExc_ValueError, "Ready: the content's length is not the stat's size");
        return NULL;
    }
    /* made once: the bytes count of every answer adds it */
    PyObject *by_accept = PyDict_New(), *length = PyLong_FromLongLong(size);
    Ready *ready = by_accept != NULL && length != NULL ? (Ready *)type->tp_alloc(type, 0) : NULL;
    if (ready != NULL) {
#define SET(name) ready->name = Py_NewRef(name);
        READY_OBJECTS(SET)
#undef SET
    }
    Py_XDECREF(by_accept); /* the struct holds them now */
    Py_XDECREF(length);
    if (ready == NULL)
        return NULL;
    ready->ino = ino;
    ready->dev = dev;
    ready->mtime_ns = mtime_ns;
    ready->size = size;
    ready->vary = vary;
    return (PyObject *)ready;
}

GC_FUNCTIONS(ready, Ready, READY_OBJECTS)

static PyMemberDef ready_members[] = {
    {"data", T_OBJECT, offsetof(Ready, data), READONLY, "The file's content."},
    {"label", T_OBJECT, offsetof(Ready, label), READONLY, "The mount's label on /metrics."},
    {"by_accept", T_OBJECT, offsetof(Ready, by_accept), READONLY,
     "For a file with precompressed siblings: Accept-Encoding value -> the sibling's Ready "
     "sent for it, or None for the file itself."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot ready_slots[] = {
    {Py_tp_new, ready_new},
    {Py_tp_traverse, ready_traverse},
    {Py_tp_clear, ready_clear},
    {Py_tp_dealloc, ready_dealloc},
    {Py_tp_members, ready_members},
    {Py_tp_doc, "A file's (or a sibling's) answer, as Front sends it (see _static.c)."},
    {0, NULL},
};

static PyType_Spec ready_spec = {
    .name = "greenserve._static.Ready",
    .basicsize = sizeof(Ready),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = ready_slots,
};

/* -- Front ------------------------------------------------------------------------------------ */

#define FRONT_OBJECTS(X)                                                                          \
    X(ready) X(fallback) X(requests) X(bytes_sent) X(not_modified) X(prefixes) X(app)

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
#define FIELD(name) PyObject *name;
    FRONT_OBJECTS(FIELD)
#undef FIELD
} Front;

/* table[key] = table.get(key, 0) + amount (static.py's _count): 0, or -1 raised. */
static int add(PyObject *table, PyObject *key, PyObject *amount) {
    PyObject *seen = PyDict_GetItemWithError(table, key);
    if (seen == NULL && PyErr_Occurred())
        return -1;
    PyObject *total = PyNumber_Add(seen != NULL ? seen : v_zero, amount);
    int failed = total == NULL || PyDict_SetItem(table, key, total) < 0;
    Py_XDECREF(total);
    return failed ? -1 : 0;
}

/* 1: GET, 2: HEAD, 0: another method or none. */
static int method_of(PyObject *environ) {
    PyObject *method = PyDict_GetItemWithError(environ, k_method);
    if (method == NULL || !PyUnicode_CheckExact(method))
        return 0;
    if (PyUnicode_CompareWithASCIIString(method, "GET") == 0)
        return 1;
    return PyUnicode_CompareWithASCIIString(method, "HEAD") == 0 ? 2 : 0;
}

/* Whether the file ``ready`` was made from is still the one at its path (stat's inode, device,
 * size and mtime): 1 or 0. */
static int unchanged(Ready *ready) {
    struct stat st;
    return stat(PyBytes_AS_STRING(ready->path), &st) == 0 &&
           (unsigned long long)st.st_ino == ready->ino &&
           (unsigned long long)st.st_dev == ready->dev && (long long)st.st_size == ready->size &&
           (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec == ready->mtime_ns;
}

/* Whether ``path`` is under one of the mounts, as Static.__call__ tests it (the prefix, then
 * the path's end or a slash): 1, 0, or -1 raised. */
static int mounted(Front *front, PyObject *path) {
    Py_ssize_t size = PyUnicode_GET_LENGTH(path);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(front->prefixes); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(front->prefixes, i);
        Py_ssize_t length = PyUnicode_GET_LENGTH(prefix);
        if (length > size)
            continue;
        Py_ssize_t starts = PyUnicode_Tailmatch(path, prefix, 0, length, -1);
        if (starts < 0)
            return -1;
        if (starts && (length == size || PyUnicode_READ_CHAR(path, length) == '/'))
            return 1;
    }
    return 0;
}

static int space(Py_UCS1 c) { return Py_UNICODE_ISSPACE(c); }

/* ``text[start:end]`` without the whitespace str.strip() takes off (ASCII text). */
static void strip(const Py_UCS1 *text, Py_ssize_t *start, Py_ssize_t *end) {
    while (*start < *end && space(text[*start]))
        (*start)++;
    while (*end > *start && space(text[*end - 1]))
        (*end)--;
}

/* static.py's _not_modified for an If-None-Match ``value`` (RFC 9110 13.1.2, the weak
 * comparison): 1 it matches ``etag``, 0 it does not, -1 not ASCII (declined). */
static int none_match(PyObject *value, PyObject *etag) {
    if (!PyUnicode_IS_ASCII(value))
        return -1;
    const Py_UCS1 *text = PyUnicode_1BYTE_DATA(value), *tag = PyUnicode_1BYTE_DATA(etag);
    Py_ssize_t size = PyUnicode_GET_LENGTH(value), tag_size = PyUnicode_GET_LENGTH(etag);
    Py_ssize_t start = 0, end = size;
    strip(text, &start, &end);
    if (end - start == 1 && text[start] == '*')
        return 1;
    for (Py_ssize_t item = 0; item <= size;) {
        const Py_UCS1 *comma = memchr(text + item, ',', (size_t)(size - item));
        Py_ssize_t stop = comma != NULL ? comma - text : size;
        start = item, end = stop;
        strip(text, &start, &end);
        if (end - start >= 2 && text[start] == 'W' && text[start + 1] == '/')
            start += 2;
        if (end - start == tag_size && memcmp(text + start, tag, (size_t)tag_size) == 0)
            return 1;
        item = stop + 1;
    }
    return 0;
}

/* The file ``ready`` answers for ``environ`` at ``path`` (a new reference: a key's __eq__ run
 * by a lookup could empty the table), or NULL: declined (nothing raised), or -1 in *failed
 * with an exception set. *fresh: the client's copy is current (a 304). Counts nothing. */
static Ready *answerable(Front *front, PyObject *environ, PyObject *path, int *method,
                         int *fresh, int *failed) {
    Ready *ready = (Ready *)Py_XNewRef(PyDict_GetItemWithError(front->ready, path)), *sent = NULL;
    if (ready == NULL || Py_TYPE(ready) != ready_type || (*method = method_of(environ)) == 0)
        goto declined;
    /* A file with precompressed siblings: the representation Static chose for this
     * Accept-Encoding value (the file itself when none is asked for) */
    Ready *chosen = ready;
    if (ready->vary) {
        PyObject *accept = PyDict_GetItemWithError(environ, k_accept_encoding);
        if (accept == NULL && PyErr_Occurred())
            goto declined;
        if (accept != NULL)
            chosen = PyUnicode_CheckExact(accept)
                         ? (Ready *)PyDict_GetItemWithError(ready->by_accept, accept)
                         : NULL;
        if ((PyObject *)chosen == Py_None) /* the file itself (no reference to it: no cycle) */
            chosen = ready;
        if (chosen == NULL || Py_TYPE(chosen) != ready_type)
            goto declined;
    }
    sent = (Ready *)Py_NewRef(chosen); /* held, as ready is: the table may change meanwhile */
    /* Static's order: If-None-Match wins over If-Modified-Since (which is Static's to parse),
     * then a Range (Static's) */
    PyObject *match = PyDict_GetItemWithError(environ, k_if_none_match);
    if (match != NULL) {
        if (!PyUnicode_CheckExact(match) || (*fresh = none_match(match, sent->etag)) < 0)
            goto declined;
    } else if (PyErr_Occurred() || PyDict_Contains(environ, k_if_modified_since) != 0)
        goto declined;
    if (!*fresh && PyDict_Contains(environ, k_range) != 0)
        goto declined;
    /* gone or changed (the file, or the sibling sent): Static looks again */
    if (!unchanged(ready) || (sent != ready && !unchanged(sent)))
        goto declined;
    Py_DECREF(ready);
    return sent;
declined:
    Py_XDECREF(ready);
    Py_XDECREF(sent);
    *failed = PyErr_Occurred() ? -1 : 0;
    return NULL;
}

/* Static._serve's answer for ``ready``: the counts, start_response, the body (none for HEAD
 * and a 304). NULL raised. */
static PyObject *answer(Front *front, Ready *ready, int method, int fresh,
                        PyObject *start_response) {
    int head = method == 2, counted = add(front->requests, ready->label, v_one);
    if (counted == 0)
        counted = fresh ? add(front->not_modified, ready->label, v_one)
                        : add(front->bytes_sent, ready->label, head ? v_zero : ready->length);
    if (counted < 0)
        return NULL;
    /* a copy: the server, a hook or middleware may add to the list it is given */
    Py_ssize_t count = PyList_GET_SIZE(ready->headers);
    PyObject *headers = PyList_GetSlice(ready->headers, 0, fresh ? count - 1 : count);
    if (headers == NULL)
        return NULL;
    PyObject *call[] = {fresh ? v_not_modified : v_ok, headers};
    PyObject *write = PyObject_Vectorcall(start_response, call, 2, NULL);
    Py_DECREF(headers);
    if (write == NULL)
        return NULL;
    Py_DECREF(write);
    PyObject *body = PyList_New(head || fresh ? 0 : 1);
    if (body != NULL && !head && !fresh)
        PyList_SET_ITEM(body, 0, Py_NewRef(ready->data));
    return body;
}

static PyObject *front_call(PyObject *self, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames) {
    Front *front = (Front *)self;
    if (PyVectorcall_NARGS(nargsf) != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a WSGI app takes (environ, start_response)");
        return NULL;
    }
    PyObject *path = PyDict_CheckExact(args[0]) ? PyDict_GetItemWithError(args[0], k_path_info)
                                                : NULL;
    if (path != NULL && PyUnicode_CheckExact(path)) {
        Py_INCREF(path); /* borrowed from a dict the lookups below could change */
        int under = mounted(front, path);
        if (under <= 0) {
            Py_DECREF(path);
            return under < 0 ? NULL : PyObject_Vectorcall(front->app, args, 2, NULL);
        }
        int method = 0, fresh = 0, failed = 0;
        Ready *ready = answerable(front, args[0], path, &method, &fresh, &failed);
        Py_DECREF(path);
        if (failed)
            return NULL;
        if (ready != NULL) {
            PyObject *body = answer(front, ready, method, fresh, args[1]);
            Py_DECREF(ready);
            return body;
        }
    } else if (PyErr_Occurred())
        return NULL;
    return PyObject_Vectorcall(front->fallback, args, 2, NULL);
}

static PyObject *front_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"ready",        "fallback", "requests", "bytes_sent",
                            "not_modified", "prefixes", "app",      NULL};
    PyObject *ready, *fallback, *requests, *bytes_sent, *not_modified, *prefixes, *app;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO!O!O!O!O:Front", names, &PyDict_Type,
                                     &ready, &fallback, &PyDict_Type, &requests, &PyDict_Type,
                                     &bytes_sent, &PyDict_Type, &not_modified, &PyTuple_Type,
                                     &prefixes, &app))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(prefixes, i))) {
            PyErr_SetString(PyExc_TypeError, "Front: the prefixes must be str");
            return NULL;
        }
    Front *front = (Front *)type->tp_alloc(type, 0);
    if (front == NULL)
        return NULL;
    front->vectorcall = front_call;
#define SET(name) front->name = Py_NewRef(name);
    FRONT_OBJECTS(SET)
#undef SET
    return (PyObject *)front;
}

GC_FUNCTIONS(front, Front, FRONT_OBJECTS)

static PyMemberDef front_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Front, vectorcall), READONLY, NULL},
    {"fallback", T_OBJECT, offsetof(Front, fallback), READONLY,
     "The WSGI app every other request goes to (the Static layer)."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot front_slots[] = {
    {Py_tp_new, front_new},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, front_traverse},
    {Py_tp_clear, front_clear},
    {Py_tp_dealloc, front_dealloc},
    {Py_tp_members, front_members},
    {Py_tp_doc, "A WSGI app: a file's plain 200 from ready, anything else to fallback (see "
                "_static.c)."},
    {0, NULL},
};

static PyType_Spec front_spec = {
    .name = "greenserve._static.Front",
    .basicsize = sizeof(Front),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = front_slots,
};

/* -- the module ------------------------------------------------------------------------------- */

static struct PyModuleDef static_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "greenserve._static",
    .m_doc = "--static's plain 200 of a file kept in memory, in C.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__static(void) {
    if ((k_path_info = PyUnicode_InternFromString("PATH_INFO")) == NULL ||
        (k_method = PyUnicode_InternFromString("REQUEST_METHOD")) == NULL ||
        (k_accept_encoding = PyUnicode_InternFromString("HTTP_ACCEPT_ENCODING")) == NULL ||
        (k_if_none_match = PyUnicode_InternFromString("HTTP_IF_NONE_MATCH")) == NULL ||
        (k_if_modified_since = PyUnicode_InternFromString("HTTP_IF_MODIFIED_SINCE")) == NULL ||
        (k_range = PyUnicode_InternFromString("HTTP_RANGE")) == NULL ||
        (v_ok = PyUnicode_InternFromString("200 OK")) == NULL ||
        (v_not_modified = PyUnicode_InternFromString("304 Not Modified")) == NULL ||
        (v_zero = PyLong_FromLong(0)) == NULL || (v_one = PyLong_FromLong(1)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&static_module);
    if (m == NULL)
        return NULL;
    ready_type = (PyTypeObject *)PyType_FromSpec(&ready_spec);
    PyObject *front_type = ready_type != NULL ? PyType_FromSpec(&front_spec) : NULL;
    if (front_type == NULL || PyModule_AddObject(m, "Front", front_type) < 0) {
        Py_XDECREF(front_type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObject(m, "Ready", Py_NewRef((PyObject *)ready_type)) < 0 ||
        PyModule_AddIntConstant(m, "ABI", STATIC_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
