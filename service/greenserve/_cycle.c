/* greenserve._cycle: one plain keep-alive request's cycle (HttpConnection._respond and _run_app)
 * in C.
 *
 * Why: with the head parsed and the response framed in C, a hello request still ran about 70
 * lines of Python in _respond, _run_app and HttpHandler.environ (sys.settrace, 2026-12-07), and
 * on a worker under wrk each of them costs three to four times what it costs in a warm loop: the
 * kernel's TCP path between two requests evicts the interpreter's caches. A worker that ran only
 * a minimal version of those lines answered about 30% more requests per CPU-second.
 *
 * respond(conn, head) -> True | False | NotImplemented
 *   The request ``head`` on the HttpConnection ``conn``, as HttpConnection._respond runs it, when
 *   it is plain: its environ built by the C parser, no body, no Upgrade, keep-alive, no header
 *   list kept for trailers, not the connection's first request (its request-id cell exists), no
 *   TLS client certificate, no forwarded headers to apply, no --root-path, no --request-timeout.
 *   Anything else is declined (NotImplemented) before anything happens, and _respond runs it.
 *   Every rule that is not the plain case's is Python's and called from here, so it has one
 *   definition: the request id (HttpHandler.new_request_id), the response (the Response type),
 *   a failure (HttpConnection.app_raised), the body's close (close_body), an unfinished
 *   response (_unfinished). The accounting is counted here (count() below) only in
 *   ResponseAccounting.responded's common case, a finished response without --access-log;
 *   anything else calls responded. True: the connection may serve another request; False: it
 *   ends.
 *
 * The connection's, the head's and the request-id cell's fields are read and written through
 * their slots' offsets, and the response's, the parser's, the stats' and the histogram's through
 * their member definitions, both taken at configure from the classes' member descriptors (what
 * ``obj.name`` finds): a generic attribute lookup cost about 190 instructions each, eighteen per
 * request. Objects of other classes than the configured ones are declined.
 *
 * configure(response_type, empty_input, file_wrapper, connection_type, head_type, cell_type,
 * status_keys, parser_type, histogram_type, stats_type) hands over http.py's objects once.
 * tests/unit/test_cycle_c.py runs the same requests with and without it and compares what was
 * sent, the metrics and the logs. ABI is compared by http.py: a stale build is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

#define CYCLE_ABI 1

#include <structmember.h>

/* from configure() */
static PyObject *response_type, *empty_input, *file_wrapper, *connection_type, *head_type,
    *cell_type, *status_keys;

/* Slot offsets: the connection's, the head's and the cell's fields this module touches. */
#define CONN_SLOTS(X)                                                                             \
    X(handler) X(sock) X(parser) X(response) X(continue_sent) X(served) X(request_cell)         \
    X(trusted_peer) X(extra_environ) X(address)
#define HEAD_SLOTS(X)                                                                             \
    X(environ) X(upgrade) X(content_length) X(chunked) X(keep_alive) X(forwarded)              \
    X(request_id)
#define OFFSET(name) static Py_ssize_t conn_##name;
CONN_SLOTS(OFFSET)
#undef OFFSET
#define OFFSET(name) static Py_ssize_t head_##name;
HEAD_SLOTS(OFFSET)
#undef OFFSET
static Py_ssize_t cell_id;

/* Fields read through their member definitions (PyMember_GetOne: any member type, no lookup
 * through the class), on objects of the configured classes only. */
#define MEMBERS(X)                                                                                \
    X(response, truncated) X(response, status_code) X(response, keep_alive)                     \
    X(parser, upgrading) X(histogram, bounds) X(histogram, counts) X(histogram, sum)             \
    X(stats, http_requests) X(stats, requests_served)
#define DECLARE(owner, name) static PyMemberDef *m_##owner##_##name;
MEMBERS(DECLARE)
#undef DECLARE
static PyObject *parser_type, *histogram_type, *stats_type;

#define GET(obj, owner, name) PyMember_GetOne((const char *)(obj), m_##owner##_##name)
#define PUT(obj, owner, name, value) PyMember_SetOne((char *)(obj), m_##owner##_##name, (value))

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* Replace a slot's value (its old value released last: a __del__ then sees the new one). */
static void set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value) {
    Py_XSETREF(SLOT(obj, offset), Py_NewRef(value));
}

