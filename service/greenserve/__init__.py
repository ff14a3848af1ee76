"""greenserve: a pre-fork server for gevent TCP handlers and WSGI apps."""

__version__ = "0.1.0"
