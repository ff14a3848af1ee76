"""Tools for a running server: greenserve status, top and client."""
