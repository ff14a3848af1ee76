"""The optional C accelerator (greenserve._fasthead); everything else is in pyproject.toml.

``optional=True``: without a compiler or Python headers the build goes on without it, and
greenserve uses the pure-Python path (the same behaviour, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "greenserve._fasthead",
            ["service/greenserve/_fasthead.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
