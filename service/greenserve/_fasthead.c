/* greenserve._fasthead: the WSGI environ of a plain HTTP/1.1 request head, built in C.
 *
 * Why: per request, llhttp's callbacks into Python (one per header), the checks on them and the
 * environ built from them were a third of the HTTP layer's Python time. Most requests
 * are plain: GET with a Host and a few headers, whole in one read. This builds their environ in
 * one call.
 *
 * It is a strict subset of what the llhttp path accepts. Anything else returns None and goes to
 * llhttp unchanged: bodies and framing headers, Expect, Upgrade, bytes past the head (pipelined
 * requests), other versions, unknown methods, obs-text, control characters, fragments, a missing
 * or repeated Host or one that is not a plain host[:port], and every head that could reach a
 * limit. So a head taken here is one llhttp would take too, and the environ must be the one the
 * Python path builds: tests/unit/test_fasthead.py checks both on the conformance corpus and on
 * generated heads.
 *
 * Head: http_parser.Head's fields as a C type, which that module uses as its Head when this
 *   extension is loaded (one class for both parsers, so ``event.__class__ is Head`` holds).
 *   Head() has the Python class's defaults; ``headers`` is made on first use (a plain head
 *   never needs its list).
 *
 * parse(data: bytes, base: dict) -> Head | None, with
 *   environ     a copy of ``base`` with REQUEST_METHOD, PATH_INFO (percent-decoded, latin-1),
 *               QUERY_STRING, RAW_URI, SERVER_PROTOCOL and the header fields (PEP 3333 keys,
 *               repeated fields joined with ",", names with "_" dropped)
 *   method      bytes, url bytes, request_id str ("" unless a valid X-Request-ID),
 *   keep_alive  False for "Connection: close"
 *   forwarded   False when none of Forwarded, X-Forwarded-For, -Proto, -Host came: a trusted
 *               peer's request then skips proxy.apply_forwarded (1,500 instructions)
 *   Built here rather than from a tuple in Python: Head() and its 14 defaults, a Python
 *   function and the unpacking were about 1,300 instructions per request (callgrind).
 *
 * parse_many(data: bytes, base: dict, events: list) -> int
 *   Each plain head at the start of ``data``, cut at its blank line and parsed as parse() does,
 *   appended to ``events``; the offset where the rest begins (0: none taken). One read of a
 *   pipelining client holds many heads; a head this declines, a body or a partial head is left
 *   to llhttp from that boundary (a head with a body is always declined, so each blank line
 *   cut at ends a whole message). After a head with "Connection: close" the rest is dropped:
 *   the offset is len(data).
 *
 * The response's first write, which was here too, is in _response.c with the rest of the
 * response.
 *
 * ABI is compared by greenserve.worker.protocols.http_parser: a build older than its source is
 * ignored, not trusted. Bump it with any change to what it accepts or returns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <structmember.h>

#define FASTHEAD_ABI 6
#define MAX_HEAD 8190   /* below every limit of the llhttp path: 414 and 431 cannot apply */
#define MAX_FIELDS 100  /* http_parser.MAX_HEADERS */
#define MAX_REQUEST_ID 200

static const char *const METHODS[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
#define N_METHODS 7
static PyObject *method_text[N_METHODS];
static PyObject *method_bytes[N_METHODS];

static PyObject *k_method, *k_path, *k_query, *k_raw, *k_protocol, *k_content_type;
static PyObject *v_http11, *v_empty, *v_comma;

static unsigned char TCHAR[256];  /* RFC 9110 token */
static unsigned char VCHAR[256];  /* field value: visible ASCII, SP, HT */
static unsigned char UCHAR[256];  /* request-target: visible ASCII but "#" */
static unsigned char HCHAR[256];  /* Host reg-name, as http_parser._HOST */

static void init_tables(void) {
    const char *tokens = "!#$%&'*+-.^_`|~";
    const char *host = "-._~%!$&'()*+,;=";
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        TCHAR[c] = alnum || (c && strchr(tokens, c));
        VCHAR[c] = (c >= 0x21 && c <= 0x7e) || c == ' ' || c == '\t';
        UCHAR[c] = c >= 0x21 && c <= 0x7e && c != '#';
        HCHAR[c] = alnum || (c && strchr(host, c));
    }
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Case-insensitive comparison with a lowercase literal of the same length. */
static int named(const unsigned char *s, Py_ssize_t n, const char *lit) {
    if ((size_t)n != strlen(lit))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower(s[i]) != lit[i])
            return 0;
    return 1;
}

