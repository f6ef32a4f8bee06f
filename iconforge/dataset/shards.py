"""Parquet shards of an image + text dataset (the logo datasets) -> one file per row's image.

Each shard is fetched (downloaded with resume, or a local file), checked to be parquet with
the configured columns, and streamed one batch of rows at a time: a row's image bytes become
<shard>/<row>.img under the output folder (an SVG or HTML row is refused later, by the raster
decoder, never parsed), its text and its image's `path` field go to the manifest. A row's
`path` is recorded, never opened.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from iconforge.dataset import archive
from iconforge.errors import StageError

FIELDS = ["path", "shard", "row", "bytes", "sha256", "image_path", "text"]
BATCH_ROWS = 256  # rows in memory at once (pyarrow also holds the row group being read)
MAX_TEXT_CHARS = 10_000  # kept per row, +1 so that filter sees a longer text is too long
# A row group is read whole: a larger one is refused, not read (the hub's image shards: 100 rows, tens of MB).
MAX_ROW_GROUP_BYTES = 1 << 30
MAGIC = b"PAR1"


class ShardError(StageError):
    """A shard is missing, unreachable, not parquet or lacks the columns; the message names it."""


def source_record(recorded: list[dict]) -> dict:
    """data/source.json after a parquet fetch: the shards' names, row counts and sha256."""
    return {"source": "parquet", "shards": recorded}


def is_parquet(source: dict) -> bool:
    """Whether data/source.json describes parquet shards (source_record) rather than the bioicons archive."""
    return source.get("source") == "parquet"


def shard_name(url: str) -> str:
    """A folder name for the shard's rows: its file stem, made safe."""
    stem = PurePosixPath(urlparse(url).path).name.removesuffix(".parquet") or "shard"
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "shard"


def get(url: str, sha256: str, cache: Path, timeout_s: float, retries: int) -> Path:
    """The shard as a local file: a download lands in `cache` (kept, so a partial one resumes and a
    verified one is not fetched again), a file:// URL or path is used in place."""
    name = hashlib.sha256(url.encode()).hexdigest()[:16] + ".parquet"
    if sha256 and (cache / name).is_file() and archive.sha256_of(cache / name) == sha256.lower():
        return cache / name
    path = archive.locate(url, cache, timeout_s, retries, name=name, what="shard")
    if sha256:
        archive.verify_sha256(path, sha256, label=url)
    return path


def _type_error(label: str, column: str, key: str, got: pa.DataType, expected: str) -> ShardError:
    return ShardError(f"{label}: column {column!r} ({key}) is {got}, expected {expected}")


def open_checked(path: Path, label: str, image_column: str, text_column: str) -> pq.ParquetFile:
    """The shard opened for streaming, or ShardError naming it and why it is refused."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
        f.seek(max(size - 4, 0))
        tail = f.read(4)
    if not head.startswith(MAGIC):
        raise ShardError(f"{label}: not a parquet file (starts with {head[:32]!r}; an HTML error page?)")
    if size < 12 or tail != MAGIC:
        raise ShardError(f"{label}: truncated parquet file ({size} bytes, no footer)")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"{label}: unreadable parquet: {e}") from None
    schema = pf.schema_arrow
    for column, key in ((image_column, "fetch.image_column"), (text_column, "fetch.text_column")):
        found = len(schema.get_all_field_indices(column))
        if found != 1:
            raise ShardError(f"{label}: {'no column' if not found else f'{found} columns named'} {column!r} ({key}); "
                             f"columns: {', '.join(schema.names)}")
    image = schema.field(image_column).type
    if pa.types.is_struct(image):
        data = image.field("bytes").type if image.get_field_index("bytes") >= 0 else pa.null()
        where = image.field("path").type if image.get_field_index("path") >= 0 else pa.string()
        if not (pa.types.is_binary(data) or pa.types.is_large_binary(data)) or not (
                pa.types.is_string(where) or pa.types.is_large_string(where) or pa.types.is_null(where)):
            raise _type_error(label, image_column, "fetch.image_column", image, "struct<bytes: binary, path: string>")
    elif not (pa.types.is_binary(image) or pa.types.is_large_binary(image)):
        raise _type_error(label, image_column, "fetch.image_column", image,
                          "struct<bytes: binary, path: string> or binary")
    text = schema.field(text_column).type
    if not (pa.types.is_string(text) or pa.types.is_large_string(text)):
        raise _type_error(label, text_column, "fetch.text_column", text, "string")
    for g in range(pf.num_row_groups):
        size = pf.metadata.row_group(g).total_byte_size  # uncompressed: what reading it would hold
        if size > MAX_ROW_GROUP_BYTES:
            raise ShardError(f"{label}: row group {g} holds {size} bytes uncompressed, over the "
                             f"{MAX_ROW_GROUP_BYTES} read at once; rewrite the shard with smaller row groups")
    return pf


def _image_fields(column: pa.Array) -> tuple[list, list]:
    """(bytes or None, path or None) per row of the image column."""
    if not pa.types.is_struct(column.type):
        return column.to_pylist(), [None] * len(column)
    valid = column.is_valid().to_pylist()
    data = column.field("bytes").to_pylist()
    where = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else [None] * len(column)
    return ([d if ok else None for d, ok in zip(data, valid)], [p if ok else None for p, ok in zip(where, valid)])


def extract(pf: pq.ParquetFile, label: str, name: str, out: Path, image_column: str,
            text_column: str) -> list[dict]:
    """Write each row's image bytes to out/<name>/<row>.img; manifest rows (FIELDS) for every row."""
    (out / name).mkdir(parents=True, exist_ok=False)
    rows, n = [], 0
    try:
        # One row group at a time, single-threaded: pyarrow's default reader buffers far ahead
        # (the whole 200 MB test shard). Memory is then bounded by one row group (`datasets`
        # writes image shards in groups of 100 rows); pyarrow's pool keeps freed groups' pages
        # unless told to give them back.
        def batches():
            for g in range(pf.num_row_groups):
                yield from pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], columns=[image_column, text_column],
                                           use_threads=False)
                pa.default_memory_pool().release_unused()

        for batch in tqdm(batches(), desc=f"extract {name}", unit=" batches"):
            images, where = _image_fields(batch.column(image_column))
            for data, image_path, text in zip(images, where, batch.column(text_column).to_pylist()):
                rel = f"{name}/{n:07d}.img"
                if data:
                    (out / rel).write_bytes(data)
                rows.append({"path": rel, "shard": name, "row": n, "bytes": len(data or b""),
                             "sha256": hashlib.sha256(data).hexdigest() if data else "",
                             "image_path": (image_path or "").replace("\0", "\ufffd")[:1000],
                             "text": (text or "").replace("\0", "\ufffd")[:MAX_TEXT_CHARS + 1]})
                n += 1
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"{label}: corrupt parquet at row {n}: {e}") from None
    return rows
