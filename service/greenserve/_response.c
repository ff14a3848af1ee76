/* greenserve._response: the plain HTTP/1.1 response's hot path in C.
 *
 * Why: after the head parser went to C, a hello request's Python was mostly the response: the
 * Response's construction, start_response, write with its first-write helper, the Date header
 * and finish, five Python frames and about 220 bytecodes per request (sys.settrace, 2026-12-07).
 *
 * Response: the fields of http_response.PythonResponse as a C base type, with __init__,
 *   start_response, write and finish. http_response.Response subclasses it and takes every
 *   other method from PythonResponse. Each C method takes only the plain case and hands
 *   anything else, unchanged, to the Python method of the same job (``_start_response``,
 *   ``_write``, ``_finish``), so there is one definition of every rule, in Python:
 *   - start_response: the first call, positional, with a status seen before (in ``statuses``);
 *   - write: bytes, the first write when its response is built by first_write below, or a
 *     later write of a body that needs no framing (not chunked, within its Content-Length);
 *   - finish: a response whose head went out and whose length is known.
 *   tests/unit/test_response_c.py compares the two classes on generated responses.
 *
 * first_write(status, headers, known, data, expected, request_id, keep_alive, end)
 *   -> (wire bytes, length) | None
 *   The first write of a plain response: status line, header block and body in one bytes, as
 *   PythonResponse._head_bytes and _frame make them. Only when every header is a tuple already
 *   validated (in ``known``, http_response._VALID_HEADERS), the body's length is known (the
 *   app's Content-Length, else ``expected``) and ``data`` fits in it; the caller has checked
 *   HTTP/1.1, a body allowed, start_response called. None sends it the Python way.
 *
 * DateCache: http_response.PythonDateCache in C, the end of every header block from the Date
 *   header on, formatted once per second; http_date(seconds) is its format (RFC 9110 5.6.7),
 *   exported so that tests compare it with email.utils.formatdate.
 *
 * configure(statuses, known, small_body, server) hands over http_response's caches and
 * constants once, at its import. ABI is compared by http_response: a build older than its
 * source is ignored, not trusted. Bump it with any change to what this module accepts or returns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

#define RESPONSE_ABI 1
#define MAX_LINES 64 /* more header lines than this: the Python way */

static PyObject *statuses, *known_headers, *server; /* from configure() */
static Py_ssize_t small_body = -1;
static PyObject *s_version, *s_draining, *s_date, *s_end, *s_sendall, *s_out, *s_write,
    *s_keep_alive, *s_method, *s_py_start_response, *s_py_write, *s_py_finish, *v_no_bytes,
    *v_head, *v_11;

/* -- first_write ------------------------------------------------------------------------------ */

