/*
 * greenserve._tracegate: --otel's decision per request, and the unsampled root's short path.
 *
 * Why: at --otel-sample-ratio 0.01, 99 requests in 100 only need to learn that they are not
 * sampled and to run the app with the runtime context left at its marker (tracing.py,
 * _LazyRoots). The Python wrapper that does this (Tracing._unsampled_in_python) is a frame and
 * about 35 bytecodes: 2,075 instructions per hello request under callgrind, 3.7% of the whole
 * HTTP layer's, and most of what tracing at 1% cost. This is the same decision in one C call.
 *
 * Gate(app, sampled, rand, ratio, var, pending, traced, repend) is called as the WSGI app:
 *   - a request with HTTP_TRACEPARENT, or one for which rand() < ratio, goes to sampled(...)
 *     (the SDK decides, a recording span: tracing.py);
 *   - otherwise the ContextVar ``var`` is set to ``pending`` if it holds anything else, the
 *     app runs, and ``var`` is put back to ``pending`` if the app made its root real (also when
 *     it raised). A list body is returned as it is; any other body is returned as
 *     traced(body, None, var, repend), which keeps the context while the server iterates it
 *     and puts the marker back at close.
 *
 * It holds the GIL throughout and keeps no state between calls, so greenlets and threads
 * calling it at once see what the Python wrapper gives them.
 *
 * ABI is compared by greenserve.worker.tracing: a build older than its source is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define TRACEGATE_ABI 1

/* The gate's objects, listed once for the struct, traverse and clear. */
#define GATE_OBJECTS(X) X(app) X(sampled) X(rand) X(var) X(pending) X(traced) X(repend)

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
#define FIELD(name) PyObject *name;
    GATE_OBJECTS(FIELD)
#undef FIELD
    double ratio;
} Gate;

static PyObject *key_traceparent; /* "HTTP_TRACEPARENT", interned */

/* ``var`` back to ``pending`` unless it holds it: a set makes a new context mapping.
 *
 * Not inlined, like the two functions after it: gate_call's own frame stays on the greenlet's
 * stack while the app runs and may switch, and greenlet copies that stack to the heap. A local
 * whose address is taken gets AddressSanitizer redzones, and that copy would read them (a false
 * report in the sanitized test build); so every such local lives in a frame that has returned
 * before the app is called. */
static Py_NO_INLINE int
repend(Gate *gate)
{
    PyObject *current;
    if (PyContextVar_Get(gate->var, NULL, &current) < 0) {
        return -1;
    }
    int same = current == gate->pending;
    Py_XDECREF(current);
    if (same) {
        return 0;
    }
    PyObject *token = PyContextVar_Set(gate->var, gate->pending);
    if (token == NULL) {
        return -1;
    }
    Py_DECREF(token);
    return 0;
}

/* The app raised: the marker back for the next request, the app's error kept. */
static Py_NO_INLINE PyObject *
app_raised(Gate *gate)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (repend(gate) < 0) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return NULL;
    }
    PyErr_Restore(type, value, traceback);
    return NULL;
}

/* The app's body: a list as it is, anything else kept under the context until its close. */
static Py_NO_INLINE PyObject *
unsampled_body(Gate *gate, PyObject *body)
{
    if (PyList_Check(body)) { /* produced already: no context needed to send it */
        if (repend(gate) < 0) {
            Py_DECREF(body);
            return NULL;
        }
        return body;
    }
    PyObject *wrap[4] = {body, Py_None, gate->var, gate->repend};
    PyObject *traced = PyObject_Vectorcall(gate->traced, wrap, 4, NULL);
    Py_DECREF(body);
    return traced;
}

/* 1: sampled's path; 0: the short one; -1: an error is set. */
static int
sampling(Gate *gate, PyObject *environ)
{
    int parent = PyDict_CheckExact(environ) ? PyDict_Contains(environ, key_traceparent)
                                            : PySequence_Contains(environ, key_traceparent);
    if (parent != 0) {
        return parent;
    }
    PyObject *drawn = PyObject_CallNoArgs(gate->rand);
    if (drawn == NULL) {
        return -1;
    }
    double value = PyFloat_AsDouble(drawn);
    Py_DECREF(drawn);
    if (value == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    return value < gate->ratio;
}

static PyObject *
gate_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Gate *gate = (Gate *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a WSGI app takes (environ, start_response)");
        return NULL;
    }
    int sampled = sampling(gate, args[0]);
    if (sampled < 0) {
        return NULL;
    }
    if (sampled) {
        return PyObject_Vectorcall(gate->sampled, args, 2, NULL);
    }
    if (repend(gate) < 0) {
        return NULL;
    }
    PyObject *body = PyObject_Vectorcall(gate->app, args, 2, NULL);
    return body == NULL ? app_raised(gate) : unsampled_body(gate, body);
}

static PyObject *
gate_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"app", "sampled", "rand", "ratio", "var", "pending", "traced",
                            "repend", NULL};
    PyObject *app, *sampled, *rand, *var, *pending, *traced, *repend_;
    double ratio;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOdOOOO:Gate", names, &app, &sampled,
                                     &rand, &ratio, &var, &pending, &traced, &repend_)) {
        return NULL;
    }
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "Gate: var must be a contextvars.ContextVar");
        return NULL;
    }
    Gate *gate = (Gate *)type->tp_alloc(type, 0);
    if (gate == NULL) {
        return NULL;
    }
    gate->vectorcall = gate_call;
    gate->ratio = ratio;
    gate->app = Py_NewRef(app);
    gate->sampled = Py_NewRef(sampled);
    gate->rand = Py_NewRef(rand);
    gate->var = Py_NewRef(var);
    gate->pending = Py_NewRef(pending);
    gate->traced = Py_NewRef(traced);
    gate->repend = Py_NewRef(repend_);
    return (PyObject *)gate;
}

static int
gate_traverse(Gate *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
#define VISIT(name) Py_VISIT(self->name);
    GATE_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int
gate_clear(Gate *self)
{
#define CLEAR(name) Py_CLEAR(self->name);
    GATE_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void
gate_dealloc(Gate *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    gate_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* a heap type: each instance holds a reference to it */
}

static PyMemberDef gate_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Gate, vectorcall), READONLY, NULL},
    {"app", T_OBJECT, offsetof(Gate, app), READONLY, "The WSGI app it runs."},
    {"ratio", T_DOUBLE, offsetof(Gate, ratio), READONLY, "The share of roots sampled."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot gate_slots[] = {
    {Py_tp_new, gate_new},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, gate_traverse},
    {Py_tp_clear, gate_clear},
    {Py_tp_dealloc, gate_dealloc},
    {Py_tp_members, gate_members},
    {Py_tp_doc, "A WSGI app: each request sampled or on the unsampled short path (see "
                "_tracegate.c)."},
    {0, NULL},
};

static PyType_Spec gate_spec = {
    .name = "greenserve._tracegate.Gate",
    .basicsize = sizeof(Gate),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = gate_slots,
};

static struct PyModuleDef tracegate_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "greenserve._tracegate",
    .m_doc = "--otel's per-request sampling decision and unsampled short path, in C.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__tracegate(void)
{
    key_traceparent = PyUnicode_InternFromString("HTTP_TRACEPARENT");
    if (key_traceparent == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&tracegate_module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *type = PyType_FromSpec(&gate_spec);
    if (type == NULL || PyModule_AddObject(m, "Gate", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI", TRACEGATE_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