/* Attribute and key names, interned once: the X-macro keeps the list, the declaration and the
 * interning in one place. */
#define NAMES(X)                                                                                  \
    X(handler) X(sock) X(parser) X(upgrading) X(response) X(continue_sent) X(served)             \
    X(request_cell) X(id) X(trusted_peer) X(extra_environ) X(environ) X(upgrade)                \
    X(content_length) X(chunked) X(keep_alive) X(forwarded) X(request_id) X(headers)           \
    X(root_path) X(request_timeout) X(app) X(start_response) X(expected) X(try_sendfile)       \
    X(write) X(finish) X(close) X(app_raised) X(close_body) X(new_request_id) X(responded)     \
    X(address) X(draining) X(_unfinished) X(access_log) X(truncated) X(status_code) X(stats)     \
    X(http_requests) X(durations) X(bounds) X(counts) X(sum) X(requests_served)
#define DECLARE(name) static PyObject *s_##name;
NAMES(DECLARE)
#undef DECLARE
static PyObject *k_input, *k_request_id_header, *k_request_id, *v_not_upgraded, *v_one, *v_zero;

static double now(void) {
    /* time.perf_counter's clock on Linux (CPython 3.11: CLOCK_MONOTONIC) */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The truth of obj.name: 1, 0, or -1 with an exception set. */
static int attr_true(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* Whether _respond's plain case holds for this head (its slots all set: a Head of the C
 * parser): 1 yes, 0 decline, -1 an exception. */
static int plain(PyObject *conn, PyObject *head, PyObject *handler) {
    if (SLOT(head, head_environ) == Py_None || SLOT(head, head_content_length) != Py_None ||
        SLOT(conn, conn_request_cell) == Py_None)
        return 0;
    /* each must be false, except keep_alive: true (headers: a property of the C Head) */
    int listed = attr_true(head, s_headers);
    if (listed != 0)
        return listed < 0 ? -1 : 0;
    PyObject *const values[] = {SLOT(head, head_upgrade), SLOT(head, head_chunked),
                                SLOT(conn, conn_extra_environ)};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        int truth = PyObject_IsTrue(values[i]);
        if (truth != 0)
            return truth < 0 ? -1 : 0;
    }
    int keep_alive = PyObject_IsTrue(SLOT(head, head_keep_alive));
    if (keep_alive <= 0)
        return keep_alive;
    int trusted = PyObject_IsTrue(SLOT(conn, conn_trusted_peer));
    if (trusted < 0)
        return -1;
    if (trusted) { /* a trusted proxy's forwarded headers are applied in Python */
        int forwarded = PyObject_IsTrue(SLOT(head, head_forwarded));
        if (forwarded != 0)
            return forwarded < 0 ? -1 : 0;
    }
    PyObject *const names[] = {s_root_path, s_request_timeout};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int truth = attr_true(handler, names[i]);
        if (truth != 0)
            return truth < 0 ? -1 : 0;
    }
    return 1;
}

