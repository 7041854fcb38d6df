"""Reading a dataset's source rows: from the Hugging Face hub (``datasets``) or a local jsonl/parquet file.

Every row comes with ``where`` (file and line/row, or hub id and row), so any error can name it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCAL_SUFFIXES", "DataError", "hub_rows", "local_file", "local_rows"]

LOCAL_SUFFIXES = (".jsonl", ".parquet")


class DataError(ValueError):
    """A bad input (missing file or column, unparsable or unusable row); the message names the file and row."""


def local_file(from_dir: Path, stem: str) -> Path:
    """``from_dir/stem.jsonl`` or ``from_dir/stem.parquet`` (exactly one of them must exist)."""
    found = [from_dir / f"{stem}{suffix}" for suffix in LOCAL_SUFFIXES if (from_dir / f"{stem}{suffix}").is_file()]
    if not found:
        raise DataError(f"{from_dir / stem}.jsonl: missing file (or {stem}.parquet) for dataset {stem!r}")
    if len(found) > 1:
        raise DataError(f"{found[0]}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0]


def local_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of a jsonl (one JSON object a line; blank lines skipped) or parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable parquet file ({err})") from err
        for number, row in enumerate(rows):
            yield f"{path} row {number}", row
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def hub_rows(hub_id: str, config: str | None, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of a Hugging Face hub dataset split."""
    from datasets import load_dataset

    label = f"{hub_id}{f' ({config})' if config else ''} [{split}]"
    try:
        dataset = load_dataset(hub_id, config, split=split)
    except Exception as err:  # network, authentication (GPQA is gated), missing config: all end the same way
        raise DataError(f"{label}: cannot load from the Hugging Face hub ({err}); see --from-dir") from err
    for number, row in enumerate(dataset):
        yield f"{label} row {number}", dict(row)