static PyObject *first_write(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[2]) ||
        !PyBytes_CheckExact(args[3]) || !PyUnicode_Check(args[5]) ||
        !PyBytes_CheckExact(args[7])) {
        PyErr_SetString(PyExc_TypeError, "first_write(status, headers, known, data, expected, "
                                         "request_id, keep_alive, end)");
        return NULL;
    }
    PyObject *status = args[0], *headers = args[1], *known = args[2], *data = args[3];
    PyObject *expected = args[4], *end = args[7];
    int keep_alive = PyObject_IsTrue(args[6]);
    if (keep_alive < 0)
        return NULL;
    int is_list = PyList_CheckExact(headers);
    if (!PyBytes_GET_SIZE(status) || !(is_list || PyTuple_CheckExact(headers)))
        Py_RETURN_NONE;

    /* Every line found is held (new references): a lookup may compare with a str subclass's
     * __eq__, Python code that could change ``known`` or ``headers`` under us. */
    PyObject *lines[MAX_LINES];
    Py_ssize_t n_lines = 0, size = PyBytes_GET_SIZE(status);
    PyObject *length = NULL, *result = NULL, *wire = NULL;
    for (Py_ssize_t i = 0; i < Py_SIZE(headers); i++) {
        PyObject *item = is_list ? PyList_GET_ITEM(headers, i) : PyTuple_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item))
            goto decline;
        Py_INCREF(item);
        PyObject *line = PyDict_GetItemWithError(known, item);
        Py_XINCREF(line);
        Py_DECREF(item);
        if (!line) {
            if (PyErr_Occurred())
                goto done;
            goto decline;
        }
        if (PyBytes_CheckExact(line) && n_lines < MAX_LINES) {
            lines[n_lines++] = line;
            size += 2 + PyBytes_GET_SIZE(line);
        } else if (PyLong_CheckExact(line)) {
            Py_XSETREF(length, line);
        } else {
            Py_DECREF(line);
            goto decline;
        }
    }
    if (!length && PyLong_CheckExact(expected)) {
        length = expected;
        Py_INCREF(length);
    }
    if (!length)
        goto decline; /* unknown length (chunked or close-delimited): the Python way */
    Py_ssize_t body = PyLong_AsSsize_t(length);
    if (body == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        goto decline;
    }
    Py_ssize_t data_size = PyBytes_GET_SIZE(data);
    if (body < 0 || data_size > body)
        goto decline; /* more than declared: cut and logged by the Python way */
    Py_ssize_t id_size;
    const char *id = PyUnicode_AsUTF8AndSize(args[5], &id_size);
    if (!id)
        goto done;
    /* By hand, not snprintf: glibc's vfprintf was 0.6% of a hello worker's perf samples. */
    char digits[24];
    char *digit_end = digits + sizeof digits, *digit = digit_end;
    do {
        *--digit = (char)('0' + body % 10);
        body /= 10;
    } while (body);
    Py_ssize_t digits_size = digit_end - digit;
    static const char CL[] = "\r\nContent-Length: ", CLOSE[] = "\r\nConnection: close",
                      RID[] = "\r\nX-Request-ID: ";
    size += sizeof CL - 1 + digits_size + (keep_alive ? 0 : sizeof CLOSE - 1) + sizeof RID - 1 +
            id_size + PyBytes_GET_SIZE(end) + data_size;
    wire = PyBytes_FromStringAndSize(NULL, size);
    if (!wire)
        goto done;
    char *out = PyBytes_AS_STRING(wire);
#define PUT(source, n)                                                                             \
    do {                                                                                           \
        memcpy(out, (source), (n));                                                                \
        out += (n);                                                                                \
    } while (0)
    PUT(PyBytes_AS_STRING(status), PyBytes_GET_SIZE(status));
    for (Py_ssize_t i = 0; i < n_lines; i++) {
        PUT("\r\n", 2);
        PUT(PyBytes_AS_STRING(lines[i]), PyBytes_GET_SIZE(lines[i]));
    }
    PUT(CL, sizeof CL - 1);
    PUT(digit, digits_size);
    if (!keep_alive)
        PUT(CLOSE, sizeof CLOSE - 1);
    PUT(RID, sizeof RID - 1);
    PUT(id, id_size);
    PUT(PyBytes_AS_STRING(end), PyBytes_GET_SIZE(end));
    PUT(PyBytes_AS_STRING(data), data_size);
#undef PUT
    result = PyTuple_Pack(2, wire, length);
    goto done;
decline:
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < n_lines; i++)
        Py_DECREF(lines[i]);
    Py_XDECREF(length);
    Py_XDECREF(wire);
    return result;
}

/* -- DateCache -------------------------------------------------------------------------------- */