/* Every slot set, on objects of the configured classes: what SLOT may read without a check. */
static int slots_set(PyObject *conn, PyObject *head) {
    if ((PyObject *)Py_TYPE(conn) != connection_type || (PyObject *)Py_TYPE(head) != head_type)
        return 0;
#define CHECK(name)                                                                               \
    if (SLOT(conn, conn_##name) == NULL)                                                          \
        return 0;
    CONN_SLOTS(CHECK)
#undef CHECK
#define CHECK(name)                                                                               \
    if (SLOT(head, head_##name) == NULL)                                                          \
        return 0;
    HEAD_SLOTS(CHECK)
#undef CHECK
    PyObject *cell = SLOT(conn, conn_request_cell);
    return (PyObject *)Py_TYPE(SLOT(conn, conn_parser)) == parser_type &&
           (cell == Py_None || ((PyObject *)Py_TYPE(cell) == cell_type && SLOT(cell, cell_id)));
}

/* ResponseAccounting.responded's counting for a finished response with no access log to
 * write: the status's count, the duration's bucket and sum, requests_served. 0, or -1. */
static int count(PyObject *stats, PyObject *durations, PyObject *writer, double duration) {
    PyObject *codes = GET(stats, stats, http_requests);
    PyObject *status = codes != NULL ? GET(writer, response, status_code) : NULL;
    PyObject *bounds = NULL, *counts = NULL, *total = NULL, *value = NULL, *key = NULL;
    int result = -1;
    if (status == NULL || !PyDict_Check(codes))
        goto done;
    key = Py_XNewRef(PyDict_GetItemWithError(status_keys, status)); /* STATUS_KEYS.get */
    if (key == NULL && (PyErr_Occurred() || (key = PyObject_Str(status)) == NULL))
        goto done;
    PyObject *seen = PyDict_GetItemWithError(codes, key);
    if (seen == NULL && PyErr_Occurred())
        goto done;
    value = PyNumber_Add(seen != NULL ? seen : v_zero, v_one);
    if (value == NULL || PyDict_SetItem(codes, key, value) < 0)
        goto done;
    Py_CLEAR(value);
    /* Histogram.observe: bisect_left over the bounds, then the sum */
    if ((bounds = GET(durations, histogram, bounds)) == NULL ||
        (counts = GET(durations, histogram, counts)) == NULL)
        goto done;
    if (!PyTuple_Check(bounds) || !PyList_Check(counts) ||
        PyList_GET_SIZE(counts) != PyTuple_GET_SIZE(bounds) + 1) {
        PyErr_SetString(PyExc_TypeError, "a histogram's bounds and counts do not match");
        goto done;
    }
    Py_ssize_t low = 0, high = PyTuple_GET_SIZE(bounds);
    while (low < high) {
        Py_ssize_t middle = (low + high) / 2;
        double bound = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, middle));
        if (bound == -1.0 && PyErr_Occurred())
            goto done;
        if (bound < duration)
            low = middle + 1;
        else
            high = middle;
    }
    value = PyNumber_Add(PyList_GET_ITEM(counts, low), v_one);
    if (value == NULL)
        goto done;
    PyList_SetItem(counts, low, value); /* steals the reference */
    value = NULL;
    if ((total = GET(durations, histogram, sum)) == NULL)
        goto done;
    double sum = PyFloat_AsDouble(total);
    if ((sum == -1.0 && PyErr_Occurred()) || (value = PyFloat_FromDouble(sum + duration)) == NULL ||
        PUT(durations, histogram, sum, value) < 0)
        goto done;
    Py_CLEAR(value);
    PyObject *served = GET(stats, stats, requests_served);
    value = served != NULL ? PyNumber_Add(served, v_one) : NULL;
    Py_XDECREF(served);
    if (value != NULL && PUT(stats, stats, requests_served, value) == 0)
        result = 0;
done:
    Py_XDECREF(codes);
    Py_XDECREF(status);
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_XDECREF(bounds);
    Py_XDECREF(counts);
    Py_XDECREF(total);
    return result;
}

/* The response counted and, when responded's other branches apply, handed to it: 0, or -1. */
static int account(PyObject *conn, PyObject *handler, PyObject *stats, PyObject *durations,
                   PyObject *environ, PyObject *writer, double duration) {
    PyObject *truncated = GET(writer, response, truncated);
    int cut = truncated != NULL ? PyObject_IsTrue(truncated) : -1;
    Py_XDECREF(truncated);
    int logged = cut == 0 ? attr_true(handler, s_access_log) : 0;
    if (cut < 0 || logged < 0)
        return -1;
    if (!cut && !logged)
        return count(stats, durations, writer, duration);
    PyObject *seconds = PyFloat_FromDouble(duration);
    if (seconds == NULL)
        return -1;
    PyObject *call[] = {handler, SLOT(conn, conn_address), environ, writer, seconds};
    PyObject *done = PyObject_VectorcallMethod(s_responded, call, 5, NULL);
    Py_DECREF(seconds);
    Py_XDECREF(done);
    return done != NULL ? 0 : -1;
}

/* writer.expected for a list or tuple body: _run_app's sum of the chunks' lengths. */
static int set_expected(PyObject *writer, PyObject *result) {
    Py_ssize_t total = 0, n = PySequence_Fast_GET_SIZE(result);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t size = PyObject_Size(PySequence_Fast_GET_ITEM(result, i));
        if (size < 0)
            return -1;
        total += size;
    }
    PyObject *expected = PyLong_FromSsize_t(total);
    if (expected == NULL)
        return -1;
    int failed = PyObject_SetAttr(writer, s_expected, expected);
    Py_DECREF(expected);
    return failed;
}

/* The app's body, sent: what _run_app's try block does after the call. 0, or -1 raised. */
static int send_body(PyObject *writer, PyObject *result) {
    if (PyList_Check(result) || PyTuple_Check(result)) {
        if (set_expected(writer, result) < 0)
            return -1;
    } else {
        int wrapped = PyObject_IsInstance(result, file_wrapper);
        if (wrapped < 0)
            return -1;
        if (wrapped) {
            PyObject *sent = PyObject_CallMethodOneArg(writer, s_try_sendfile, result);
            if (sent == NULL)
                return -1;
            int done = PyObject_IsTrue(sent);
            Py_DECREF(sent);
            if (done < 0)
                return -1;
            if (done)
                goto finish;
        }
    }
    PyObject *chunks = PyObject_GetIter(result), *chunk;
    if (chunks == NULL)
        return -1;
    while ((chunk = PyIter_Next(chunks)) != NULL) {
        PyObject *written = PyObject_CallMethodOneArg(writer, s_write, chunk);
        Py_DECREF(chunk);
        if (written == NULL) {
            Py_DECREF(chunks);
            return -1;
        }
        Py_DECREF(written);
    }
    Py_DECREF(chunks);
    if (PyErr_Occurred())
        return -1;
finish:;
    PyObject *finished = PyObject_CallMethodNoArgs(writer, s_finish);
    if (finished == NULL)
        return -1;
    Py_DECREF(finished);
    return 0;
}

/* _run_app for a plain request: Py_True (finished), Py_None (failed, answered by app_raised),
 * or NULL with a BaseException that is no Exception (GreenletExit) to pass on. */
static PyObject *run_app(PyObject *conn, PyObject *handler, PyObject *head, PyObject *writer,
                         PyObject *environ) {
    PyObject *app = PyObject_GetAttr(handler, s_app);
    if (app == NULL)
        return NULL;
    PyObject *start_response = PyObject_GetAttr(writer, s_start_response);
    if (start_response == NULL) {
        Py_DECREF(app);
        return NULL;
    }
    PyObject *call[] = {environ, start_response};
    PyObject *result = PyObject_Vectorcall(app, call, 2, NULL);
    Py_DECREF(start_response);
    Py_DECREF(app);
    PyObject *keep = NULL;
    if (result != NULL && send_body(writer, result) == 0)
        keep = Py_NewRef(Py_True);
    else if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyErr_NormalizeException(&type, &value, &traceback);
        if (traceback != NULL)
            PyException_SetTraceback(value, traceback);
        PyObject *args[] = {conn, value, head, environ, writer};
        keep = PyObject_VectorcallMethod(s_app_raised, args, 5,
                                         NULL);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
    }
    if (result != NULL) { /* _run_app's finally: the body's close(), whatever happened */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        int closes = PyObject_HasAttr(result, s_close);
        PyObject *closed = closes ? PyObject_CallMethodOneArg(conn, s_close_body, result) : NULL;
        Py_DECREF(result);
        if (closes && closed == NULL) { /* close_body passes on only a BaseException */
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            Py_CLEAR(keep);
            return NULL;
        }
        Py_XDECREF(closed);
        PyErr_Restore(type, value, traceback);
    }
    return keep;
}

