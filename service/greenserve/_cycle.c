/* greenserve._cycle: plain keep-alive requests' cycle in C (HttpConnection.serve's loop,
 * _respond and _run_app).
 *
 * Why: with the head parsed and the response framed in C, a hello request still ran about 70
 * lines of Python in _respond, _run_app and HttpHandler.environ (sys.settrace, 2026-12-07), and
 * on a worker under wrk each of them costs three to four times what it costs in a warm loop: the
 * kernel's TCP path between two requests evicts the interpreter's caches. A worker that ran only
 * a minimal version of those lines answered about a fifth more requests per CPU-second (23,300
 * against 19,200).
 *
 * respond(conn, head) -> True | False | NotImplemented
 *   The request ``head`` on the HttpConnection ``conn``, as HttpConnection._respond runs it, when
 *   it is plain: its environ built by the C parser, no body, no Upgrade, keep-alive, no header
 *   list kept for trailers, not the connection's first request (its request-id cell exists), no
 *   TLS client certificate, no --root-path, no --request-timeout. Anything else is declined
 *   (NotImplemented) before anything happens, and _respond runs it. Every rule that is not the
 *   plain case's is Python's and called from here, so it has one definition: a trusted proxy's
 *   forwarded headers (proxy.apply_forwarded: behind HAProxy's ``option forwardfor`` every
 *   request has them, and declining them sent every proxied request the Python way), the
 *   request id (HttpHandler.new_request_id), the response (the Response type),
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
 * serve(conn, keepalive) -> True | False
 *   HttpConnection.serve's loop from a connection's second request on, with next_head's wait
 *   and RequestParser.feed's C head parser: while the one head queued is plain (respond's case,
 *   and neither shed by --max-inflight nor timed from X-Request-Start), it is taken, its phase
 *   entered, its in-flight count kept, and it is answered as respond answers it; between
 *   requests the connection is PARKED with its keep-alive deadline and waits and reads as the
 *   socket's recv_after_wait and tcp.park do (wait_and_recv). Whatever is not that (a pipelined batch, which serve corks; a
 *   head begun but not whole; a queued error; any head respond declines) is left where it is
 *   and handed back (True) before anything of it is done: serve and next_head run it as
 *   before. False: the connection ends (end of stream, not kept alive, upgraded). Writes still
 *   held at a request's end are HttpConnection._send_held's. After respond, this took the most
 *   Python left per request: 46 of 69 lines (serve, next_head, feed, phase.enter).
 *
 * configure(response_type, empty_input, file_wrapper, connection_type, head_type, cell_type,
 * status_keys, parser_type, histogram_type, stats_type, apply_forwarded) and configure_serve(socket_type, end,
 * take_turn, app_phase, parked_phase, recv_size, parser_globals, getcurrent, invalid_switch)
 * hand over http.py's objects once. tests/unit/test_cycle_c.py runs the same requests with and without both (read one by
 * one, two at a time and each in two reads) and compares what was sent, the metrics and the
 * logs. ABI is compared by http.py: a stale build is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

#define CYCLE_ABI 3

#include <structmember.h>

/* from configure() */
static PyObject *response_type, *empty_input, *file_wrapper, *connection_type, *head_type,
    *cell_type, *status_keys, *apply_forwarded;

/* Slot offsets: the connection's, the head's and the cell's fields this module touches. */
#define CONN_SLOTS(X)                                                                             \
    X(handler) X(sock) X(parser) X(response) X(continue_sent) X(served) X(request_cell)         \
    X(trusted_peer) X(extra_environ) X(address) X(events) X(watched)
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
    X(parser, upgrading) X(parser, head_open) X(parser, at_boundary) X(parser, base_environ)    \
    X(histogram, bounds) X(histogram, counts)          \
    X(histogram, sum) X(stats, http_requests) X(stats, requests_served)                         \
    X(stats, http_requests_in_flight)
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
    X(http_requests) X(durations) X(bounds) X(counts) X(sum) X(requests_served) X(events)        \
    X(watched) X(head_open) X(http_requests_in_flight) X(phase) X(deadline) X(out)              \
    X(max_inflight) X(recv_after_wait) X(feed) X(_send_held) X(at_boundary) X(base_environ)     \
    X(FAST_PARSE) X(callback) X(switch) X(start) X(stop) X(recv) X(rx) X(turn_started)          \
    X(timeout) X(_read_event) X(hub) X(_sock) X(forwarded_allow)
