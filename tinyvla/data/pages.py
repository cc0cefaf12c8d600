"""One row of a parquet image column read from its data page alone, not from its whole row group.

Why: LeRobot's image datasets (LIBERO: two 256x256 PNGs per frame) keep ~100 frames per row group, ~20 MB of PNG.
pyarrow reads a row group at least, so a random training sample paid ~20 MB of reads and copies for ~0.2 MB of
pixels (lerobot avoids it by first converting the whole dataset into an uncompressed Arrow cache). A column chunk is
a run of pages (~1 MB, ~10 frames each); each page starts with a small Thrift header saying its size and row count.
Scanning those headers once per column chunk gives a page index, and a row then costs one page: a decompress of
~1 MB and a walk over at most a page's values.

Supported (what pyarrow and lerobot write): data pages v1 and v2, PLAIN values or a dictionary (RLE_DICTIONARY /
PLAIN_DICTIONARY), UNCOMPRESSED / SNAPPY / GZIP / ZSTD / BROTLI / LZ4_RAW pages, optional fields (definition levels),
no repeated fields. Anything else returns None and the caller reads the row group as before.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tinyvla.data.reader import ForkSafeCache

CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "GZIP": "gzip", "ZSTD": "zstd", "BROTLI": "brotli",
          "LZ4_RAW": "lz4_raw"}
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
PLAIN, PLAIN_DICTIONARY, RLE_DICTIONARY = 0, 2, 8


class Unsupported(Exception):
    """A layout this reader does not handle: the caller falls back to a row-group read."""


# ------------------------------------------------------------------------------------------------------------------
# Thrift compact protocol (page headers) and the RLE / bit-packed hybrid (levels, dictionary indices)
# ------------------------------------------------------------------------------------------------------------------


def _varint(buf, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(buf, pos: int, kind: int):
    if kind in (1, 2):  # a bool field carries its value in the type
        return kind == 1, pos
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):
        v, pos = _varint(buf, pos)
        return _zigzag(v), pos
    if kind == 7:
        return None, pos + 8
    if kind == 8:
        n, pos = _varint(buf, pos)
        return bytes(buf[pos: pos + n]), pos + n
    if kind in (9, 10):
        head = buf[pos]
        pos += 1
        n, elem = head >> 4, head & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        items = []
        for _ in range(n):
            if elem in (1, 2):  # bools in a list are one byte each
                items.append(buf[pos] == 1)
                pos += 1
            else:
                v, pos = _value(buf, pos, elem)
                items.append(v)
        return items, pos
    if kind == 12:
        return _struct(buf, pos)
    raise Unsupported(f"thrift type {kind}")


def _struct(buf, pos: int) -> tuple[dict, int]:
    """A Thrift compact struct -> ({field id: value}, the position after it)."""
    fields, last = {}, 0
    while True:
        byte = buf[pos]
        pos += 1
        if byte == 0:
            return fields, pos
        kind, delta = byte & 0x0F, byte >> 4
        if delta:
            fid = last + delta
        else:
            v, pos = _varint(buf, pos)
            fid = _zigzag(v)
        last = fid
        fields[fid], pos = _value(buf, pos, kind)


def _rle_hybrid(buf, pos: int, bit_width: int, count: int) -> np.ndarray:
    """`count` values of parquet's RLE / bit-packed hybrid encoding starting at `pos`."""
    out, n = np.empty(count, np.int64), 0
    byte_width = (bit_width + 7) // 8
    weights = 1 << np.arange(bit_width, dtype=np.int64)
    while n < count:
        header, pos = _varint(buf, pos)
        if header & 1:  # bit-packed: groups of 8 values, bit_width bits each, least significant bit first
            size = (header >> 1) * bit_width
            bits = np.unpackbits(np.frombuffer(bytes(buf[pos: pos + size]), np.uint8), bitorder="little")
            values = bits.reshape(-1, bit_width) @ weights if bit_width else np.zeros((header >> 1) * 8, np.int64)
            pos += size
        else:  # a run: one value repeated
            value = int.from_bytes(bytes(buf[pos: pos + byte_width]), "little")
            values = np.full(header >> 1, value, np.int64)
            pos += byte_width
        take = min(len(values), count - n)
        out[n: n + take] = values[:take]
        n += take
    return out


def _plain_value(data, pos: int, index: int) -> bytes:
    """The `index`-th PLAIN byte-array value from `pos` on (each is a 4-byte length, then the bytes)."""
    for _ in range(index):
        pos += 4 + int.from_bytes(data[pos: pos + 4], "little")
    n = int.from_bytes(data[pos: pos + 4], "little")
    if pos + 4 + n > len(data):
        raise Unsupported("value runs past the page")
    return bytes(data[pos + 4: pos + 4 + n])


# ------------------------------------------------------------------------------------------------------------------
# Page index of one column chunk, and a row out of it
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class _Page:
    first_row: int
    kind: int
    body: int  # file offset of the page's (compressed) bytes
    compressed: int
    uncompressed: int
    values: int
    encoding: int
    levels_len: int = 0  # v2: definition + repetition level bytes, stored uncompressed before the values
    values_compressed: bool = True


@dataclass
class ColumnChunk:
    pages: list
    dictionary: _Page | None
    codec: str | None
    max_def: int


