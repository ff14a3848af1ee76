"""The README's example, as a user copies it: its myapp.py, its command (on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import shlex
import urllib.request

import pytest

from tests.helpers import ROOT, running

pytestmark = pytest.mark.timeout(60)


def test_the_example_serves_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Example") :]
    code = re.search(r"```python\n(# myapp\.py\n.*?)```", section, re.S).group(1)
    line = re.search(r"```sh\n(greenserve [^#\n]*)", section).group(1)
    (tmp_path / "myapp.py").write_text(code)
    args = shlex.split(line)[1:]
    at = args.index("--bind")
    assert args[at + 1] == "0.0.0.0:8000"
    args[at + 1] = "127.0.0.1:0"  # tests listen on loopback only, on a port the kernel picks
    with running(*args, cwd=tmp_path) as server:
        server.started()
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read()) == {"hello": "world"}