static PyObject *ascii(const unsigned char *s, Py_ssize_t n) {
    PyObject *text = PyUnicode_New(n, 127);
    if (text)
        memcpy(PyUnicode_DATA(text), s, n);
    return text;
}

static int hex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* PATH_INFO: urllib.parse.unquote_to_bytes (a "%" without two hex digits stays), as latin-1. */
static PyObject *unquoted(const unsigned char *s, Py_ssize_t n) {
    unsigned char buffer[MAX_HEAD];
    Py_ssize_t out = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int high, low;
        if (s[i] == '%' && i + 2 < n && (high = hex(s[i + 1])) >= 0 && (low = hex(s[i + 2])) >= 0) {
            buffer[out++] = (unsigned char)(high << 4 | low);
            i += 2;
        } else {
            buffer[out++] = s[i];
        }
    }
    return PyUnicode_DecodeLatin1((const char *)buffer, out, NULL);
}

/* Host as http_parser._HOST without the IP-literal branch: reg-name [":" port]. */
static int plain_host(const unsigned char *s, const unsigned char *end) {
    while (s < end && HCHAR[*s])
        s++;
    if (s < end && *s == ':')
        for (s++; s < end && *s >= '0' && *s <= '9'; s++)
            ;
    return s == end;
}

/* The environ key of a header name: HTTP_ + upper, "-" as "_"; CONTENT_TYPE unprefixed;
 * NULL with no error for a name with "_", which is dropped (http_parser._environ_key). */
static PyObject *environ_key(const unsigned char *name, Py_ssize_t n) {
    if (memchr(name, '_', n))
        return NULL;
    if (named(name, n, "content-type")) {
        Py_INCREF(k_content_type);
        return k_content_type;
    }
    PyObject *key = PyUnicode_New(n + 5, 127);
    if (!key)
        return NULL;
    unsigned char *out = PyUnicode_DATA(key);
    memcpy(out, "HTTP_", 5);
    for (Py_ssize_t i = 0; i < n; i++) {
        int c = name[i];
        out[5 + i] = c == '-' ? '_' : (c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    return key;
}

/* Sets environ[key] = value, or joins a repeated field with ",". Steals nothing. */
static int set_field(PyObject *environ, PyObject *key, const unsigned char *v, Py_ssize_t n) {
    PyObject *value = ascii(v, n);
    if (!value)
        return -1;
    if (key != k_content_type) {
        PyObject *before = PyDict_GetItemWithError(environ, key);
        if (before) {
            PyObject *joined = PyUnicode_Concat(before, v_comma);
            Py_XSETREF(joined, joined ? PyUnicode_Concat(joined, value) : NULL);
            Py_SETREF(value, joined);
            if (!value)
                return -1;
        } else if (PyErr_Occurred()) {
            Py_DECREF(value);
            return -1;
        }
    }
    int result = PyDict_SetItem(environ, key, value);
    Py_DECREF(value);
    return result;
}

/* http_parser.Head in C: the same fields, settable, with the same defaults. */
typedef struct {
    PyObject_HEAD
    PyObject *chunked, *content_length, *environ, *expect_continue, *forwarded, *headers;
    PyObject *keep_alive, *method, *path, *query, *request_id, *request_start, *upgrade, *url;
    PyObject *version;
} Head;

static PyTypeObject *head_type;
static PyObject *v_slash, *v_11, *v_no_bytes; /* b"/", "1.1", b"" */

#define HEAD_FIELDS(X)                                                                             \
    X(chunked) X(content_length) X(environ) X(expect_continue) X(forwarded) X(headers)            \
    X(keep_alive)                                                                                  \
    X(method) X(path) X(query) X(request_id) X(request_start) X(upgrade) X(url) X(version)

/* A Head with Python's defaults; ``headers`` stays NULL until it is first read. */
static Head *new_head(PyTypeObject *type) {
    Head *head = (Head *)type->tp_alloc(type, 0);
    if (!head)
        return NULL;
    head->chunked = Py_NewRef(Py_False);
    head->content_length = Py_NewRef(Py_None);
    head->environ = Py_NewRef(Py_None);
    head->expect_continue = Py_NewRef(Py_False);
    head->forwarded = Py_NewRef(Py_True);
    head->keep_alive = Py_NewRef(Py_True);
    head->method = Py_NewRef(v_no_bytes);
    head->path = Py_NewRef(v_slash);
    head->query = Py_NewRef(v_no_bytes);
    head->request_id = Py_NewRef(v_empty);
    head->request_start = Py_NewRef(Py_None);
    head->upgrade = Py_NewRef(Py_False);
    head->url = Py_NewRef(v_no_bytes);
    head->version = Py_NewRef(v_11);
    return head;
}

static PyObject *head_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (PyTuple_GET_SIZE(args) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "Head() takes no arguments");
        return NULL;
    }
    return (PyObject *)new_head(type);
}

