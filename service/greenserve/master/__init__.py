"""The master process: binds once, keeps the workers in line with the slot table, acts on
signals. Never imports gevent and never runs user code."""
