/*
 * greenserve._appvalue: the value behind an app's prometheus_client metric, in a worker.
 *
 * prometheus_client keeps each Counter, Gauge, Histogram bucket and Summary part in a
 * values.MutexValue: a float guarded by a threading.Lock. Taking and releasing that lock is
 * about half of what Counter.inc() costs (0.33 us against 0.16 us without it, measured with
 * timeit). A worker replaces values.ValueClass with this type before it imports the app
 * (greenserve.metrics.appvalue), so the app's metrics are made with it, unchanged.
 *
 * Why no lock is needed: each method below runs from start to end holding the GIL and calls
 * nothing that could release it between reading and writing the value (an amount is turned
 * into a double first). A greenlet cannot switch inside a C call either. So an increment from a
 * greenlet and one from a real thread (the asyncio islands) can never interleave, which is all
 * the lock gave. Free-threaded CPython, where this would not hold, is refused at start.
 *
 * The interface is MutexValue's: the constructor's arguments are accepted and ignored, inc,
 * set (its timestamp ignored, as MutexValue does), get, set_exemplar, get_exemplar, and the
 * class attribute _multiprocess = False.
 *
 * ABI is compared by greenserve.metrics.appvalue: a build older than its source is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define APPVALUE_ABI 1

typedef struct {
    PyObject_HEAD
    double value;
    PyObject *exemplar; /* an Exemplar namedtuple, or NULL */
} Value;

static PyObject *
value_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Value *self = (Value *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->value = 0.0;
        self->exemplar = NULL;
    }
    return (PyObject *)self;
}

static void
value_dealloc(Value *self)
{
    PyTypeObject *type = Py_TYPE(self);
    Py_CLEAR(self->exemplar);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* a heap type: each instance holds a reference to it */
}

static PyObject *
value_inc(Value *self, PyObject *amount)
{
    double delta = PyFloat_AsDouble(amount);
    if (delta == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    self->value += delta;
    Py_RETURN_NONE;
}

static PyObject *
value_set(Value *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* set(value, timestamp=None): the timestamp is ignored, as MutexValue ignores it */
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "set() needs a value");
        return NULL;
    }
    double value = PyFloat_AsDouble(args[0]);
    if (value == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    self->value = value;
    Py_RETURN_NONE;
}

static PyObject *
value_get(Value *self, PyObject *unused)
{
    return PyFloat_FromDouble(self->value);
}

static PyObject *
value_set_exemplar(Value *self, PyObject *exemplar)
{
    Py_INCREF(exemplar);
    Py_XSETREF(self->exemplar, exemplar);
    Py_RETURN_NONE;
}

static PyObject *
value_get_exemplar(Value *self, PyObject *unused)
{
    if (self->exemplar == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->exemplar);
    return self->exemplar;
}

static PyMethodDef value_methods[] = {
    {"inc", (PyCFunction)value_inc, METH_O, "Add an amount (negative for a Gauge's dec)."},
    {"set", (PyCFunction)(void (*)(void))value_set, METH_FASTCALL | METH_KEYWORDS,
     "Set the value; a timestamp is ignored."},
    {"get", (PyCFunction)value_get, METH_NOARGS, "The value."},
    {"set_exemplar", (PyCFunction)value_set_exemplar, METH_O, "Keep the last exemplar."},
    {"get_exemplar", (PyCFunction)value_get_exemplar, METH_NOARGS, "The last exemplar, or None."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot value_slots[] = {
    {Py_tp_new, value_new},
    {Py_tp_dealloc, value_dealloc},
    {Py_tp_methods, value_methods},
    {Py_tp_doc, "A metric's float; atomic under the GIL (see _appvalue.c)."},
    {0, NULL},
};

static PyType_Spec value_spec = {
    .name = "greenserve._appvalue.Value",
    .basicsize = sizeof(Value),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = value_slots,
};

static struct PyModuleDef appvalue_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "greenserve._appvalue",
    .m_doc = "The value behind an app's prometheus_client metric, without a lock.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__appvalue(void)
{
    PyObject *m = PyModule_Create(&appvalue_module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *type = PyType_FromSpec(&value_spec);
    if (type == NULL || PyObject_SetAttrString(type, "_multiprocess", Py_False) < 0 ||
        PyModule_AddObject(m, "Value", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI", APPVALUE_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
