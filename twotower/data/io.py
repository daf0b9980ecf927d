"""Reading CSV files, Parquet files and directories of Parquet parts in bounded-memory chunks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from twotower.data.schema import DataValidationError, resolve_columns

DEFAULT_CHUNKSIZE = 1_000_000
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _parts(path: Path) -> list[Path]:
    if not path.exists():
        raise DataValidationError(f"{path}: no such file or directory")
    if path.is_dir():
        parts = sorted(
            p for p in path.rglob("*") if p.suffix.lower() in (*_PARQUET_SUFFIXES, ".csv") and p.is_file()
        )
        if not parts:
            raise DataValidationError(f"{path}: directory holds no .parquet or .csv files")
        return parts
    return [path]


def _columns(part: Path) -> list[str]:
    if part.suffix.lower() in _PARQUET_SUFFIXES:
        return list(pq.read_schema(part).names)
    try:
        return list(pd.read_csv(part, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{part}: file is empty (expected a header row)") from None


def read_table(
    path: str | Path,
    required: Mapping[str, Sequence[str]],
    optional: Mapping[str, Sequence[str]] | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
) -> Iterator[pd.DataFrame]:
    """Yield chunks of at most `chunksize` rows with columns renamed to their canonical names.

    `path` is a CSV file, a Parquet file, or a directory of Parquet (or CSV) parts, as Spark writes them.
    Only the needed columns are read. CSV values are read as strings so that chunks agree on types.
    """
    if chunksize <= 0:
        raise ValueError(f"chunksize must be positive, got {chunksize}")
    path = Path(path)
    yielded_rows = 0
    for part in _parts(path):
        rename = resolve_columns(_columns(part), required, part, optional)
        if part.suffix.lower() in _PARQUET_SUFFIXES:
            parquet = pq.ParquetFile(part)
            for batch in parquet.iter_batches(batch_size=chunksize, columns=list(rename)):
                chunk = batch.to_pandas().rename(columns=rename)
                yielded_rows += len(chunk)
                yield chunk
        else:
            # keep_default_na=False: a title "NA" or "null" is text, not a missing value; only "" is missing.
            reader = pd.read_csv(
                part, usecols=list(rename), dtype=str, chunksize=chunksize, keep_default_na=False
            )
            for chunk in reader:
                chunk = chunk.rename(columns=rename).replace("", None)
                yielded_rows += len(chunk)
                yield chunk
    if yielded_rows == 0:
        raise DataValidationError(f"{path}: no data rows (only a header, or empty Parquet)")
