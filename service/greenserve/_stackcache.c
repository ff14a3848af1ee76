/*
 * greenserve._stackcache: freed chunks of CPython's frame data stack kept for the next greenlet.
 *
 * Since 3.11 each greenlet that runs Python gets its own chunk of the interpreter's frame data
 * stack: 16 KiB (DATA_STACK_CHUNK_SIZE in Python/pystate.c), taken through the object arena
 * allocator (_PyObject_VirtualAlloc), which maps it with mmap; the chunk is unmapped when the
 * greenlet ends. A greenlet per HTTP/2 stream, or per connection beyond the runners kept
 * (protocols/runners.py), so paid mmap, its page faults and munmap for every request: perf put
 * them at about a tenth of a worker's samples under h2load.
 *
 * install() puts an arena allocator in front of the interpreter's: a freed chunk of exactly
 * CHUNK bytes is kept (up to KEEP of them) and handed out again for the next one; every other
 * size, and every chunk beyond KEEP, goes to the interpreter's own allocator as before. A kept
 * chunk was allocated by that allocator, so giving it back to it later is right. CPython sets
 * a chunk's header fields when it takes one (allocate_chunk), and assumes nothing about the
 * rest: a reused chunk need not be zeroed.
 *
 * The arena allocator is called with the GIL held (obmalloc and the frame stack both need it),
 * so the list needs no lock. Free-threaded CPython is refused at start by greenserve.
 *
 * ABI is compared by greenserve.worker.stackcache: a build older than its source is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define STACKCACHE_ABI 1
#define CHUNK 16384 /* DATA_STACK_CHUNK_SIZE, CPython 3.11 to 3.13 */
#define KEEP 128    /* at most 2 MiB of address space; resident only what greenlets touched */

static PyObjectArenaAllocator original;
static void *kept[KEEP];
static int count;
static int installed;
static unsigned long long reused;

static void *
cached_alloc(void *ctx, size_t size)
{
    if (size == CHUNK && count > 0) {
        reused++;
        return kept[--count];
    }
    return original.alloc(original.ctx, size);
}

static void
cached_free(void *ctx, void *ptr, size_t size)
{
    if (size == CHUNK && ptr != NULL && count < KEEP) {
        kept[count++] = ptr;
        return;
    }
    original.free(original.ctx, ptr, size);
}

static PyObject *
install(PyObject *module, PyObject *unused)
{
    if (!installed) {
        PyObjectArenaAllocator mine;
        PyObject_GetArenaAllocator(&original);
        mine.ctx = NULL;
        mine.alloc = cached_alloc;
        mine.free = cached_free;
        PyObject_SetArenaAllocator(&mine);
        installed = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *
stats(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("{s:O,s:i,s:K}", "installed", installed ? Py_True : Py_False, "kept",
                         count, "reused", reused);
}

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS,
     "Keep freed 16 KiB frame stack chunks for the next greenlet (once per process)."},
    {"stats", stats, METH_NOARGS,
     "{'installed': bool, 'kept': chunks kept now, 'reused': chunks handed out again}"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef stackcache_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "greenserve._stackcache",
    .m_doc = "Freed chunks of the frame data stack kept for the next greenlet.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__stackcache(void)
{
    PyObject *m = PyModule_Create(&stackcache_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI", STACKCACHE_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