#define DECLARE(name) static PyObject *s_##name;
NAMES(DECLARE)
#undef DECLARE
static PyObject *k_input, *k_request_id_header, *k_request_id, *k_request_start, *v_not_upgraded,
    *v_one, *v_zero, *v_minus_one;

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
 * parser), as far as the connection and the head say (the handler's part: Fixed.open): 1 yes,
 * 0 decline, -1 an exception. */
static int plain(PyObject *conn, PyObject *head) {
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
    return PyObject_IsTrue(SLOT(head, head_keep_alive));
}

/* What an HttpHandler holds for its life, read once per call of respond() or serve() rather
 * than per request (a generic attribute lookup each, about 190 instructions). */
typedef struct {
    PyObject *app, *stats, *durations, *forwarded_allow; /* new references, or NULL */
    int open;       /* the handler's part of the plain case: no --root-path, --request-timeout */
    int access_log; /* --access-log: each response goes to responded */
} Fixed;

static void fixed_clear(Fixed *fixed) {
    Py_CLEAR(fixed->app);
    Py_CLEAR(fixed->stats);
    Py_CLEAR(fixed->durations);
    Py_CLEAR(fixed->forwarded_allow);
}

/* ``fixed`` read from ``handler``: 0, or -1 raised. Counters of other classes than those
 * count() was configured with leave it closed (every request declined). */
static int fixed_read(PyObject *handler, Fixed *fixed) {
    fixed_clear(fixed);
    fixed->app = PyObject_GetAttr(handler, s_app);
    fixed->stats = fixed->app != NULL ? PyObject_GetAttr(handler, s_stats) : NULL;
    fixed->durations = fixed->stats != NULL ? PyObject_GetAttr(handler, s_durations) : NULL;
    fixed->forwarded_allow =
        fixed->durations != NULL ? PyObject_GetAttr(handler, s_forwarded_allow) : NULL;
    int root_path = fixed->forwarded_allow != NULL ? attr_true(handler, s_root_path) : -1;
    int timed = root_path >= 0 ? attr_true(handler, s_request_timeout) : -1;
    fixed->access_log = timed >= 0 ? attr_true(handler, s_access_log) : -1;
    if (fixed->access_log < 0) {
        fixed_clear(fixed);
        return -1;
    }
    fixed->open = !root_path && !timed && (PyObject *)Py_TYPE(fixed->stats) == stats_type &&
                  (PyObject *)Py_TYPE(fixed->durations) == histogram_type;
    return 0;
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
static int account(PyObject *conn, PyObject *handler, const Fixed *fixed, PyObject *environ,
                   PyObject *writer, double duration) {
    PyObject *truncated = GET(writer, response, truncated);
    int cut = truncated != NULL ? PyObject_IsTrue(truncated) : -1;
    Py_XDECREF(truncated);
    if (cut < 0)
        return -1;
    if (!cut && !fixed->access_log)
        return count(fixed->stats, fixed->durations, writer, duration);
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
static PyObject *run_app(PyObject *conn, PyObject *app, PyObject *head, PyObject *writer,
                         PyObject *environ) {
    PyObject *start_response = PyObject_GetAttr(writer, s_start_response);
    if (start_response == NULL)
        return NULL;
    PyObject *call[] = {environ, start_response};
    PyObject *result = PyObject_Vectorcall(app, call, 2, NULL);
    Py_DECREF(start_response);
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

/* Whether respond() may take ``head`` on ``conn``, the handler's part in ``fixed`` (read here
 * when ``fixed`` has not been yet): 1 yes, 0 declined, -1 raised. */
static int takes(PyObject *conn, PyObject *head, Fixed *fixed) {
    if (!slots_set(conn, head))
        return 0;
    int fits = plain(conn, head);
    if (fits > 0 && fixed->app == NULL && fixed_read(SLOT(conn, conn_handler), fixed) < 0)
        return -1;
    return fits > 0 ? fixed->open : fits;
}

/* _respond for a plain request (takes() said so): Py_True, Py_False, or NULL raised. */
static PyObject *cycle(PyObject *conn, PyObject *head, const Fixed *fixed) {
    /* held here: the slots may be rewritten while the app runs */
    PyObject *handler = Py_NewRef(SLOT(conn, conn_handler));
    PyObject *environ = Py_NewRef(SLOT(head, head_environ));
    PyObject *cell = Py_NewRef(SLOT(conn, conn_request_cell));
    PyObject *request_id = NULL, *writer = NULL, *keep = NULL, *answer = NULL;
    double started = now();
    /* only a trusted proxy names the request, and only its forwarded headers count */
    int trusted = PyObject_IsTrue(SLOT(conn, conn_trusted_peer));
    int named = trusted > 0 ? PyObject_IsTrue(SLOT(head, head_request_id)) : trusted;
    int forwarded = named >= 0 && trusted > 0 ? PyObject_IsTrue(SLOT(head, head_forwarded)) : 0;
    if (named < 0 || forwarded < 0)
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
    if (forwarded) { /* a trusted proxy's forwarded headers: proxy.apply_forwarded, as _respond */
        PyObject *call[] = {environ, fixed->forwarded_allow};
        PyObject *applied = PyObject_Vectorcall(apply_forwarded, call, 2, NULL);
        if (applied == NULL)
            goto done;
        Py_DECREF(applied);
    }
    PyObject *served = PyNumber_Add(SLOT(conn, conn_served), v_one);
    if (served == NULL)
        goto done;
    set_slot(conn, conn_served, served);
    Py_DECREF(served);
    set_slot(cell, cell_id, request_id);

    keep = run_app(conn, fixed->app, head, writer, environ);
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
    if (account(conn, handler, fixed, environ, writer, duration) < 0)
        goto done;
    PyObject *alive = GET(writer, response, keep_alive);
    int keep_alive = alive != NULL ? PyObject_IsTrue(alive) : -1;
    Py_XDECREF(alive);
    int draining = keep_alive > 0 ? attr_true(handler, s_draining) : 0;
    if (keep_alive >= 0 && draining >= 0) /* the body was none: nothing left to discard */
        answer = Py_NewRef(keep_alive && !draining ? Py_True : Py_False);
done:
    Py_DECREF(handler);
    Py_DECREF(environ);
    Py_DECREF(cell);
    Py_XDECREF(request_id);
    Py_XDECREF(writer);
    Py_XDECREF(keep);
    return answer;
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
    Fixed fixed = {0};
    int taken = takes(args[0], args[1], &fixed);
    PyObject *answer = taken > 0   ? cycle(args[0], args[1], &fixed)
                       : taken < 0 ? NULL
                                   : Py_NewRef(Py_NotImplemented);
    fixed_clear(&fixed);
    return answer;
}

/* -- serve(): HttpConnection.serve's loop for plain keep-alive requests --------------------- */

/* from configure_serve() */
static PyObject *socket_type, *end_event, *take_turn, *app_phase, *parked_phase, *recv_size,
    *parser_globals, *getcurrent, *invalid_switch, *zero_seconds;
static PyMemberDef *m_socket_phase, *m_socket_deadline, *m_socket_out, *m_socket_rx,
    *m_socket_turn_started, *m_socket_timeout, *m_socket_read_event, *m_socket_hub,
    *m_socket_sock;

/* A connection-phase field of a socket: through its member definition on the configured socket
 * class (CountingSocket), by name on any other (TLS's, the tests' in-memory one). */
static int set_field(PyObject *sock, PyMemberDef *field, PyObject *name, PyObject *value) {
    if ((PyObject *)Py_TYPE(sock) == socket_type)
        return PyMember_SetOne((char *)sock, field, value);
    return PyObject_SetAttr(sock, name, value);
}

/* ConnectionPhase.enter */
static int enter(PyObject *watched, PyObject *phase, PyObject *deadline) {
    if (set_field(watched, m_socket_phase, s_phase, phase) < 0)
        return -1;
    return set_field(watched, m_socket_deadline, s_deadline, deadline);
}

/* next_head's skipping of what ends a request (END): 0, or -1. */
static int drop_ends(PyObject *events) {
    Py_ssize_t ends = 0;
    while (ends < PyList_GET_SIZE(events) && PyList_GET_ITEM(events, ends) == end_event)
        ends++;
    return ends ? PyList_SetSlice(events, 0, ends, NULL) : 0;
}

/* stats.http_requests_in_flight += change: 0, or -1. */
static int in_flight(PyObject *stats, PyObject *change) {
    PyObject *current = GET(stats, stats, http_requests_in_flight);
    PyObject *value = current != NULL ? PyNumber_Add(current, change) : NULL;
    Py_XDECREF(current);
    int failed = value == NULL || PUT(stats, stats, http_requests_in_flight, value) < 0;
    Py_XDECREF(value);
    return failed ? -1 : 0;
}

/* What serve checks of a request before it runs it, beyond respond()'s plain case: neither
 * shed for --max-inflight nor timed from X-Request-Start (serve does both in Python). 1 admitted,
 * 0 declined, -1 raised. */
static int admits(PyObject *head, PyObject *stats, PyObject *max_inflight) {
    int limited = PyObject_IsTrue(max_inflight);
    if (limited > 0) {
        PyObject *current = GET(stats, stats, http_requests_in_flight);
        limited = current != NULL ? PyObject_RichCompareBool(current, max_inflight, Py_GE) : -1;
        Py_XDECREF(current);
    }
    if (limited != 0)
        return limited < 0 ? -1 : 0;
    PyObject *start = PyDict_GetItemWithError(SLOT(head, head_environ), k_request_start);
    return start != NULL ? 0 : PyErr_Occurred() ? -1 : 1;
}

/* The head at the front of the queue, taken and answered as serve does, its in-flight count and
 * its end included (_send_held for writes still held). 1: the connection goes on, 0: it ends,
 * -1 raised. */
static int serve_one(PyObject *conn, PyObject *head, const Fixed *fixed) {
    PyObject *stats = fixed->stats;
    if (PyList_SetSlice(SLOT(conn, conn_events), 0, 1, NULL) < 0 ||
        enter(SLOT(conn, conn_watched), app_phase, zero_seconds) < 0 || in_flight(stats, v_one) < 0)
        return -1;
    PyObject *answer = cycle(conn, head, fixed);
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* serve's finally */
    int failed = in_flight(stats, v_minus_one) < 0;
    set_slot(conn, conn_response, Py_None);
    /* a plain socket's held writes (serve's ``corks``: TLS holds none, and has no ``out``) */
    PyObject *sock = SLOT(conn, conn_sock);
    PyObject *out = failed ? NULL
                    : (PyObject *)Py_TYPE(sock) == socket_type
                        ? PyMember_GetOne((const char *)sock, m_socket_out)
                        : Py_NewRef(Py_None);
    if (out == NULL)
        failed = 1;
    else if (out != Py_None) {
        PyObject *call[] = {conn, head, answer == Py_True ? Py_True : Py_False};
        PyObject *sent = PyObject_VectorcallMethod(s__send_held, call, 3, NULL);
        failed = sent == NULL;
        Py_XDECREF(sent);
    }
    Py_XDECREF(out);
    if (failed) { /* raised in the finally: that exception goes on, as in Python */
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        Py_XDECREF(answer);
        return -1;
    }
    PyErr_Restore(type, value, traceback);
    if (answer == NULL)
        return -1;
    Py_DECREF(answer);
    return answer == Py_True;
}

/* RequestParser.feed: its first step, the C head parser taking whole plain requests at a
 * request boundary, done here; what it leaves (a head it declines, a body, a partial head) is
 * fed to RequestParser.feed, as the rest of the read would be there. 0, or -1. */
static int feed(PyObject *parser, PyObject *events, PyObject *data, Py_ssize_t size) {
    /* http_parser.FAST_PARSE: read at each call, as feed does (the tests' switch) */
    PyObject *parse = PyDict_GetItemWithError(parser_globals, s_FAST_PARSE);
    PyObject *boundary = parse != NULL && parse != Py_None ? GET(parser, parser, at_boundary) : NULL;
    Py_ssize_t taken = 0;
    if (boundary == NULL && PyErr_Occurred())
        return -1;
    if (boundary == Py_True) {
        PyObject *base = GET(parser, parser, base_environ);
        PyObject *call[] = {data, base, events};
        PyObject *offset = base != NULL ? PyObject_Vectorcall(parse, call, 3, NULL) : NULL;
        Py_XDECREF(base);
        taken = offset != NULL ? PyLong_AsSsize_t(offset) : -1;
        Py_XDECREF(offset);
        if (taken < 0 || taken > size) {
            Py_DECREF(boundary);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "FAST_PARSE took more than it was given");
            return -1;
        }
    }
    Py_XDECREF(boundary);
    if (taken == size)
        return 0;
    PyObject *rest = taken ? PySequence_GetSlice(data, taken, size) : Py_NewRef(data);
    PyObject *fed = rest != NULL ? PyObject_CallMethodOneArg(parser, s_feed, rest) : NULL;
    Py_XDECREF(rest);
    Py_XDECREF(fed);
    return fed != NULL ? 0 : -1;
}

/* CountingSocket.recv_after_wait with tcp.park, on the configured socket class without a timeout
 * (every connection of a worker: the sweeper keeps its deadlines, phase.py): the socket's read
 * watcher started with this greenlet's switch, the hub switched to, the watcher stopped, then one
 * recv. Any other socket, and a watcher park refuses (closed, or another greenlet's), go through
 * the method itself, which answers as before. */
static PyObject *wait_and_recv(PyObject *sock) {
    if ((PyObject *)Py_TYPE(sock) != socket_type)
        return PyObject_CallMethodOneArg(sock, s_recv_after_wait, recv_size);
    PyObject *timeout = PyMember_GetOne((const char *)sock, m_socket_timeout);
    PyObject *watcher = timeout == Py_None ? PyMember_GetOne((const char *)sock, m_socket_read_event)
                                           : NULL;
    PyObject *callback = watcher != NULL && watcher != Py_None
                             ? PyObject_GetAttr(watcher, s_callback)
                             : NULL;
    Py_XDECREF(timeout);
    if (callback != Py_None) {
        Py_XDECREF(watcher);
        Py_XDECREF(callback);
        if (PyErr_Occurred())
            return NULL;
        return PyObject_CallMethodOneArg(sock, s_recv_after_wait, recv_size);
    }
    Py_DECREF(callback);
    PyObject *hub = PyMember_GetOne((const char *)sock, m_socket_hub);
    PyObject *current = hub != NULL ? PyObject_CallNoArgs(getcurrent) : NULL;
    PyObject *resume = current != NULL ? PyObject_GetAttr(current, s_switch) : NULL;
    PyObject *woken = NULL;
    if (resume != NULL) {
        PyObject *call[] = {watcher, resume, watcher};
        PyObject *started = PyObject_VectorcallMethod(s_start, call, 3, NULL);
        if (started != NULL) {
            Py_DECREF(started);
            woken = PyObject_CallMethodNoArgs(hub, s_switch);
            PyObject *type, *value, *traceback; /* park's finally */
            PyErr_Fetch(&type, &value, &traceback);
            PyObject *stopped = PyObject_CallMethodNoArgs(watcher, s_stop);
            if (stopped == NULL) {
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(traceback);
                Py_CLEAR(woken);
            } else {
                Py_DECREF(stopped);
                PyErr_Restore(type, value, traceback);
            }
            if (woken != NULL && woken != watcher) {
                PyErr_Format(invalid_switch, "Invalid switch into %S: got %R", current, woken);
                Py_CLEAR(woken);
            }
        }
    }
    Py_XDECREF(hub);
    Py_XDECREF(current);
    Py_XDECREF(resume);
    Py_DECREF(watcher);
    if (woken == NULL)
        return NULL;
    Py_DECREF(woken);
    /* recv_after_wait: waited on the hub, a new fairness slice (turns.py); then the read */
    if (PyMember_SetOne((char *)sock, m_socket_turn_started, zero_seconds) < 0)
        return NULL;
    PyObject *raw = PyMember_GetOne((const char *)sock, m_socket_sock);
    PyObject *data = raw != NULL ? PyObject_CallMethodOneArg(raw, s_recv, recv_size) : NULL;
    Py_XDECREF(raw);
    if (data == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_BlockingIOError))
            return NULL;
        PyErr_Clear(); /* woken but nothing to read after all: wait again */
        return PyObject_CallMethodOneArg(sock, s_recv, recv_size);
    }
    PyObject *rx = PyMember_GetOne((const char *)sock, m_socket_rx);
    PyObject *size = rx != NULL ? PyLong_FromSsize_t(PyObject_Length(data)) : NULL;
    PyObject *total = size != NULL && !PyErr_Occurred() ? PyNumber_Add(rx, size) : NULL;
    int failed = total == NULL || PyMember_SetOne((char *)sock, m_socket_rx, total) < 0;
    Py_XDECREF(rx);
    Py_XDECREF(size);
    Py_XDECREF(total);
    if (failed)
        Py_CLEAR(data);
    return data;
}

/* serve's loop and next_head's wait, for as long as each request is plain: True when what
 * comes next is for serve (the head at the front is not plain, a head is partly read, an error
 * is queued), left where it is; False when the connection ends (end of stream, not kept alive,
 * upgraded). */
static PyObject *serve_loop(PyObject *conn, double keepalive, Fixed *fixed,
                            PyObject **max_inflight) {
    PyObject *events = SLOT(conn, conn_events), *parser = SLOT(conn, conn_parser);
    PyObject *watched = SLOT(conn, conn_watched), *sock = SLOT(conn, conn_sock);
    double deadline = -1.0; /* a next_head's keep-alive deadline, from its first wait */
    if (!PyList_CheckExact(events))
        Py_RETURN_TRUE;
    for (;;) {
        if (drop_ends(events) < 0)
            return NULL;
        if (PyList_GET_SIZE(events) > 0) {
            /* one head alone: a pipelined batch is corked by serve */
            PyObject *head = PyList_GET_ITEM(events, 0);
            if (PyList_GET_SIZE(events) != 1 || (PyObject *)Py_TYPE(head) != head_type)
                Py_RETURN_TRUE;
            int taken = takes(conn, head, fixed);
            if (taken > 0 && *max_inflight == NULL &&
                (*max_inflight = PyObject_GetAttr(SLOT(conn, conn_handler), s_max_inflight)) == NULL)
                return NULL;
            if (taken > 0)
                taken = admits(head, fixed->stats, *max_inflight);
            if (taken > 0) {
                Py_INCREF(head); /* the queue lets go of it */
                taken = serve_one(conn, head, fixed);
                Py_DECREF(head);
                taken = taken > 0 ? 1 : taken < 0 ? -1 : 2;
            }
            if (taken <= 0)
                return taken < 0 ? NULL : Py_NewRef(Py_True);
            if (taken == 2)
                Py_RETURN_FALSE;
            /* serve's end of a kept request: fairness when more is queued (turns.py), and the
             * loop's own condition */
            if (drop_ends(events) < 0)
                return NULL;
            if (PyList_GET_SIZE(events) > 0) {
                PyObject *turned = PyObject_CallOneArg(take_turn, watched);
                if (turned == NULL)
                    return NULL;
                Py_DECREF(turned);
            }
            PyObject *upgrading = GET(parser, parser, upgrading);
            int upgraded = upgrading != NULL ? PyObject_IsTrue(upgrading) : -1;
            Py_XDECREF(upgrading);
            if (upgraded != 0)
                return upgraded < 0 ? NULL : Py_NewRef(Py_False);
            deadline = -1.0;
            continue;
        }
        PyObject *open = GET(parser, parser, head_open);
        int begun = open != NULL ? PyObject_IsTrue(open) : -1;
        Py_XDECREF(open);
        if (begun != 0) /* a head begun: its --header-timeout is next_head's */
            return begun < 0 ? NULL : Py_NewRef(Py_True);
        if (deadline < 0.0)
            deadline = keepalive ? now() + keepalive : 0.0;
        PyObject *due = PyFloat_FromDouble(deadline);
        if (due == NULL)
            return NULL;
        int failed = enter(watched, parked_phase, due);
        Py_DECREF(due);
        if (failed < 0)
            return NULL;
        PyObject *data = wait_and_recv(sock);
        if (data == NULL)
            return NULL;
        Py_ssize_t size = PyObject_Length(data);
        int fed = size > 0 ? feed(parser, events, data, size) : -1;
        Py_DECREF(data);
        if (size == 0)
            Py_RETURN_FALSE;
        if (fed < 0)
            return NULL;
    }
}

static PyObject *serve(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyFloat_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "serve(conn, keepalive: float)");
        return NULL;
    }
    if (response_type == NULL || socket_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenserve._cycle is not configured");
        return NULL;
    }
    PyObject *conn = args[0];
    if ((PyObject *)Py_TYPE(conn) != connection_type || SLOT(conn, conn_events) == NULL ||
        SLOT(conn, conn_watched) == NULL || SLOT(conn, conn_sock) == NULL ||
        SLOT(conn, conn_parser) == NULL || SLOT(conn, conn_handler) == NULL ||
        (PyObject *)Py_TYPE(SLOT(conn, conn_parser)) != parser_type)
        Py_RETURN_TRUE;
    /* held: a slot rewritten while an app runs must not free what the loop uses */
    PyObject *held[] = {SLOT(conn, conn_events), SLOT(conn, conn_parser),
                        SLOT(conn, conn_watched), SLOT(conn, conn_sock)};
    for (size_t i = 0; i < sizeof(held) / sizeof(held[0]); i++)
        Py_INCREF(held[i]);
    /* the handler's settings, read at the first request taken: a pipelined batch handed back
     * at once costs none */
    Fixed fixed = {0};
    PyObject *max_inflight = NULL;
    PyObject *answer = serve_loop(conn, PyFloat_AS_DOUBLE(args[1]), &fixed, &max_inflight);
    for (size_t i = 0; i < sizeof(held) / sizeof(held[0]); i++)
        Py_DECREF(held[i]);
    fixed_clear(&fixed);
    Py_XDECREF(max_inflight);
    return answer;
}

