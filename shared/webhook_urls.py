"""Where a webhook may be delivered: checked when a subscription is made (422 naming
``url``) and again before every delivery (a host's address may change).

``https`` only, unless the operator allows ``http`` (``TORCHQUEUE_WEBHOOK_ALLOW_HTTP``);
no credentials in the URL; a host that resolves to a loopback, link-local, private,
reserved, multicast or unspecified address (a metadata service, a database on the
cluster's network) is refused unless it is listed in ``TORCHQUEUE_WEBHOOK_ALLOWED_HOSTS``
(host names or addresses, comma-separated). Redirects are never followed by the sender.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from shared.config import get_settings
from shared.errors import InvalidSpec
from shared.url_sources import addresses, is_internal

FIELD = "url"


def allowed_hosts() -> set[str]:
    return {h.strip().lower() for h in get_settings().webhook_allowed_hosts.split(",") if h.strip()}


def check_webhook_url(url: str) -> str:
    """``url`` if a webhook may be sent there; else InvalidSpec naming ``url``."""
    try:
        split = urlsplit(url.strip())
        host = (split.hostname or "").lower()
        split.port  # noqa: B018  a port that is not a number raises here
    except ValueError as exc:
        raise InvalidSpec(f"{url!r} is not a URL: {exc}", field=FIELD) from None
    schemes = ("https", "http") if get_settings().webhook_allow_http else ("https",)
    if split.scheme not in schemes:
        raise InvalidSpec(
            f"a webhook URL is {' or '.join(schemes)}, not {split.scheme or 'none'}"
            + ("" if "http" in schemes else " (TORCHQUEUE_WEBHOOK_ALLOW_HTTP allows http)"),
            field=FIELD,
        )
    if not host:
        raise InvalidSpec("a webhook URL names a host", field=FIELD)
    if split.username or split.password:
        raise InvalidSpec("a webhook URL carries no credentials", field=FIELD)
    listed = allowed_hosts()
    if host in listed:
        return url.strip()
    for address in addresses(host, FIELD):
        if is_internal(address) and address.split("%", 1)[0] not in listed:
            raise InvalidSpec(
                f"{host} resolves to {address}, an internal address: webhooks are not sent "
                "there unless TORCHQUEUE_WEBHOOK_ALLOWED_HOSTS lists it",
                field=FIELD,
            )
    return url.strip()
