"""The static files layer's pure parts, in process: ranges, Accept-Encoding, path checks,
conditionals, hashed names."""

from __future__ import annotations

import os

import pytest

from greenserve.worker import static
from greenserve.worker.static import _accepts, _checked, _File, _not_modified, _ranges, _Refused


@pytest.fixture
def file(tmp_path) -> _File:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return _File(str(path), os.stat(path))


@pytest.mark.parametrize(
    "header,expected",
    [
        ("bytes=0-0", [(0, 1)]),
        ("bytes=0-999", [(0, 1000)]),
        ("bytes=990-5000", [(990, 1000)]),
        ("bytes=-10", [(990, 1000)]),
        ("bytes=-5000", [(0, 1000)]),
        ("bytes=500-", [(500, 1000)]),
        ("bytes= 1-2 , 5-6", [(1, 3), (5, 7)]),
        ("BYTES=1-2", [(1, 3)]),
        ("bytes=1000-", []),  # nothing satisfiable: 416
        ("bytes=2000-3000", []),
        ("bytes=1000-,0-1", [(0, 2)]),  # the satisfiable ones are kept
        ("bytes=5-1", None),  # malformed: the whole file
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=", None),
        ("items=0-1", None),
        ("bytes=" + ",".join(f"{n}-{n}" for n in range(17)), None),  # too many: whole
    ],
)
def test_ranges(file, header, expected):
    assert _ranges({"HTTP_RANGE": header}, file) == expected


def test_if_range(file):
    assert _ranges({"HTTP_RANGE": "bytes=0-1", "HTTP_IF_RANGE": file.etag}, file) == [(0, 2)]
    assert _ranges({"HTTP_RANGE": "bytes=0-1", "HTTP_IF_RANGE": file.last_modified}, file)
    assert _ranges({"HTTP_RANGE": "bytes=0-1", "HTTP_IF_RANGE": '"old"'}, file) is None


@pytest.mark.parametrize(
    "header,coding,expected",
    [
        ("gzip, deflate, br", "br", True),
        ("gzip;q=1.0, br;q=0", "br", False),
        ("gzip;q=0.5", "gzip", True),
        ("GZIP", "gzip", True),
        ("*", "br", True),
        ("*;q=0", "br", False),
        ("br;q=0, *", "br", False),  # the named coding decides, not the star
        ("identity", "gzip", False),
        ("", "gzip", False),
        ("gzip;q=nonsense", "gzip", False),
    ],
)
def test_accepts(header, coding, expected):
    assert _accepts(header, coding) is expected


@pytest.mark.parametrize(
    "rest,status,reason",
    [
        ("/../x", 400, "traversal"),
        ("/a/../../x", 400, "traversal"),
        ("/./x", 400, "traversal"),
        ("/..", 400, "traversal"),
        ("/a\\..\\x", 400, "backslash"),
        ("/x\x00.txt", 400, "nul"),
        ("/.env", 404, "dotfile"),
        ("/a/.git/config", 404, "dotfile"),
    ],
)
def test_checked_refuses(rest, status, reason):
    with pytest.raises(_Refused) as refused:
        _checked(rest, dotfiles=False)
    assert (refused.value.status, refused.value.reason) == (status, reason)


def test_checked_keeps_ordinary_paths_and_dotfiles_when_asked():
    assert _checked("/css/app.css", dotfiles=False) == "css/app.css"
    assert _checked("/a..b/c...d", dotfiles=False) == "a..b/c...d"  # dots inside a name
    assert _checked("/.well-known/x", dotfiles=True) == ".well-known/x"
    assert _checked("", dotfiles=False) == ""


def test_not_modified(file):
    assert _not_modified({"HTTP_IF_NONE_MATCH": file.etag}, file)
    assert _not_modified({"HTTP_IF_NONE_MATCH": f'"a", W/{file.etag}'}, file)
    assert not _not_modified({"HTTP_IF_NONE_MATCH": '"a"'}, file)
    assert _not_modified({"HTTP_IF_MODIFIED_SINCE": file.last_modified}, file)
    assert not _not_modified({"HTTP_IF_MODIFIED_SINCE": "Mon, 01 Jan 2001 00:00:00 GMT"}, file)
    assert not _not_modified({"HTTP_IF_MODIFIED_SINCE": "yesterday"}, file)
    both = {"HTTP_IF_NONE_MATCH": '"a"', "HTTP_IF_MODIFIED_SINCE": file.last_modified}
    assert not _not_modified(both, file)  # RFC 9110 13.2.2: If-None-Match is evaluated alone


@pytest.mark.parametrize(
    "name,hashed",
    [
        ("main.3b2c1a9f.js", True),
        ("index-BQ3e9gkC.js", True),
        ("app.0123456789abcdef.css", True),
        ("main.js", False),
        ("settings-panel.js", False),
        ("jquery-3.7.1.min.js", False),
        ("favicon.ico", False),
    ],
)
def test_hashed_names(name, hashed):
    assert bool(static._HASHED.search(name)) is hashed


def test_a_mount_prints_as_static_spells_it_and_parses_back(tmp_path):
    from greenserve.config import _static_mounts

    mounts = _static_mounts(
        f"/s={tmp_path};max-age=5;fallthrough;dotfiles,/={tmp_path};index=i.html"
    )
    assert [str(m) for m in mounts] == [
        f"/s={tmp_path};max-age=5;fallthrough;dotfiles",
        f"/={tmp_path};max-age=3600;index=i.html",
    ]
    assert _static_mounts(",".join(map(str, mounts))) == mounts