/* What member() insists on: a field read through its definition, one also written, or an object
 * slot (whose offset SLOT may use). */
enum need { READ, WRITE, OBJECT_SLOT };

/* The member definition of ``type.name``: a member descriptor, as __slots__ and PyMemberDef
 * make them (gevent's socket fields included), that meets ``need``. */
static PyMemberDef *member(PyObject *type, PyObject *name, enum need need) {
    PyObject *descriptor = PyObject_GetAttr(type, name);
    if (descriptor == NULL)
        return NULL;
    PyMemberDef *found = NULL;
    if (Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
        found = ((PyMemberDescrObject *)descriptor)->d_member;
        if ((need != READ && (found->flags & READONLY)) ||
            (need == OBJECT_SLOT && found->type != T_OBJECT_EX))
            found = NULL;
    }
    Py_DECREF(descriptor);
    static const char *const wanted[] = {"member", "writable member", "writable object slot"};
    if (found == NULL)
        PyErr_Format(PyExc_TypeError, "%R.%U is not a %s", type, name, wanted[need]);
    return found;
}

static int slot_offset(PyObject *type, PyObject *name, Py_ssize_t *offset) {
    PyMemberDef *found = member(type, name, OBJECT_SLOT);
    if (found != NULL)
        *offset = found->offset;
    return found != NULL ? 0 : -1;
}

