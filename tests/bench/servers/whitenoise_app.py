"""hello, with WhiteNoise serving the static bench's files at /static (its documented WSGI
set-up), for the static files benchmark. The directory comes from BENCH_STATIC_ROOT."""

import os

from whitenoise import WhiteNoise

from greenserve.worker.apps import hello

app = WhiteNoise(hello, root=os.environ["BENCH_STATIC_ROOT"], prefix="static/")