static PyObject *respond(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "respond(conn, head)");
        return NULL;
    }
    if (response_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenserve._cycle is not configured");
        return NULL;
    }
    PyObject *conn = args[0], *head = args[1];
    if (!slots_set(conn, head))
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *handler = SLOT(conn, conn_handler);
    int fits = plain(conn, head, handler);
    if (fits <= 0)
        return fits < 0 ? NULL : Py_NewRef(Py_NotImplemented);
    /* the counters count() writes, of the classes whose members it was configured with */
    PyObject *stats = PyObject_GetAttr(handler, s_stats);
    PyObject *durations = stats != NULL ? PyObject_GetAttr(handler, s_durations) : NULL;
    if (durations == NULL || (PyObject *)Py_TYPE(stats) != stats_type ||
        (PyObject *)Py_TYPE(durations) != histogram_type) {
        Py_XDECREF(stats);
        Py_XDECREF(durations);
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_NotImplemented);
    }

    /* held here: the slots may be rewritten while the app runs */
    Py_INCREF(handler);
    PyObject *environ = Py_NewRef(SLOT(head, head_environ));
    PyObject *cell = Py_NewRef(SLOT(conn, conn_request_cell));
    PyObject *request_id = NULL, *writer = NULL, *keep = NULL, *answer = NULL;
    double started = now();
    int named = PyObject_IsTrue(SLOT(conn, conn_trusted_peer));
    if (named > 0) /* only a trusted proxy names the request */
        named = PyObject_IsTrue(SLOT(head, head_request_id));
    if (named < 0)
        goto done;
    request_id = named ? Py_NewRef(SLOT(head, head_request_id))
                       : PyObject_CallMethodNoArgs(handler, s_new_request_id);
    if (request_id == NULL)
        goto done;
    PyObject *upgrading = GET(SLOT(conn, conn_parser), parser, upgrading);
    if (upgrading == NULL)
        goto done;
    PyObject *made[] = {SLOT(conn, conn_sock), upgrading, handler, head, request_id};
    writer = PyObject_Vectorcall(response_type, made, 5, NULL);
    Py_DECREF(upgrading);
    if (writer == NULL)
        goto done;
    set_slot(conn, conn_response, writer);
    set_slot(conn, conn_continue_sent, Py_False);
    set_slot(head, head_environ, Py_None); /* the Head outlives the request: not the environ */
    if (PyDict_SetItem(environ, k_input, empty_input) < 0 ||
        PyDict_SetItem(environ, k_request_id_header, request_id) < 0 ||
        PyDict_SetItem(environ, k_request_id, request_id) < 0)
        goto done;
    PyObject *served = PyNumber_Add(SLOT(conn, conn_served), v_one);
    if (served == NULL)
        goto done;
    set_slot(conn, conn_served, served);
    Py_DECREF(served);
    set_slot(cell, cell_id, request_id);

    keep = run_app(conn, handler, head, writer, environ);
    set_slot(cell, cell_id, Py_None); /* _respond's finally: the cell forgets the request */
    if (keep == NULL)
        goto done;
    double duration = now() - started;
    if (keep == Py_None) { /* failed (answered) or cut short */
        PyObject *seconds = PyFloat_FromDouble(duration);
        if (seconds == NULL)
            goto done;
        PyObject *call[] = {conn, head, environ, writer, seconds, v_not_upgraded};
        PyObject *unfinished = PyObject_VectorcallMethod(s__unfinished, call, 6, NULL);
        Py_DECREF(seconds);
        if (unfinished != NULL) {
            Py_DECREF(unfinished);
            answer = Py_NewRef(Py_False);
        }
        goto done;
    }
    if (account(conn, handler, stats, durations, environ, writer, duration) < 0)
        goto done;
    PyObject *alive = GET(writer, response, keep_alive);
    int keep_alive = alive != NULL ? PyObject_IsTrue(alive) : -1;
    Py_XDECREF(alive);
    int draining = keep_alive > 0 ? attr_true(handler, s_draining) : 0;
    if (keep_alive >= 0 && draining >= 0) /* the body was none: nothing left to discard */
        answer = Py_NewRef(keep_alive && !draining ? Py_True : Py_False);
