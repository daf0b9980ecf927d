"""Reading CSV files, Parquet files and directories of Parquet parts in bounded-memory chunks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from twotower.data.schema import DataValidationError, resolve_columns

DEFAULT_CHUNKSIZE = 1_000_000
DEFAULT_ENCODING = "utf-8"
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


def _guess_encoding(part: Path) -> str:
    """The likeliest encoding of a CSV that is not valid in the one asked for (for the error message)."""
    with open(part, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"  # with a byte-order mark: Excel's "Unicode text" export
    sample = head[:400]
    if sample.count(b"\x00") > len(sample) // 4:  # every other byte NUL: UTF-16 without a byte-order mark
        return "utf-16-le" if sample[1::2].count(b"\x00") > sample[::2].count(b"\x00") else "utf-16-be"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as e:
        if e.start > len(head) - 4:  # only cut mid-character by the 64 KiB window
            return "utf-8"
    return "cp1256"  # Windows Arabic: what Excel on an Arabic Windows writes by default


def _decode_error(part: Path, encoding: str, error: Exception) -> DataValidationError:
    if isinstance(error, LookupError):
        return DataValidationError(f"{part}: unknown encoding {encoding!r}; use e.g. data.encoding=utf-8")
    guess = _guess_encoding(part)
    hint = f"it looks like {guess}: set data.encoding={guess}" if guess != encoding else "check the export"
    return DataValidationError(
        f"{part}: not valid {encoding} text ({error}); {hint}. Arabic exports are often cp1256 (Windows "
        "Arabic) or utf-16; re-save the file as UTF-8 or set data.encoding to the file's encoding."
    )


def _columns(part: Path, encoding: str) -> list[str]:
    if part.suffix.lower() in _PARQUET_SUFFIXES:
        return list(pq.read_schema(part).names)
    try:
        columns = [str(c) for c in pd.read_csv(part, nrows=0, encoding=encoding).columns]
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{part}: file is empty (expected a header row)") from None
    except (UnicodeError, LookupError) as e:
        raise _decode_error(part, encoding, e) from None
    if any("\x00" in c for c in columns):  # UTF-16 read as UTF-8 "decodes": NUL between the letters
        raise _decode_error(part, encoding, UnicodeError("NUL bytes between the header's letters"))
    return columns


def read_table(
    path: str | Path,
    required: Mapping[str, Sequence[str]],
    optional: Mapping[str, Sequence[str]] | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    encoding: str = DEFAULT_ENCODING,
) -> Iterator[pd.DataFrame]:
    """Yield chunks of at most `chunksize` rows with columns renamed to their canonical names.

    `path` is a CSV file, a Parquet file, or a directory of Parquet (or CSV) parts, as Spark writes them.
    Only the needed columns are read. CSV values are read as strings so that chunks agree on types.
    `encoding` applies to CSV files (Parquet is UTF-8 by definition); a file that is not valid in it raises
    DataValidationError naming the file and the likely encoding.
    """
    if chunksize <= 0:
        raise ValueError(f"chunksize must be positive, got {chunksize}")
    path = Path(path)
    yielded_rows = 0
    for part in _parts(path):
        rename = resolve_columns(_columns(part, encoding), required, part, optional)
        if part.suffix.lower() in _PARQUET_SUFFIXES:
            parquet = pq.ParquetFile(part)
            for batch in parquet.iter_batches(batch_size=chunksize, columns=list(rename)):
                chunk = batch.to_pandas().rename(columns=rename)
                yielded_rows += len(chunk)
                yield chunk
        else:
            # keep_default_na=False: a title "NA" or "null" is text, not a missing value; only "" is missing.
            reader = pd.read_csv(
                part,
                usecols=list(rename),
                dtype=str,
                chunksize=chunksize,
                keep_default_na=False,
                encoding=encoding,
            )
            while True:
                try:  # a bad byte can sit far below a clean header
                    chunk = next(reader)
                except StopIteration:
                    break
                except UnicodeError as e:
                    raise _decode_error(part, encoding, e) from None
                chunk = chunk.rename(columns=rename).replace("", None)
                yielded_rows += len(chunk)
                yield chunk
    if yielded_rows == 0:
        raise DataValidationError(f"{path}: no data rows (only a header, or empty Parquet)")
