"""The formats a data set may be uploaded in, and how a request or a file name says which:
one table for the API, which decides an upload's format, and for the client, which names
it. Nothing here reads a file (``shared.ingest`` does)."""

from __future__ import annotations

from pathlib import PurePosixPath

from shared.errors import InvalidSpec

FORMATS = ("csv", "parquet", "jsonl", "npy", "npz")
# Each format's media type, as the client sends it.
MEDIA_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
    "npy": "application/x-npy",
    "npz": "application/x-npz",
}
# Every media type the API understands (others, application/octet-stream among them, say
# nothing), and every file name suffix.
CONTENT_TYPES = {
    **{media: fmt for fmt, media in MEDIA_TYPES.items()},
    "application/csv": "csv",
    "application/x-parquet": "parquet",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
}
SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".npy": "npy",
    ".npz": "npz",
}


def format_of(fmt: str | None, content_type: str | None, filename: str | None) -> str:
    """The upload's format: an explicit `fmt` (one of FORMATS) wins, else the content type
    (its parameters ignored; ``application/octet-stream`` or any type not listed says
    nothing), else the file name's suffix. Raises InvalidSpec(field="format") when none
    decides."""
    accepted = ", ".join(FORMATS)
    if fmt:
        if fmt.lower() in FORMATS:
            return fmt.lower()
        raise InvalidSpec(f"format {fmt!r} is not one of {accepted}", field="format")
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in CONTENT_TYPES:
        return CONTENT_TYPES[media_type]
    suffix = PurePosixPath(filename or "").suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise InvalidSpec(
        f"the data set's format is not given, and neither its content type nor its file name "
        f"tells it: give a format, one of {accepted}",
        field="format",
    )