static int head_traverse(Head *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
#define VISIT(field) Py_VISIT(self->field);
    HEAD_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int head_clear(Head *self) {
#define CLEAR(field) Py_CLEAR(self->field);
    HEAD_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void head_dealloc(Head *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    head_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* a heap type: each instance holds a reference to it */
}

static PyObject *head_get_headers(Head *self, void *Py_UNUSED(closure)) {
    if (!self->headers && !(self->headers = PyList_New(0)))
        return NULL;
    return Py_NewRef(self->headers);
}

static int head_set_headers(Head *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "Head.headers cannot be deleted");
        return -1;
    }
    Py_XSETREF(self->headers, Py_NewRef(value));
    return 0;
}

static PyMemberDef head_members[] = {
#define MEMBER(field) {#field, T_OBJECT_EX, offsetof(Head, field), 0, NULL},
    MEMBER(chunked) MEMBER(content_length) MEMBER(environ) MEMBER(expect_continue)
    MEMBER(forwarded) MEMBER(keep_alive) MEMBER(method) MEMBER(path) MEMBER(query) MEMBER(request_id)
    MEMBER(request_start) MEMBER(upgrade) MEMBER(url) MEMBER(version)
#undef MEMBER
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef head_getset[] = {
    {"headers", (getter)head_get_headers, (setter)head_set_headers,
     "(environ key, value) per field (llhttp's path; chunked trailers)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot head_slots[] = {
    {Py_tp_new, head_new},
    {Py_tp_dealloc, head_dealloc},
    {Py_tp_traverse, head_traverse},
    {Py_tp_clear, head_clear},
    {Py_tp_members, head_members},
    {Py_tp_getset, head_getset},
    {Py_tp_doc, "A parsed and validated request line and header block (http_parser.Head)."},
    {0, NULL},
};

static PyType_Spec head_spec = {
    .name = "greenserve._fasthead.Head",
    .basicsize = sizeof(Head),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = head_slots,
};

/* The Head of the plain request head that is all of data[:size], or None. */
static PyObject *parse_head(const unsigned char *data, Py_ssize_t size, PyObject *base) {
    if (size < 16 || size > MAX_HEAD || memcmp(data + size - 4, "\r\n\r\n", 4) != 0)
        Py_RETURN_NONE;
    const unsigned char *blank = data + size - 2;  /* the empty line that ends the head */

    /* request line: method SP origin-form SP "HTTP/1.1" CRLF */
    int method = 0;
    const unsigned char *q = data;
    for (; method < N_METHODS; method++) {
        size_t length = strlen(METHODS[method]);
        if (memcmp(q, METHODS[method], length) == 0 && q[length] == ' ') {
            q += length + 1;
            break;
        }
    }
    if (method == N_METHODS || *q != '/')
        Py_RETURN_NONE;
    const unsigned char *url = q, *question = NULL;
    int percent = 0;
    for (; UCHAR[*q]; q++) {
        if (*q == '?' && !question)
            question = q;
        else if (*q == '%' && !question)
            percent = 1;
    }
    const unsigned char *url_end = q;
    if (blank - q < 11 || memcmp(q, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    q += 11;

    PyObject *environ = PyDict_Copy(base);
    if (!environ)
        return NULL;
    PyObject *request_id = v_empty, *url_bytes = NULL, *key = NULL;
    Py_INCREF(request_id);
    int fields = 0, hosts = 0, keep_alive = 1, forwarded = 0;

    while (q < blank) {
        const unsigned char *name = q;
        while (TCHAR[*q])
            q++;
        Py_ssize_t name_size = q - name;
        if (!name_size || *q != ':')
            goto decline;
        for (q++; *q == ' ' || *q == '\t'; q++)
            ;
        const unsigned char *value = q;
        while (VCHAR[*q])
            q++;
        if (q[0] != '\r' || q[1] != '\n')
            goto decline;
        const unsigned char *value_end = q;
        while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t'))
            value_end--;  /* llhttp trims leading whitespace only; RFC 9110 5.5 both */
        q += 2;
        if (++fields > MAX_FIELDS)
            goto decline;
        Py_ssize_t value_size = value_end - value;
        switch (name_size) {  /* the fields the llhttp path checks or acts on */
        case 4:
            if (named(name, name_size, "host") &&
                (++hosts > 1 || !plain_host(value, value_end)))
                goto decline;
            break;
        case 10:
            if (named(name, name_size, "connection")) {
                if (named(value, value_size, "close"))
                    keep_alive = 0;
                else if (!named(value, value_size, "keep-alive"))
                    goto decline;
            }
            break;
        case 12:
            if (named(name, name_size, "x-request-id") && value_size &&
                value_size <= MAX_REQUEST_ID && !memchr(value, ' ', value_size) &&
                !memchr(value, '\t', value_size)) {
                PyObject *text = ascii(value, value_size);
                if (!text)
                    goto error;
                Py_SETREF(request_id, text);
            }
            break;
        case 9:
        case 15:
            if (named(name, name_size, "forwarded") || named(name, name_size, "x-forwarded-for"))
                forwarded = 1;
            break;
        case 6:
        case 7:
        case 14:
        case 16:
        case 17:
            if (named(name, name_size, "expect") || named(name, name_size, "upgrade") ||
                named(name, name_size, "content-length") ||
                named(name, name_size, "proxy-connection") ||
                named(name, name_size, "transfer-encoding"))
                goto decline;
            if (named(name, name_size, "x-forwarded-host") ||
                named(name, name_size, "x-forwarded-proto"))
                forwarded = 1;
            break;
        }
        key = environ_key(name, name_size);
        if (!key) {
            if (PyErr_Occurred())
                goto error;
            continue;
        }
        if (set_field(environ, key, value, value_size) < 0)
            goto error;
        Py_CLEAR(key);
    }
    if (hosts != 1)
        goto decline;

    PyObject *path = percent ? unquoted(url, (question ? question : url_end) - url)
                             : ascii(url, (question ? question : url_end) - url);
    if (!path)
        goto error;
    int failed = PyDict_SetItem(environ, k_path, path);
    PyObject *raw = path;
    if (question || percent) {
        raw = ascii(url, url_end - url);
        failed = failed || !raw;
    } else {
        Py_INCREF(raw);
    }
    Py_DECREF(path);
    failed = failed || PyDict_SetItem(environ, k_raw, raw) < 0;
    Py_XDECREF(raw);
    if (failed)
        goto error;
    PyObject *query = question ? ascii(question + 1, url_end - question - 1) : v_empty;
    if (!question)
        Py_INCREF(query);
    if (!query)
        goto error;
    failed = PyDict_SetItem(environ, k_query, query) < 0;
    Py_DECREF(query);
    if (failed || PyDict_SetItem(environ, k_method, method_text[method]) < 0 ||
        PyDict_SetItem(environ, k_protocol, v_http11) < 0)
        goto error;
    url_bytes = PyBytes_FromStringAndSize((const char *)url, url_end - url);
    if (!url_bytes)
        goto error;
    Head *head = new_head(head_type);
    if (!head)
        goto error;
    /* the new references move into the Head */
    Py_SETREF(head->environ, environ);
    Py_SETREF(head->url, url_bytes);
    Py_SETREF(head->request_id, request_id);
    Py_SETREF(head->method, Py_NewRef(method_bytes[method]));
    if (!keep_alive)
        Py_SETREF(head->keep_alive, Py_NewRef(Py_False));
    if (!forwarded)
        Py_SETREF(head->forwarded, Py_NewRef(Py_False));
    return (PyObject *)head;

decline:
    Py_DECREF(environ);
    Py_DECREF(request_id);
    Py_XDECREF(key);
    Py_RETURN_NONE;
error:
    Py_DECREF(environ);
    Py_DECREF(request_id);
    Py_XDECREF(key);
    Py_XDECREF(url_bytes);
    return NULL;
}

static PyObject *parse(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "parse(data: bytes, base: dict)");
        return NULL;
    }
    return parse_head((const unsigned char *)PyBytes_AS_STRING(args[0]),
                      PyBytes_GET_SIZE(args[0]), args[1]);
}

static PyObject *parse_many(PyObject *Py_UNUSED(module), PyObject *const *args,
                            Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) ||
        !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "parse_many(data: bytes, base: dict, events: list)");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), at = 0;
    while (at < size) {
        const unsigned char *blank = memmem(data + at, size - at, "\r\n\r\n", 4);
        if (!blank)
            break;
        Py_ssize_t end = blank - data + 4;
        PyObject *head = parse_head(data + at, end - at, args[1]);
        if (!head)
            return NULL;
        if (head == Py_None) {
            Py_DECREF(head);
            break;
        }
        int failed = PyList_Append(args[2], head);
        /* nothing after Connection: close is served (llhttp refuses it too) */
        int closing = ((Head *)head)->keep_alive == Py_False;
        Py_DECREF(head);
        if (failed)
            return NULL;
        at = closing ? size : end;
    }
    return PyLong_FromSsize_t(at);
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(data, base) -> Head or None"},
    {"parse_many", (PyCFunction)(void (*)(void))parse_many, METH_FASTCALL,
     "parse_many(data, base, events) -> offset of what is left"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "greenserve._fasthead", NULL, -1, methods,
};

