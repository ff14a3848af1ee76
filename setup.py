"""The optional C accelerators (greenserve._fasthead, the request head; greenserve._response,
the response's hot path; greenserve._cycle, a plain request's cycle; greenserve._appvalue, an
app metric's value; greenserve._stackcache, frame stack chunks kept for the next greenlet;
greenserve._tracegate, --otel's sampling decision per request; greenserve._static, --static's
plain answer of a file kept in memory); everything else is in pyproject.toml.

``optional=True``: without a compiler or Python headers the build goes on without them, and
greenserve uses the pure-Python paths (the same behaviour, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "greenserve._fasthead",
            ["service/greenserve/_fasthead.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "greenserve._response",
            ["service/greenserve/_response.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "greenserve._cycle",
            ["service/greenserve/_cycle.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "greenserve._appvalue",
            ["service/greenserve/_appvalue.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "greenserve._stackcache",
            ["service/greenserve/_stackcache.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "greenserve._static",
            ["service/greenserve/_static.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "greenserve._tracegate",
            ["service/greenserve/_tracegate.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
