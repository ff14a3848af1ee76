"""greenserve's HPACK encoder and decoder against hpack's own, block by block."""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import OversizedHeaderListError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenserve.worker.protocols import h2_hpack
from greenserve.worker.protocols.h2_hpack import BlockDecoder, FieldEncoder

RESPONSE = [
    (b":status", b"200"),  # the static table has name and value: one byte
    (b":status", b"204"),
    (b"content-type", b"text/html; charset=utf-8"),  # a static name, a new value
    (b"content-length", b"0"),
    (b"www-authenticate", b"Basic"),  # index 61: past a 4-bit prefix
    (b"x-custom", b""),  # a new name, an empty value
    (b"x-long", b"v" * 300),  # lengths past a 7-bit prefix
    (b"x-binary", bytes(range(1, 128))),  # Huffman would be longer: sent raw
    (b"date", b"Sun, 06 Dec 2026 07:00:00 GMT"),
]


def _decoded(block: bytes, decoder: Decoder) -> list[tuple[bytes, bytes]]:
    return [tuple(field) for field in decoder.decode(block, raw=True)]


def test_response_fields_decode_as_sent_and_leave_both_tables_alone() -> None:
    encoder, decoder = FieldEncoder(), Decoder()
    for _ in range(3):  # a repeat comes from the cache: the same bytes
        assert _decoded(encoder.encode(RESPONSE), decoder) == RESPONSE
    assert not encoder.header_table.dynamic_entries
    assert not decoder.header_table.dynamic_entries  # no field asked to be indexed
    assert encoder.encode([(b":status", b"200")]) == b"\x88"


def test_never_indexed_fields_stay_never_indexed() -> None:
    encoder, decoder = FieldEncoder(), Decoder()
    fields = [
        (b":status", b"200"),
        NeverIndexedHeaderTuple(b"x-request-id", b"0123456789abcdef"),
        NeverIndexedHeaderTuple(b"authorization", b"secret"),  # a static name
    ]
    for _ in range(2):
        decoded = decoder.decode(encoder.encode(fields), raw=True)
        assert [tuple(field) for field in decoded] == [tuple(field) for field in fields]
        assert [type(field) for field in decoded[1:]] == [NeverIndexedHeaderTuple] * 2
    assert b"0123456789abcdef" in encoder.encode(fields)  # raw: unique values are not coded


def test_table_size_update_and_other_field_types_go_to_hpack() -> None:
    """hpack writes a block that owes a size update or has fields it must convert; its table
    and the peer's stay in step with ours in between."""
    encoder, decoder = FieldEncoder(), Decoder()
    blocks = [  # (fields, what the peer decodes)
        ([HeaderTuple(b"x-indexed", b"1"), (b"x-a", b"b")], None),  # hpack's: indexes x-indexed
        ([(b"x-a", b"b")], None),  # ours
        ([("x-str", "text"), (b":status", b"404")], [(b"x-str", b"text"), (b":status", b"404")]),
        ([(b"x-indexed", b"1"), (b"x-three", b"3", False)], [(b"x-indexed", b"1"),
                                                             (b"x-three", b"3")]),
    ]  # fmt: skip
    for fields, expected in blocks:
        assert _decoded(encoder.encode(fields), decoder) == (expected or fields)
    assert encoder.header_table.dynamic_entries == decoder.header_table.dynamic_entries
    encoder.header_table_size = 0  # the client's SETTINGS_HEADER_TABLE_SIZE
    block = encoder.encode([(b":status", b"200")])
    assert block[0] & 0xE0 == 0x20  # the update comes first
    assert _decoded(block, decoder) == [(b":status", b"200")]
    assert decoder.header_table_size == 0
    assert _decoded(encoder.encode(RESPONSE), decoder) == RESPONSE  # ours again


def test_the_encoding_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2_hpack, "ENCODED_MAX", 8)
    encoder, decoder = FieldEncoder(), Decoder()
    for n in range(50):
        fields = [(b"x-n", b"%d" % n)]
        assert _decoded(encoder.encode(fields), decoder) == fields
        assert len(h2_hpack._ENCODED) <= 8


def _request(path: bytes, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"https"), (b":path", path), *extra]


def test_blocks_that_change_the_table_are_decoded_every_time() -> None:
    client, ours, theirs = Encoder(), BlockDecoder(), Decoder()
    sequence = [
        _request(b"/", [(b"user-agent", b"h2load")]),  # inserts
        _request(b"/", [(b"user-agent", b"h2load")]),  # indexes only: kept
        _request(b"/", [(b"user-agent", b"h2load")]),  # replayed
        _request(b"/a", [(b"user-agent", b"h2load")]),  # inserts /a: what was kept goes
        _request(b"/", [(b"user-agent", b"h2load")]),  # indexes only, shifted by one: kept
    ]
    for fields in sequence:
        block = client.encode(fields)
        assert _decoded(block, ours) == _decoded(block, theirs) == fields
        assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries
    block = client.encode(sequence[1])
    assert block in ours.blocks
    # a block replayed must not insert: decoding an inserting block twice inserts twice
    inserting = Encoder().encode([(b"x-new", b"1")])
    for _ in range(2):
        assert _decoded(inserting, ours) == _decoded(inserting, theirs)
    assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries
    assert inserting not in ours.blocks


def test_a_kept_block_is_checked_again_under_new_limits() -> None:
    """An HPACK bomb must not pass by replay once the list limit shrinks."""
    client, ours = Encoder(), BlockDecoder()
    fields = _request(b"/", [(b"x-big", b"v" * 300)])
    assert _decoded(client.encode(fields), ours) == fields  # inserts x-big
    block = client.encode(fields)  # indexes only
    for _ in range(2):
        assert _decoded(block, ours) == fields
    assert block in ours.blocks
    ours.max_header_list_size = 200  # the SETTINGS_MAX_HEADER_LIST_SIZE ack
    with pytest.raises(OversizedHeaderListError):
        ours.decode(block, raw=True)


FIELD = st.tuples(
    st.sampled_from([b"x-a", b"x-b", b"cookie", b"accept", b":path", b"user-agent"]),
    st.binary(max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.lists(FIELD, max_size=6), st.sampled_from([None, 0, 64, 256, 4096])),
        min_size=1,
        max_size=12,
    )
)
def test_decoding_equals_hpacks_for_any_sequence(
    steps: list[tuple[list[tuple[bytes, bytes]], int | None]],
) -> None:
    """Any client's blocks (inserts, evictions, size updates, repeats) decode to what hpack
    decodes, and both tables stay the same; and any response block ours encodes decodes to
    its fields."""
    client, ours, theirs = Encoder(), BlockDecoder(), Decoder()
    encoder, peer = FieldEncoder(), Decoder()
    for fields, size in steps:
        if size is not None:
            client.header_table_size = size
        for _ in range(2):  # the second time: often indexes only, replayable
            block = client.encode(fields)
            assert _decoded(block, ours) == _decoded(block, theirs)
        assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries
        assert _decoded(encoder.encode(fields), peer) == fields
