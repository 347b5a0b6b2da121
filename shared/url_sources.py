"""Which URLs a data set may be registered from, and read from: the one check, made by the
API when a URL is registered and by the worker again before every read (a host's address
may have changed since).

A URL is accepted only under a prefix the operator listed (``TORCHQUEUE_DATASET_URL_PREFIXES``),
compared scheme, host and whole path segments (``s3://team`` does not admit
``s3://team-evil/``), after the path is normalised and with no ``..`` segment anywhere.
Beyond that, two kinds of URL reach what the operator may not have meant to expose, and are
refused unless a prefix names them outright:

- ``file://``: the worker's own disk; only under a listed ``file://`` prefix;
- ``http(s)`` whose host resolves to a loopback, link-local, private, reserved, multicast or
  unspecified address (the metadata service at 169.254.169.254, a database on 10.0.0.7):
  only where the matching prefix names that host as an IP literal
  (``http://10.0.0.5:9000/``), which says the operator means that address.

Credentials never go in a URL (``user:pass@``): they would be stored and shown with the
data set; the workers' own settings (``TORCHQUEUE_S3_*``) reach S3.
"""

from __future__ import annotations

import ipaddress
import posixpath
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from shared.errors import InvalidSpec

FIELD = "url"
_HTTP = ("http", "https")


@dataclass(frozen=True)
class _Parts:
    scheme: str
    netloc: str  # host[:port], lower case
    host: str
    path: str  # normalised, starting with "/"
    query: str

    def url(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.netloc}{self.path}{query}"

    def under(self, prefix: _Parts) -> bool:
        if (self.scheme, self.netloc) != (prefix.scheme, prefix.netloc):
            return False
        base = prefix.path.rstrip("/")
        return self.path == prefix.path or self.path.startswith(base + "/")


def _parts(url: str, what: str) -> _Parts:
    try:
        split = urlsplit(url.strip())
        host = split.hostname or ""
        port = split.port
    except ValueError as exc:
        raise InvalidSpec(f"{what} {url!r} is not a URL: {exc}", field=FIELD) from None
    scheme = split.scheme.lower()
    if not scheme or "://" not in url:
        raise InvalidSpec(
            f"{what} {url!r} has no scheme; give a whole URL such as s3://bucket/path.parquet",
            field=FIELD,
        )
    if split.username is not None or split.password is not None:
        raise InvalidSpec(
            f"{what} carries credentials (user:password@); the workers reach the store with "
            "their own settings, and a URL is stored and shown as it is",
            field=FIELD,
        )
    if split.fragment:
        raise InvalidSpec(f"{what} {url!r} has a fragment (#…), which names no file", field=FIELD)
    raw = split.path or "/"
    if "\\" in raw or any(unquote(s) in ("..", ".") for s in raw.split("/")):
        raise InvalidSpec(
            f"{what} {url!r} has a '.' or '..' segment; give the path as it is", field=FIELD
        )
    path = posixpath.normpath(raw) + ("/" if raw.endswith("/") and raw != "/" else "")
    path = "/" + path.lstrip("/")
    netloc = host.lower() if ":" not in host else f"[{host.lower()}]"
    if port is not None:
        netloc += f":{port}"
    return _Parts(scheme, netloc, host.lower(), path, split.query)


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_internal(address: str) -> bool:
    """Loopback, link-local, private, reserved, multicast or unspecified: not the open
    internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def addresses(host: str, field: str = FIELD) -> list[str]:
    """Every address ``host`` resolves to; InvalidSpec naming ``field`` when it does not."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidSpec(f"the URL's host {host!r} does not resolve: {exc}", field=field) from None
    return [str(info[4][0]) for info in infos]


def check_url(url: str, prefixes: list[str]) -> str:
    """``url`` normalised, if the rules above admit it under one of ``prefixes``; else
    ``InvalidSpec`` (field ``url``) saying which rule refused it."""
    if not prefixes:
        raise InvalidSpec(
            "data sets from URLs are off on this system: the operator turns them on by "
            "listing the prefixes they may come from in TORCHQUEUE_DATASET_URL_PREFIXES "
            "(comma-separated, e.g. s3://team-data/)",
            field=FIELD,
        )
    parts = _parts(url, "the URL")
    listed = [_parts(p, "the listed prefix") for p in prefixes]
    match = next((p for p in listed if parts.under(p)), None)
    if match is None:
        if parts.scheme == "file":
            raise InvalidSpec(
                "file:// URLs read the worker's own disk, and are refused unless the "
                "operator lists a file:// prefix that holds them",
                field=FIELD,
            )
        shown = ", ".join(prefixes)
        raise InvalidSpec(
            f"{parts.url()} is under none of the allowed prefixes: {shown}", field=FIELD
        )
    if parts.path.endswith("/"):
        raise InvalidSpec(f"{parts.url()} names a folder; name the file", field=FIELD)
    if parts.scheme in _HTTP and not _ip_literal(match.host):
        for address in addresses(parts.host):
            if is_internal(address):
                raise InvalidSpec(
                    f"the host {parts.host!r} resolves to {address}, a loopback, link-local, "
                    "private or reserved address; the operator allows such an address by "
                    "listing it as an IP literal (http://10.0.0.5:9000/)",
                    field=FIELD,
                )
    return parts.url()