def index_chunk(buf, meta: pq.FileMetaData, group: int, column: int) -> ColumnChunk:
    """Scan the page headers of one column chunk (a few bytes each) into a page index."""
    schema = meta.schema.column(column)
    if schema.max_repetition_level:
        raise Unsupported("repeated field")
    cc = meta.row_group(group).column(column)
    if cc.compression not in CODECS:
        raise Unsupported(f"codec {cc.compression}")
    start = cc.dictionary_page_offset if cc.has_dictionary_page and cc.dictionary_page_offset else cc.data_page_offset
    end, pos, row = start + cc.total_compressed_size, start, 0
    pages, dictionary = [], None
    while pos < end:
        header, body = _struct(buf, pos)
        kind, uncompressed, compressed = header.get(1), header.get(2), header.get(3)
        if kind == DICTIONARY_PAGE:
            dictionary = _Page(row, kind, body, compressed, uncompressed, header[7][1], header[7].get(2, PLAIN))
        elif kind == DATA_PAGE:
            h = header[5]
            pages.append(_Page(row, kind, body, compressed, uncompressed, h[1], h[2]))
            row += h[1]  # not repeated: one value (or null) per row
        elif kind == DATA_PAGE_V2:
            h = header[8]
            pages.append(_Page(row, kind, body, compressed, uncompressed, h[1], h[4], h[5] + h[6], h.get(7, True)))
            row += h[3]
        pos = body + compressed
    if row != meta.row_group(group).num_rows:
        raise Unsupported("page rows do not add up to the row group's")
    return ColumnChunk(pages, dictionary, CODECS[cc.compression], schema.max_definition_level)


def _page_bytes(buf, page: _Page, codec: str | None):
    raw = buf[page.body: page.body + page.compressed]
    if page.kind == DATA_PAGE_V2:
        levels, rest = raw[: page.levels_len], raw[page.levels_len:]
        if codec is None or not page.values_compressed:
            return raw
        return bytes(levels) + pa.decompress(rest, page.uncompressed - page.levels_len, codec, asbytes=True)
    return raw if codec is None else pa.decompress(raw, page.uncompressed, codec, asbytes=True)


def read_value(buf, chunk: ColumnChunk, row: int) -> bytes | None:
    """The binary value at `row` (within the row group), or None when that row holds a null."""
    starts = [p.first_row for p in chunk.pages]
    page = chunk.pages[int(np.searchsorted(starts, row, side="right")) - 1]
    data, k = _page_bytes(buf, page, chunk.codec), row - page.first_row
    pos, non_null_before = 0, k
    if chunk.max_def:
        width = chunk.max_def.bit_length()
        if page.kind == DATA_PAGE:  # v1: levels prefixed by their byte length
            n = int.from_bytes(data[:4], "little")
            levels, pos = _rle_hybrid(data, 4, width, page.values), 4 + n
        else:  # v2: levels first, their length in the header
            levels, pos = _rle_hybrid(data, 0, width, page.values), page.levels_len
        if levels[k] != chunk.max_def:
            return None
        non_null_before = int((levels[:k] == chunk.max_def).sum())
    elif page.kind == DATA_PAGE_V2:
        pos = page.levels_len
    if page.encoding == PLAIN:
        return _plain_value(data, pos, non_null_before)
    if page.encoding in (PLAIN_DICTIONARY, RLE_DICTIONARY) and chunk.dictionary is not None:
        # pyarrow keeps a PNG column's whole row group in its dictionary page (one data page of indices): the
        # dictionary page is decompressed, but only our value is copied out of it
        index = int(_rle_hybrid(data, pos + 1, data[pos], non_null_before + 1)[-1])
        return _plain_value(_page_bytes(buf, chunk.dictionary, chunk.codec), 0, index)
    raise Unsupported(f"encoding {page.encoding}")


def _unmap(item) -> None:
    view, mapped, _ = item
    try:
        view.release()
        mapped.close()
    except BufferError:  # a page slice still alive: the garbage collector unmaps it later
        pass


class PageReader:
    """`value(path, group, row, leaf)`: one row of a binary leaf column (e.g. `observation.images.image.bytes`) of a
    row group; None when the row is null or the layout is unsupported (then read the row group). Files are
    memory-mapped on first use and kept in a fork-safe LRU (reader.py); the page indices are plain data."""

    def __init__(self, open_files: int = 32):
        self.chunks: dict = {}  # (path, group, leaf) -> ColumnChunk, or None when unsupported
        self.files = ForkSafeCache(open_files, close=_unmap)

    def _file(self, path: Path):
        def open_map():
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return memoryview(mapped), mapped, pq.ParquetFile(path).metadata

        buf, _, meta = self.files.get(path, open_map)
        return buf, meta

    def value(self, path: Path, group: int, row: int, leaf: str) -> bytes | None:
        key = (path, group, leaf)
        if key in self.chunks and self.chunks[key] is None:
            return None
        try:
            buf, meta = self._file(path)
            chunk = self.chunks.get(key)
            if chunk is None:
                names = [meta.schema.column(j).path for j in range(meta.num_columns)]
                if leaf not in names:
                    raise Unsupported(f"no column {leaf}")
                chunk = self.chunks[key] = index_chunk(buf, meta, group, names.index(leaf))
            return read_value(buf, chunk, row)
        except (Unsupported, IndexError, KeyError, ValueError, OSError, pa.ArrowException):
            self.chunks[key] = None
            return None