static PyObject *http_date_bytes(time_t second) {
    static const char DAYS[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char MONTHS[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    if (!gmtime_r(&second, &tm)) {
        PyErr_SetString(PyExc_OverflowError, "time out of range for an HTTP date");
        return NULL;
    }
    char text[64]; /* PyBytes_FromFormat has no field widths */
    int size = snprintf(text, sizeof text, "%s, %02d %s %04d %02d:%02d:%02d GMT", DAYS[tm.tm_wday],
                        tm.tm_mday, MONTHS[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                        tm.tm_sec);
    return PyBytes_FromStringAndSize(text, size);
}

static PyObject *http_date(PyObject *Py_UNUSED(module), PyObject *seconds) {
    long long second = PyLong_AsLongLong(seconds);
    if (second == -1 && PyErr_Occurred())
        return NULL;
    return http_date_bytes((time_t)second);
}

typedef struct {
    PyObject_HEAD
    double from, until; /* the current second, as time.time() gives it */
    PyObject *end_value, *date_value;
} DateCache;

static PyTypeObject *date_type;

/* The cached end of a header block (a borrowed reference), formatted again in a new second. */
static PyObject *date_end(DateCache *self) {
    struct timespec now_spec;
    clock_gettime(CLOCK_REALTIME, &now_spec);
    double now = (double)now_spec.tv_sec + now_spec.tv_nsec * 1e-9;
    /* both ends, for a clock stepped back */
    if (self->end_value && self->from <= now && now < self->until)
        return self->end_value;
    if (!server) {
        PyErr_SetString(PyExc_RuntimeError, "greenserve._response.configure() was not called");
        return NULL;
    }
    time_t second = now_spec.tv_sec;
    PyObject *date = http_date_bytes(second);
    if (!date)
        return NULL;
    PyObject *end = PyBytes_FromFormat("\r\nDate: %s\r\nServer: %s\r\n\r\n",
                                       PyBytes_AS_STRING(date), PyBytes_AS_STRING(server));
    if (!end) {
        Py_DECREF(date);
        return NULL;
    }
    Py_XSETREF(self->date_value, date);
    Py_XSETREF(self->end_value, end);
    self->from = (double)second;
    self->until = (double)second + 1.0;
    return end;
}

static PyObject *date_cache_end(DateCache *self, PyObject *Py_UNUSED(ignored)) {
    return Py_XNewRef(date_end(self));
}

static PyObject *date_cache_date(DateCache *self, PyObject *Py_UNUSED(ignored)) {
    return date_end(self) ? Py_NewRef(self->date_value) : NULL;
}

static void date_cache_dealloc(DateCache *self) {
    PyTypeObject *type = Py_TYPE(self);
    Py_CLEAR(self->end_value);
    Py_CLEAR(self->date_value);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* a heap type: each instance holds a reference to it */
}

static PyMethodDef date_cache_methods[] = {
    {"end", (PyCFunction)date_cache_end, METH_NOARGS,
     "end() -> bytes: Date and Server headers and the blank line, with their CRLFs"},
    {"date", (PyCFunction)date_cache_date, METH_NOARGS,
     "date() -> bytes: the Date header's value alone"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot date_cache_slots[] = {
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, date_cache_dealloc},
    {Py_tp_methods, date_cache_methods},
    {Py_tp_doc, "The end of every header block from the Date header on, once per second."},
    {0, NULL},
};

static PyType_Spec date_cache_spec = {
    .name = "greenserve._response.DateCache",
    .basicsize = sizeof(DateCache),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = date_cache_slots,
};

/* -- Response --------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *handler, *request_id, *sock, *head, *status, *headers, *length, *expected;
    Py_ssize_t body_sent, truncated;
    int status_code;
    char headers_sent, chunked, keep_alive, no_body;
} Response;

#define RESPONSE_OBJECTS(X)                                                                        \
    X(handler) X(request_id) X(sock) X(head) X(status) X(headers) X(length) X(expected)

static int response_init(Response *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"sock", "upgrading", "handler", "head", "request_id", NULL};
    PyObject *sock, *upgrading, *handler, *head, *request_id;
    if (kwargs && PyDict_GET_SIZE(kwargs)) {
        if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO:Response", names, &sock,
                                         &upgrading, &handler, &head, &request_id))
            return -1;
    } else if (!PyArg_UnpackTuple(args, "Response", 5, 5, &sock, &upgrading, &handler, &head,
                                  &request_id)) {
        return -1;
    }
    int taken = PyObject_IsTrue(upgrading);
    if (taken < 0)
        return -1;
    PyObject *keep_alive = PyObject_GetAttr(head, s_keep_alive);
    int keep = keep_alive ? PyObject_IsTrue(keep_alive) : -1;
    Py_XDECREF(keep_alive);
    if (keep < 0)
        return -1;
    PyObject *method = PyObject_GetAttr(head, s_method);
    if (!method)
        return -1;
    int is_head = PyObject_RichCompareBool(method, v_head, Py_EQ);
    Py_DECREF(method);
    if (is_head < 0)
        return -1;
    PyObject *headers = PyList_New(0);
    if (!headers)
        return -1;
    Py_XSETREF(self->handler, Py_NewRef(handler));
    Py_XSETREF(self->request_id, Py_NewRef(request_id));
    Py_XSETREF(self->sock, Py_NewRef(sock));
    Py_XSETREF(self->head, Py_NewRef(head));
    Py_XSETREF(self->status, Py_NewRef(v_no_bytes));
    Py_XSETREF(self->headers, headers);
    Py_XSETREF(self->length, Py_NewRef(Py_None));
    Py_XSETREF(self->expected, Py_NewRef(Py_None));
    self->status_code = 0;
    self->body_sent = self->truncated = 0;
    self->headers_sent = self->chunked = 0;
    self->keep_alive = keep && !taken;
    self->no_body = (char)is_head;
    return 0;
}

static int response_traverse(Response *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
#define VISIT(field) Py_VISIT(self->field);
    RESPONSE_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int response_clear(Response *self) {
#define CLEAR(field) Py_CLEAR(self->field);
    RESPONSE_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void response_dealloc(Response *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    response_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* a heap type: each instance holds a reference to it */
}

/* The Python method ``name`` of this response, called with these arguments: the general case. */
static PyObject *in_python(Response *self, PyObject *name, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames) {
    PyObject *method = PyObject_GetAttr((PyObject *)self, name);
    if (!method)
        return NULL;
    PyObject *result = PyObject_Vectorcall(method, args, nargsf, kwnames);
    Py_DECREF(method);
    return result;
}

static PyObject *response_start_response(Response *self, PyObject *const *args, size_t nargsf,
                                         PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    /* the first call (no status yet), without exc_info, with a status line seen before */
    if (nargs == 2 && !kwnames && self->status && PyBytes_CheckExact(self->status) &&
        !PyBytes_GET_SIZE(self->status) && PyUnicode_CheckExact(args[0]) && statuses) {
        PyObject *known = PyDict_GetItemWithError(statuses, args[0]);
        if (!known && PyErr_Occurred())
            return NULL;
        if (known && PyTuple_CheckExact(known) && PyTuple_GET_SIZE(known) == 2 &&
            PyBytes_CheckExact(PyTuple_GET_ITEM(known, 0)) &&
            PyLong_CheckExact(PyTuple_GET_ITEM(known, 1))) {
            long code = PyLong_AsLong(PyTuple_GET_ITEM(known, 1));
            if (code == -1 && PyErr_Occurred())
                return NULL;
            Py_XSETREF(self->status, Py_NewRef(PyTuple_GET_ITEM(known, 0)));
            Py_XSETREF(self->headers, Py_NewRef(args[1]));
            self->status_code = (int)code;
            if ((code >= 100 && code < 200) || code == 204 || code == 304)
                self->no_body = 1; /* RFC 9110 6.4.1 */
            return PyObject_GetAttr((PyObject *)self, s_write);
        }
    }
    return in_python(self, s_py_start_response, args, nargsf, kwnames);
}

/* The end of the header block from the handler's Date cache: a new reference. */
static PyObject *header_end(PyObject *handler) {
    PyObject *date = PyObject_GetAttr(handler, s_date);
    if (!date)
        return NULL;
    PyObject *end = Py_TYPE(date) == date_type ? Py_XNewRef(date_end((DateCache *)date))
                                               : PyObject_CallMethodNoArgs(date, s_end);
    Py_DECREF(date);
    return end;
}

/* The socket's sendall, or what its first lines do when the socket holds its writes (a
 * CountingSocket corked for a pipelined batch: ``out`` is a list): the append, without the
 * Python frame, once per pipelined response. _PyType_Lookup: a socket without ``out`` (TLS,
 * a test's) costs no AttributeError. */
static PyObject *sendall(Response *self, PyObject *data) {
    PyObject *sock = self->sock;
    if (!sock) {
        PyErr_SetString(PyExc_AttributeError, "the response has no socket");
        return NULL;
    }
    PyObject *slot = _PyType_Lookup(Py_TYPE(sock), s_out); /* borrowed */
    if (slot && Py_IS_TYPE(slot, &PyMemberDescr_Type)) {
        PyObject *out = Py_TYPE(slot)->tp_descr_get(slot, sock, (PyObject *)Py_TYPE(sock));
        if (!out) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return NULL;
            PyErr_Clear(); /* not set yet: the Python method decides */
        } else {
            int held = PyList_CheckExact(out);
            int failed = held ? PyList_Append(out, data) : 0;
            Py_DECREF(out);
            if (held)
                return failed ? NULL : Py_NewRef(Py_None);
        }
    }
    return PyObject_CallMethodOneArg(sock, s_sendall, data);
}

/* The first write built by first_write and sent: 1, or 0 when it declined (the Python way). */
static int write_first(Response *self, PyObject *data) {
    PyObject *version = PyObject_GetAttr(self->head, s_version);
    if (!version)
        return -1;
    int v11 = version == v_11 || PyObject_RichCompareBool(version, v_11, Py_EQ);
    Py_DECREF(version);
    if (v11 <= 0)
        return v11;
    PyObject *draining_value = PyObject_GetAttr(self->handler, s_draining);
    int draining = draining_value ? PyObject_IsTrue(draining_value) : -1;
    Py_XDECREF(draining_value);
    if (draining < 0)
        return -1;
    PyObject *end = header_end(self->handler);
    if (!end)
        return -1;
    if (!self->status || !self->headers || !self->request_id) {
        Py_DECREF(end);
        return 0;
    }
    PyObject *args[8] = {self->status, self->headers, known_headers, data,
                         self->expected ? self->expected : Py_None, self->request_id,
                         self->keep_alive && !draining ? Py_True : Py_False, end};
    PyObject *built = known_headers ? first_write(NULL, args, 8) : Py_NewRef(Py_None);
    Py_DECREF(end);
    if (!built)
        return -1;
    if (built == Py_None) {
        Py_DECREF(built);
        return 0;
    }
    Py_XSETREF(self->length, Py_NewRef(PyTuple_GET_ITEM(built, 1)));
    if (draining)
        self->keep_alive = 0;
    self->body_sent = PyBytes_GET_SIZE(data);
    PyObject *sent = sendall(self, PyTuple_GET_ITEM(built, 0));
    Py_DECREF(built);
    if (!sent)
        return -1;
    Py_DECREF(sent);
    self->headers_sent = 1;
    return 1;
}

/* Whether ``size`` more bytes stay within the declared length (1), or not (0); -1 on error. */
static int within_length(Response *self, Py_ssize_t size) {
    if (!self->length || self->length == Py_None)
        return 1;
    if (!PyLong_CheckExact(self->length))
        return 0;
    Py_ssize_t length = PyLong_AsSsize_t(self->length);
    if (length == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return self->body_sent <= length - size;
}

static PyObject *response_write(Response *self, PyObject *data) {
    if (PyBytes_CheckExact(data)) {
        Py_ssize_t size = PyBytes_GET_SIZE(data);
        if (!size)
            Py_RETURN_NONE;
        if (!self->headers_sent) {
            if (size <= small_body && !self->no_body) {
                int done = write_first(self, data);
                if (done < 0)
                    return NULL;
                if (done)
                    Py_RETURN_NONE;
            }
        } else if (self->no_body) {
            Py_RETURN_NONE;
        } else if (!self->chunked && within_length(self, size)) {
            self->body_sent += size;
            PyObject *sent = sendall(self, data);
            if (!sent)
                return NULL;
            Py_DECREF(sent);
            Py_RETURN_NONE;
        }
    }
    return in_python(self, s_py_write, &data, 1, NULL);
}

static PyObject *response_finish(Response *self, PyObject *Py_UNUSED(ignored)) {
    if (self->headers_sent && !self->chunked) {
        if (self->no_body)
            Py_RETURN_NONE;
        if (self->length && PyLong_CheckExact(self->length)) {
            Py_ssize_t length = PyLong_AsSsize_t(self->length);
            if (length != -1 || !PyErr_Occurred()) {
                if (self->body_sent != length)
                    self->keep_alive = 0; /* the app's Content-Length was wrong: framing is lost */
                Py_RETURN_NONE;
            }
            PyErr_Clear();
        }
    }
    return in_python(self, s_py_finish, NULL, 0, NULL);
}

static PyMethodDef response_methods[] = {
    {"start_response", (PyCFunction)(void (*)(void))response_start_response,
     METH_FASTCALL | METH_KEYWORDS,
     "start_response(status, headers, exc_info=None) -> write (PEP 3333)"},
    {"write", (PyCFunction)response_write, METH_O,
     "write(data): the WSGI write callable, and each chunk of an iterable result"},
    {"finish", (PyCFunction)response_finish, METH_NOARGS,
     "finish(): the end of the body (the last chunk, or the framing checked)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef response_members[] = {
#define OBJECT(field) {#field, T_OBJECT, offsetof(Response, field), 0, NULL},
    RESPONSE_OBJECTS(OBJECT)
#undef OBJECT
    {"body_sent", T_PYSSIZET, offsetof(Response, body_sent), 0, NULL},
    {"truncated", T_PYSSIZET, offsetof(Response, truncated), 0, NULL},
    {"status_code", T_INT, offsetof(Response, status_code), 0, NULL},
    {"headers_sent", T_BOOL, offsetof(Response, headers_sent), 0, NULL},
    {"chunked", T_BOOL, offsetof(Response, chunked), 0, NULL},
    {"keep_alive", T_BOOL, offsetof(Response, keep_alive), 0, NULL},
    {"no_body", T_BOOL, offsetof(Response, no_body), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot response_slots[] = {
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, response_init},
    {Py_tp_dealloc, response_dealloc},
    {Py_tp_traverse, response_traverse},
    {Py_tp_clear, response_clear},
    {Py_tp_methods, response_methods},
    {Py_tp_members, response_members},
    {Py_tp_doc, "http_response.PythonResponse's fields and hot methods (http_response.Response)."},
    {0, NULL},
};

static PyType_Spec response_spec = {
    .name = "greenserve._response.Response",
    .basicsize = sizeof(Response),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = response_slots,
};

/* -- module ----------------------------------------------------------------------------------- */

static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyDict_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) ||
        !PyLong_CheckExact(args[2]) || !PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(statuses: dict, known: dict, small_body: int, server: bytes)");
        return NULL;
    }
    Py_ssize_t small = PyLong_AsSsize_t(args[2]);
    if (small == -1 && PyErr_Occurred())
        return NULL;
    Py_XSETREF(statuses, Py_NewRef(args[0]));
    Py_XSETREF(known_headers, Py_NewRef(args[1]));
    Py_XSETREF(server, Py_NewRef(args[3]));
    small_body = small;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"first_write", (PyCFunction)(void (*)(void))first_write, METH_FASTCALL,
     "first_write(status, headers, known, data, expected, request_id, keep_alive, end) -> "
     "(wire, length) or None"},
    {"http_date", (PyCFunction)http_date, METH_O, "http_date(seconds) -> bytes (IMF-fixdate)"},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(statuses, known, small_body, server): http_response's caches and constants"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "greenserve._response", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__response(void) {
#define INTERN(var, text)                                                                          \
    if (!(var = PyUnicode_InternFromString(text)))                                                 \
        return NULL;
    INTERN(s_version, "version")
    INTERN(s_draining, "draining")
    INTERN(s_date, "date")
    INTERN(s_end, "end")
    INTERN(s_sendall, "sendall")
    INTERN(s_out, "out")
    INTERN(s_write, "write")
    INTERN(s_keep_alive, "keep_alive")
    INTERN(s_method, "method")
    INTERN(s_py_start_response, "_start_response")
    INTERN(s_py_write, "_write")
    INTERN(s_py_finish, "_finish")
    INTERN(v_11, "1.1")
#undef INTERN
    if (!(v_no_bytes = PyBytes_FromStringAndSize("", 0)) ||
        !(v_head = PyBytes_FromStringAndSize("HEAD", 4)))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyTypeObject *response_type = (PyTypeObject *)PyType_FromSpec(&response_spec);
    date_type = (PyTypeObject *)PyType_FromSpec(&date_cache_spec);
    if (!response_type || !date_type ||
        PyModule_AddObject(m, "Response", (PyObject *)response_type) < 0 ||
        PyModule_AddObject(m, "DateCache", Py_NewRef(date_type)) < 0 ||
        PyModule_AddIntConstant(m, "ABI", RESPONSE_ABI) < 0) {
        Py_XDECREF(response_type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