static PyObject *interned(const char *text) {
    return PyUnicode_InternFromString(text);
}

PyMODINIT_FUNC PyInit__fasthead(void) {
    init_tables();
    k_method = interned("REQUEST_METHOD");
    k_path = interned("PATH_INFO");
    k_query = interned("QUERY_STRING");
    k_raw = interned("RAW_URI");
    k_protocol = interned("SERVER_PROTOCOL");
    k_content_type = interned("CONTENT_TYPE");
    v_http11 = interned("HTTP/1.1");
    v_empty = interned("");
    v_comma = interned(",");
    if (!k_method || !k_path || !k_query || !k_raw || !k_protocol || !k_content_type ||
        !v_http11 || !v_empty || !v_comma)
        return NULL;
    for (int i = 0; i < N_METHODS; i++) {
        method_text[i] = interned(METHODS[i]);
        method_bytes[i] = PyBytes_FromString(METHODS[i]);
        if (!method_text[i] || !method_bytes[i])
            return NULL;
    }
    v_slash = PyBytes_FromStringAndSize("/", 1);
    v_11 = interned("1.1");
    v_no_bytes = PyBytes_FromStringAndSize("", 0);
    if (!v_slash || !v_11 || !v_no_bytes)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    head_type = (PyTypeObject *)PyType_FromSpec(&head_spec);
    if (!head_type || PyModule_AddObject(m, "Head", Py_NewRef(head_type)) < 0 ||
        PyModule_AddIntConstant(m, "ABI", FASTHEAD_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
