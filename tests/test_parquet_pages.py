"""Image rows read from their one parquet data page (tinyvla/data/pages.py) equal what pyarrow reads from the whole
row group: on the committed fixtures (lerobot's and tinyvla's writers) and on files pyarrow writes with each layout
the page reader claims (PLAIN or dictionary, page v1 / v2, several codecs, many pages per chunk, nulls)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyvla.data.pages import PageReader
from tinyvla.data.parquet import RowGroups

FIX = Path(__file__).parent / "fixtures"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def every_bytes_cell(path: Path):
    """(group, row in group, leaf, the bytes pyarrow reads) for every image cell of a parquet file."""
    f = pq.ParquetFile(path)
    leaves = [f.metadata.schema.column(j).path for j in range(f.metadata.num_columns)]
    for g in range(f.metadata.num_row_groups):
        table = f.read_row_group(g)
        for leaf in (p for p in leaves if p.endswith(".bytes")):
            for r, cell in enumerate(table.column(leaf[: -len(".bytes")]).to_pylist()):
                yield g, r, leaf, None if cell is None else cell["bytes"]


@pytest.mark.parametrize("root", ["libero_v30_tiny", "libero_v20_tiny"])
def test_fixture_rows_equal_pyarrow(root):
    pages, n = PageReader(), 0
    for path in sorted((FIX / root / "data").rglob("*.parquet")):
        for g, r, leaf, want in every_bytes_cell(path):
            assert pages.value(path, g, r, leaf) == want
            n += 1
    assert n > 20
    assert all(chunk is not None for chunk in pages.chunks.values())  # read from pages, not a fallback


def random_cells(rng, n):
    """PNG-like cells of varied sizes, some null bytes (a path instead), some null cells."""
    cells = []
    for i in range(n):
        if i % 7 == 3:
            cells.append({"bytes": None, "path": f"images/{i}.png"})
        elif i % 11 == 5:
            cells.append(None)
        else:
            cells.append({"bytes": rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes(),
                          "path": None})
    return cells


@pytest.mark.parametrize("options", [
    {"compression": "snappy"},  # pyarrow's default: a dictionary page + indices
    {"compression": "snappy", "use_dictionary": False, "data_page_size": 4096},  # PLAIN, many pages per chunk
    {"compression": "zstd", "use_dictionary": False, "data_page_version": "2.0", "data_page_size": 8192},
    {"compression": "gzip", "data_page_version": "2.0", "dictionary_pagesize_limit": 10000},  # dict, then PLAIN
    {"compression": "none", "use_dictionary": False},
])
def test_written_layouts_equal_pyarrow(tmp_path, options):
    rng = np.random.default_rng(0)
    cells = random_cells(rng, 120)
    table = pa.table({"image": pa.array(cells, IMAGE), "index": pa.array(np.arange(120))})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=50, **options)
    pages, served = PageReader(), 0
    for g, r, leaf, want in every_bytes_cell(path):
        got = pages.value(path, g, r, leaf)
        assert got == want, (g, r)
        served += got is not None
    assert served == sum(1 for c in cells if c and c["bytes"])
    # the reader's image cells: page bytes where present, the stored cell (its path, or None) otherwise
    rows = RowGroups()
    for i in (0, 3, 5, 57, 119):
        assert rows.image_cell(path, i, "image") == (cells[i] if cells[i] is None or cells[i]["bytes"] is None
                                                      else {"bytes": cells[i]["bytes"], "path": None})


def test_unsupported_layout_falls_back(tmp_path):
    """A repeated column (a list of images per row) is not page-readable: None, and RowGroups reads the group."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": pa.array([[b"a", b"b"], [b"c"]], pa.list_(pa.binary()))}), path)
    pages = PageReader()
    assert pages.value(path, 0, 1, "image.list.element") is None
    assert pages.chunks[(path, 0, "image.list.element")] is None  # remembered: the next row goes straight to pyarrow


def test_page_reader_pickles_without_open_files():
    path = sorted((FIX / "libero_v30_tiny" / "data").rglob("*.parquet"))[0]
    pages = PageReader()
    want = pages.value(path, 0, 2, "observation.images.image.bytes")
    clone = pickle.loads(pickle.dumps(pages))
    assert len(clone.files) == 0 and clone.value(path, 0, 2, "observation.images.image.bytes") == want


def test_v2_writer_pages_hold_a_few_frames(tmp_path):
    """tinyvla's v2.0 writer stores PNGs PLAIN in ~1 MB pages: a random read decompresses a page, not the episode."""
    from tinyvla.data.writer import write_lerobot_v2

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)  # noise: ~12 kB a PNG, ~1.2 MB a column
    write_lerobot_v2(tmp_path / "ds", [{"task": "t", "image": frames, "wrist_image": frames[::-1],
                                        "state": np.zeros((100, 8), np.float32),
                                        "actions": rng.normal(size=(100, 7)).astype(np.float32)}], fps=10)
    path = next((tmp_path / "ds" / "data").rglob("*.parquet"))
    pages = PageReader()
    for g, r, leaf, want in every_bytes_cell(path):
        assert pages.value(path, g, r, leaf) == want
    chunk = pages.chunks[(path, 0, "image.bytes")]
    assert chunk.dictionary is None and len(chunk.pages) >= 2
    assert all(p.uncompressed <= (1 << 20) + 8 * 20_000 for p in chunk.pages)  # ~1 MB + one write batch
