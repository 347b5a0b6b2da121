"""URL sources refuse what the operator's allow-list does not name."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from shared.errors import InvalidSpec
from shared.url_sources import check_url

S3 = ["s3://team-data/tables/"]


def refused(url: str, prefixes: list[str]) -> str:
    with pytest.raises(InvalidSpec) as caught:
        check_url(url, prefixes)
    assert caught.value.field == "url"
    return caught.value.detail


def test_no_prefixes_means_off_and_says_how_to_turn_it_on() -> None:
    assert "TORCHQUEUE_DATASET_URL_PREFIXES" in refused("s3://team-data/tables/a.parquet", [])


def test_a_url_under_a_listed_prefix_is_accepted_and_normalised() -> None:
    assert check_url("S3://team-data/tables//a.parquet", S3) == "s3://team-data/tables/a.parquet"
    assert check_url("s3://team-data/tables/2024/a.csv", S3) == "s3://team-data/tables/2024/a.csv"


def test_prefixes_match_whole_segments() -> None:
    assert "none of the allowed prefixes" in refused(
        "s3://team-data-evil/a.parquet", ["s3://team-data"]
    )
    assert "none of the allowed prefixes" in refused("s3://team-data/tablesX/a.parquet", S3)
    assert "none of the allowed prefixes" in refused("gs://team-data/tables/a.parquet", S3)


@pytest.mark.parametrize(
    "url",
    [
        "s3://team-data/tables/../secrets/a.parquet",
        "s3://team-data/tables/%2e%2e/secrets/a.parquet",
        "s3://team-data/tables/./a.parquet",
    ],
)
def test_dot_segments_cannot_escape_the_prefix(url: str) -> None:
    assert "'..'" in refused(url, S3)


def test_credentials_in_a_url_are_refused() -> None:
    assert "credentials" in refused("http://user:pw@example.com/a.csv", ["http://example.com/"])
    assert "credentials" in refused("s3://key@team-data/tables/a.csv", S3)


def test_file_urls_need_a_file_prefix(tmp_path: Any) -> None:
    assert "file://" in refused(f"file://{tmp_path}/a.parquet", S3)
    assert check_url(f"file://{tmp_path}/a.parquet", [f"file://{tmp_path}/"]) == (
        f"file://{tmp_path}/a.parquet"
    )
    assert "file://" in refused("file:///etc/passwd", [f"file://{tmp_path}/"])


def test_http_to_a_name_for_loopback_is_refused() -> None:
    # The prefix names the host by name: the operator did not say that loopback is meant.
    assert "loopback, link-local" in refused(
        "http://localhost/data/a.csv", ["http://localhost/data/"]
    )


def test_an_ip_literal_prefix_allows_its_own_internal_address() -> None:
    url = "http://10.0.0.5:9000/data/a.parquet"
    assert check_url(url, ["http://10.0.0.5:9000/"]) == url
    # ...and only that one.
    assert "none of the allowed" in refused(
        "http://10.0.0.6:9000/data/a.parquet", ["http://10.0.0.5:9000/"]
    )


def test_a_name_that_now_resolves_inside_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public name that was fine when registered, pointed since at the metadata service."""
    real = socket.getaddrinfo

    def answer(address: str) -> Any:
        def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
            if host == "data.example.org":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))]
            return real(host, *args, **kwargs)

        return getaddrinfo

    prefixes = ["https://data.example.org/exports/"]
    url = "https://data.example.org/exports/a.parquet"
    monkeypatch.setattr(socket, "getaddrinfo", answer("93.184.215.14"))
    assert check_url(url, prefixes) == url
    for inside in ("169.254.169.254", "10.1.2.3", "192.168.0.1", "::1", "0.0.0.0", "224.0.0.1"):
        monkeypatch.setattr(socket, "getaddrinfo", answer(inside))
        assert inside in refused(url, prefixes)


def test_a_folder_or_a_non_url_is_refused() -> None:
    assert "folder" in refused("s3://team-data/tables/", S3)
    assert "no scheme" in refused("team-data/tables/a.csv", S3)
