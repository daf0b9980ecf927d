"""Reading CSV files, Parquet files and directories of Parquet parts in bounded-memory chunks."""

from __future__ import annotations

import codecs
import io
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


def _bomless_utf16(head: bytes) -> str | None:
    """The UTF-16 byte order ("utf-16-le", "utf-16-be") of raw bytes without a byte-order mark, else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None
    sample = head[:400]
    even, odd = sample[::2].count(b"\x00"), sample[1::2].count(b"\x00")
    # every other byte NUL (the ASCII header's letters), the bytes between them not: not a run of NULs
    if max(even, odd) > len(sample) // 4 and min(even, odd) < max(even, odd) // 4:
        return "utf-16-le" if odd > even else "utf-16-be"
    return None


def _guess_encoding(part: Path) -> str:
    """The likeliest encoding of a CSV that is not valid in the one asked for (for the error message)."""
    with open(part, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"  # with a byte-order mark: Excel's "Unicode text" export
    if utf16 := _bomless_utf16(head):
        return utf16
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


class _CsvText(io.TextIOBase):
    """A CSV file's decoded text with NUL characters removed, read piecewise as pandas asks for it.

    pandas' C parser ends a field at a NUL before pandas 3.1 ("p\\x001" -> "p", silently), and keeps it from
    3.1 on; handing it text without NULs reads the same on every pandas version. Decoding here (not in
    pandas) also means that one codec, Python's, decides what is valid in `encoding`.
    """

    def __init__(self, part: Path, encoding: str) -> None:
        with open(part, "rb") as f:  # before decoding: UTF-16 read as UTF-8 "decodes" (NUL is valid UTF-8)
            utf16 = _bomless_utf16(f.read(400))
        name = codecs.lookup(encoding).name  # LookupError for an unknown encoding
        if utf16 and name != utf16 and not name.startswith("utf-32"):
            raise UnicodeError("every other byte is NUL")
        # newline="": pandas sees the raw line ends; closed by close() (the reader is used as a context manager)
        self._file = open(part, encoding=encoding, newline="")  # noqa: SIM115

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        while True:
            text = self._file.read(size)
            stripped = text.replace("\x00", "")
            if stripped or not text:  # "" only at the end of the file, never for a piece that was all NULs
                return stripped

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_csv(part: Path, encoding: str) -> _CsvText:
    try:
        return _CsvText(part, encoding)
    except (UnicodeError, LookupError) as e:
        raise _decode_error(part, encoding, e) from None


def _columns(part: Path, encoding: str) -> list[str]:
    if part.suffix.lower() in _PARQUET_SUFFIXES:
        return list(pq.read_schema(part).names)
    with _open_csv(part, encoding) as text:
        try:
            return [str(c) for c in pd.read_csv(text, nrows=0).columns]
        except pd.errors.EmptyDataError:
            raise DataValidationError(f"{part}: file is empty (expected a header row)") from None
        except UnicodeError as e:
            raise _decode_error(part, encoding, e) from None


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
            with _open_csv(part, encoding) as text:
                # keep_default_na=False: a title "NA" or "null" is text, not a missing value; only "" is missing.
                reader = pd.read_csv(
                    text, usecols=list(rename), dtype=str, chunksize=chunksize, keep_default_na=False
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