done:
    Py_DECREF(handler);
    Py_DECREF(stats);
    Py_DECREF(durations);
    Py_DECREF(environ);
    Py_DECREF(cell);
    Py_XDECREF(request_id);
    Py_XDECREF(writer);
    Py_XDECREF(keep);
    return answer;
}

/* The member definition of ``type.name``: a member descriptor (as __slots__ and PyMemberDef
 * make them), writable; ``object``: an object slot, whose offset SLOT may use. */
static PyMemberDef *member(PyObject *type, PyObject *name, int object) {
    PyObject *descriptor = PyObject_GetAttr(type, name);
    if (descriptor == NULL)
        return NULL;
    PyMemberDef *found = NULL;
    if (Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
        found = ((PyMemberDescrObject *)descriptor)->d_member;
        if ((found->flags & READONLY) || (object && found->type != T_OBJECT_EX))
            found = NULL;
    }
    Py_DECREF(descriptor);
    if (found == NULL)
        PyErr_Format(PyExc_TypeError, "%R.%U is not a writable %s", type, name,
                     object ? "object slot" : "member");
    return found;
}

static int slot_offset(PyObject *type, PyObject *name, Py_ssize_t *offset) {
    PyMemberDef *found = member(type, name, 1);
    if (found != NULL)
        *offset = found->offset;
    return found != NULL ? 0 : -1;
}

