"""HPACK for the HTTP/2 server: the same bytes on the wire, a fraction of hpack's CPU per stream.

hpack, in pure Python, was a sixth of a worker's CPU serving hello over h2 (py-spy, h2load
-m10: ``Encoder.encode`` 9%, ``Decoder.decode`` 7%). Both sides here do less per stream:

- ``FieldEncoder`` sends every response field as an index into the static table when name and
  value are there (``:status: 200``), else as a literal *without indexing* (RFC 7541 6.2.2),
  its encoded form kept per worker: a field is Huffman-coded once, not on every response.
  Without indexing, a response never changes the client's dynamic table, so an encoding stays
  right whatever was sent before. The price is a few bytes a field that the dynamic table
  would have saved on repeats; nginx's HTTP/2 makes the same choice for its responses. A
  never-indexed field (the request id) is written as one (6.2.3), raw. A block that owes the
  client a table size update (after its SETTINGS_HEADER_TABLE_SIZE) goes to hpack's own
  encoder, which keeps its table as always; so does a field of another type (str, 3-tuples).
- ``BlockDecoder`` keeps, per connection, the decoded fields of header blocks that left the
  dynamic table as it was (a client's repeated block of indexes: h2load, and a browser's
  repeats, send the same bytes for each request). Replaying such a block under the same table
  gives the same fields, so it is looked up, not decoded. Any block that changes the table is
  decoded by hpack every time, and it invalidates what was kept; so does a change of the
  limits the decoder enforces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE
_FULL: dict[tuple[bytes, bytes], int] = {}  # (name, value) -> index, the first of each
_NAMES: dict[bytes, int] = {}  # name -> the first index with it
for _index, (_name, _value) in enumerate(_STATIC, 1):
    _FULL.setdefault((_name, _value), _index)
    _NAMES.setdefault(_name, _index)
_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_ENCODED: dict[Any, bytes] = {}  # field -> its representation, for every connection
_SENSITIVE_NAMES: dict[bytes, bytes] = {}  # name -> a never-indexed field's start
ENCODED_MAX = 4096  # entries; past it the cache starts again (dates change every second)
BLOCKS_MAX = 16  # decoded blocks kept per connection
BLOCK_MAX = 512  # bytes: a longer block is decoded every time


def _string(data: bytes) -> bytes:
    """A string literal (RFC 7541 5.2): Huffman-coded when that is shorter."""
    coded = _HUFFMAN.encode(data)
    if len(coded) < len(data):
        length = encode_integer(len(coded), 7)
        length[0] |= 0x80
        return bytes(length) + coded
    return bytes(encode_integer(len(data), 7)) + data


def represent(name: bytes, value: bytes) -> bytes:
    """One field as the static table's index, or as a literal that leaves the table alone."""
    index = _FULL.get((name, value))
    if index is not None:
        prefix = encode_integer(index, 7)
        prefix[0] |= 0x80
        return bytes(prefix)
    index = _NAMES.get(name)
    if index is not None:  # 6.2.2 with an indexed name: 0000 and the index on 4 bits
        return bytes(encode_integer(index, 4)) + _string(value)
    return b"\x00" + _string(name) + _string(value)


def never_indexed(name: bytes, value: bytes) -> bytes:
    """A sensitive field (RFC 7541 6.2.3: no intermediary may index it). Its value is usually
    unique (a request id), so it is neither kept nor Huffman-coded: raw is cheaper to write."""
    start = _SENSITIVE_NAMES.get(name)
    if start is None:
        index = _NAMES.get(name)
        prefix = encode_integer(index or 0, 4)
        prefix[0] |= 0x10
        start = bytes(prefix) + (b"" if index else _string(name))
        if len(_SENSITIVE_NAMES) >= ENCODED_MAX:
            _SENSITIVE_NAMES.clear()
        _SENSITIVE_NAMES[name] = start
    return start + bytes(encode_integer(len(value), 7)) + value


class FieldEncoder(Encoder):
    """hpack's Encoder whose ``encode`` writes cached, table-neutral representations."""

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        if self.header_table.resized:  # a size update is owed at the start of this block
            return super().encode(headers, huffman)
        encoded = _ENCODED
        parts = []
        for field in headers:
            representation = encoded.get(field)
            if representation is None:
                if type(field) is NeverIndexedHeaderTuple:
                    name, value = field
                    if type(name) is bytes and type(value) is bytes:
                        parts.append(never_indexed(name, value))
                        continue
                    return super().encode(headers, huffman)
                if type(field) is not tuple or len(field) != 2:
                    # a HeaderTuple (maybe never-indexed), a 3-tuple, str fields: hpack's way.
                    # Nothing was changed yet, so the whole block can go there.
                    return super().encode(headers, huffman)
                name, value = field
                if type(name) is not bytes or type(value) is not bytes:
                    return super().encode(headers, huffman)
                representation = represent(name, value)
                if len(encoded) >= ENCODED_MAX:
                    encoded.clear()
                encoded[field] = representation
            parts.append(representation)
        return b"".join(parts)


class _CountedTable(HeaderTable):
    """The decoder's dynamic table, counting its changes (an insert, a resize)."""

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class BlockDecoder(Decoder):
    """hpack's Decoder that replays header blocks which did not change the dynamic table."""

    def __init__(self, max_header_list_size: int = 65536) -> None:
        super().__init__(max_header_list_size)
        self.table = table = _CountedTable()
        self.header_table = table
        self.max_allowed_table_size = table.maxsize
        self.blocks: dict[bytes, list[Any]] = {}
        self.seen = (0, 0, 0)  # the table's changes and both limits the blocks were decoded at

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw or len(data) > BLOCK_MAX:
            return super().decode(data, raw)
        table = self.table
        now = (table.changes, self.max_header_list_size, self.max_allowed_table_size)
        blocks = self.blocks
        if now != self.seen:
            blocks.clear()
            self.seen = now
        else:
            kept = blocks.get(data)
            if kept is not None:
                return list(kept)
        fields = list(super().decode(data, raw))
        if table.changes == now[0]:  # the block left the table as it was: replayable
            if len(blocks) >= BLOCKS_MAX:
                blocks.clear()
            blocks[data] = fields
            return list(fields)
        return fields