#define CONFIGURED 11
static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    int types = nargs == CONFIGURED && PyDict_Check(args[6]);
    for (Py_ssize_t i = 0; types && i < CONFIGURED; i++)
        types = i == 1 || i == 6 || (i == 10 ? PyCallable_Check(args[i]) : PyType_Check(args[i]));
    if (!types) {
        PyErr_SetString(PyExc_TypeError, "configure(response_type, empty_input, file_wrapper, "
                                         "connection_type, head_type, cell_type, status_keys, "
                                         "parser_type, histogram_type, stats_type, "
                                         "apply_forwarded)");
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
    if ((m_##owner##_##name = member(owner, s_##name, WRITE)) == NULL)                           \
        return NULL;
    MEMBERS(TAKE)
#undef TAKE
    PyObject **const fields[] = {&response_type, &empty_input, &file_wrapper, &connection_type,
                                 &head_type,     &cell_type,   &status_keys,  &parser_type,
                                 &histogram_type, &stats_type, &apply_forwarded};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        Py_XSETREF(*fields[i], Py_NewRef(args[i]));
    Py_RETURN_NONE;
}

#define SERVE_CONFIGURED 9
static PyObject *configure_serve(PyObject *Py_UNUSED(module), PyObject *const *args,
                                 Py_ssize_t nargs) {
    if (nargs != SERVE_CONFIGURED || !PyType_Check(args[0]) || !PyCallable_Check(args[2]) ||
        !PyLong_Check(args[3]) || !PyLong_Check(args[4]) || !PyLong_Check(args[5]) ||
        !PyDict_Check(args[6]) || !PyCallable_Check(args[7]) ||
        !PyExceptionClass_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure_serve(socket_type, end, take_turn, app_phase, parked_phase, "
                        "recv_size, parser_globals, getcurrent, invalid_switch)");
        return NULL;
    }
    PyObject *type = args[0];
    if ((m_socket_phase = member(type, s_phase, WRITE)) == NULL ||
        (m_socket_deadline = member(type, s_deadline, WRITE)) == NULL ||
        (m_socket_out = member(type, s_out, READ)) == NULL ||
        (m_socket_rx = member(type, s_rx, WRITE)) == NULL ||
        (m_socket_turn_started = member(type, s_turn_started, WRITE)) == NULL ||
        (m_socket_timeout = member(type, s_timeout, READ)) == NULL ||
        (m_socket_read_event = member(type, s__read_event, READ)) == NULL ||
        (m_socket_hub = member(type, s_hub, READ)) == NULL ||
        (m_socket_sock = member(type, s__sock, READ)) == NULL)
        return NULL;
    PyObject **const fields[] = {&socket_type,    &end_event,  &take_turn,
                                 &app_phase,      &parked_phase, &recv_size,
                                 &parser_globals, &getcurrent, &invalid_switch};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        Py_XSETREF(*fields[i], Py_NewRef(args[i]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"respond", (PyCFunction)(void (*)(void))respond, METH_FASTCALL,
     "respond(conn, head): a plain request's _respond in C; NotImplemented declines it."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(response_type, empty_input, file_wrapper, connection_type, head_type, "
     "cell_type, status_keys, parser_type, histogram_type, stats_type, apply_forwarded), once, "
     "from http.py."},
    {"serve", (PyCFunction)(void (*)(void))serve, METH_FASTCALL,
     "serve(conn, keepalive): HttpConnection.serve's loop while each request is plain; "
     "True: serve goes on in Python, False: the connection ends."},
    {"configure_serve", (PyCFunction)(void (*)(void))configure_serve, METH_FASTCALL,
     "configure_serve(socket_type, end, take_turn, app_phase, parked_phase, recv_size, "
     "parser_globals, getcurrent, invalid_switch), once, from http.py."},
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
        (k_request_start = PyUnicode_InternFromString("HTTP_X_REQUEST_START")) == NULL ||
        (v_not_upgraded = Py_BuildValue("(ii)", 0, 0)) == NULL ||
        (v_one = PyLong_FromLong(1)) == NULL || (v_minus_one = PyLong_FromLong(-1)) == NULL ||
        (zero_seconds = PyFloat_FromDouble(0.0)) == NULL || (v_zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddIntConstant(module, "ABI", CYCLE_ABI) < 0)
        Py_CLEAR(module);
    return module;
}