#define CONFIGURED 10
static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    int types = nargs == CONFIGURED && PyDict_Check(args[6]);
    for (Py_ssize_t i = 0; types && i < CONFIGURED; i++)
        types = i == 1 || i == 6 || PyType_Check(args[i]);
    if (!types) {
        PyErr_SetString(PyExc_TypeError, "configure(response_type, empty_input, file_wrapper, "
                                         "connection_type, head_type, cell_type, status_keys, "
                                         "parser_type, histogram_type, stats_type)");
        return NULL;
    }
    PyObject *const response = args[0], *parser = args[7], *histogram = args[8], *stats = args[9];
#define TAKE(name)                                                                                \
    if (slot_offset(args[3], s_##name, &conn_##name) < 0)                                         \
        return NULL;
    CONN_SLOTS(TAKE)
#undef TAKE
#define TAKE(name)                                                                                \
    if (slot_offset(args[4], s_##name, &head_##name) < 0)                                         \
        return NULL;
    HEAD_SLOTS(TAKE)
#undef TAKE
    if (slot_offset(args[5], s_id, &cell_id) < 0)
        return NULL;
#define TAKE(owner, name)                                                                         \
    if ((m_##owner##_##name = member(owner, s_##name, 0)) == NULL)                               \
        return NULL;
    MEMBERS(TAKE)
#undef TAKE
    PyObject **const fields[] = {&response_type, &empty_input, &file_wrapper, &connection_type,
                                 &head_type,     &cell_type,   &status_keys,  &parser_type,
                                 &histogram_type, &stats_type};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        Py_XSETREF(*fields[i], Py_NewRef(args[i]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"respond", (PyCFunction)(void (*)(void))respond, METH_FASTCALL,
     "respond(conn, head): a plain request's _respond in C; NotImplemented declines it."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(response_type, empty_input, file_wrapper, connection_type, head_type, "
     "cell_type, status_keys, parser_type, histogram_type, stats_type), once, from http.py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "greenserve._cycle", NULL, -1,
                                        methods};

PyMODINIT_FUNC PyInit__cycle(void) {
#define INTERN(name)                                                                              \
    if ((s_##name = PyUnicode_InternFromString(#name)) == NULL)                                   \
        return NULL;
    NAMES(INTERN)
#undef INTERN
    if ((k_input = PyUnicode_InternFromString("wsgi.input")) == NULL ||
        (k_request_id_header = PyUnicode_InternFromString("HTTP_X_REQUEST_ID")) == NULL ||
        (k_request_id = PyUnicode_InternFromString("greenserve.request_id")) == NULL ||
        (v_not_upgraded = Py_BuildValue("(ii)", 0, 0)) == NULL ||
        (v_one = PyLong_FromLong(1)) == NULL || (v_zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddIntConstant(module, "ABI", CYCLE_ABI) < 0)
        Py_CLEAR(module);
    return module;
}
