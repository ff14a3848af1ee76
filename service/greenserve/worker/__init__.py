"""A worker process: gevent, the app, the wire protocols. The only side that imports gevent."""
