"""Parquet pieces of the LeRobot reader: list columns to numpy, image cells to pixels, row groups on demand."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tinyvla.data.pages import PageReader
from tinyvla.data.reader import ForkSafeCache
from tinyvla.errors import UserError


def column_to_numpy(col: pa.ChunkedArray | pa.Array, name: str = "column") -> np.ndarray:
    """A scalar or (fixed-size) list column -> numpy (N,) or (N, D), without going through Python objects."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise UserError(f"column '{name}' has {col.null_count} missing values; the dataset is incomplete")
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        offsets = col.offsets.to_numpy()
        lengths = np.diff(offsets)
        if len(lengths) and (lengths != lengths[0]).any():
            raise UserError(f"column '{name}' has rows of different lengths; expected one fixed-size vector per frame")
        width = int(lengths[0]) if len(lengths) else 0
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return col.to_numpy(zero_copy_only=False)


def decode_image(cell, where: str, root: Path | None = None) -> np.ndarray:
    """A parquet image struct {bytes, path} (PNG/JPEG bytes, or a path relative to the dataset) -> uint8 (H, W, 3)."""
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else None
    try:
        if data:
            img = Image.open(io.BytesIO(data))
        elif isinstance(cell, dict) and cell.get("path"):
            p = Path(cell["path"])
            img = Image.open(p if p.is_absolute() or root is None else root / p)
        else:
            raise UserError(f"{where}: the image cell is empty (no bytes, no path)")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{where}: cannot decode the image ({type(err).__name__}: {err}); the file is corrupt") \
            from None


def _close_parquet(file: pq.ParquetFile) -> None:
    file.close()


class RowGroups:
    """Rows of parquet files. Image cells come from the one data page holding them (pages.py: ~1 ms for a LIBERO
    PNG), the small columns (state, timestamp) from row groups read memory-mapped and kept in a fork-safe LRU keyed by
    (file, row group, columns). A row group is the smallest unit pyarrow reads (lerobot writes ~100 frames, ~20 MB of
    PNG, per group), so where a page read is not possible an image costs a group read per miss; each LRU holds about
    `cache_mb` of groups per process.

    The files stay open (memory-mapped) between misses: opening one per miss maps it afresh and page-faults every byte
    of the group again, which made a miss ~3x dearer (30 vs 10 ms for two 10 MB PNG columns, bench_data_throughput)."""

    def __init__(self, cache_mb: int = 256, open_files: int = 8):
        self.cache_mb = cache_mb
        self.tables = ForkSafeCache(4)  # the small columns (state, timestamp)
        self.image_tables = ForkSafeCache(4)  # image columns, where a page read is not possible
        self.files = ForkSafeCache(open_files, close=_close_parquet)
        self.pages = PageReader()
        self.starts: dict[Path, np.ndarray] = {}

    def _group(self, cache: ForkSafeCache, path: Path, group: int, columns: list[str]) -> pa.Table:
        def read():
            file = self.files.get(path, lambda: pq.ParquetFile(path, memory_map=True))
            table = file.read_row_group(group, columns=columns)
            if len(cache) == 0:  # size the LRU by the first group's bytes
                cache.size = max(4, int(self.cache_mb * 1e6 // max(1, table.nbytes)))
            return table

        return cache.get((path, group, tuple(columns)), read)

    def _locate(self, path: Path, row: int) -> tuple[int, int]:
        """File row -> (row group, row within it)."""
        starts = self.starts.get(path)
        if starts is None:
            md = pq.ParquetFile(path).metadata
            starts = self.starts[path] = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
        group = int(np.searchsorted(starts, row, side="right") - 1)
        return group, row - int(starts[group])

    def row(self, path: Path, row: int, columns: list[str]) -> tuple[pa.Table, int]:
        group, local = self._locate(path, row)
        return self._group(self.tables, path, group, columns), local

    def image_cell(self, path: Path, row: int, column: str):
        """An image column's cell {bytes, path} at `row`: from the one data page holding its bytes when the layout
        allows (pages.py), else from the cached row group."""
        group, local = self._locate(path, row)
        data = self.pages.value(path, group, local, f"{column}.bytes")
        if data is not None:
            return {"bytes": data, "path": None}
        return self._group(self.image_tables, path, group, [column]).column(column)[local].as_py()
