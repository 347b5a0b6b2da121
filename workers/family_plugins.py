"""Finding the model families this worker offers: every entry point of the group
``torchqueue.families`` (torchqueue's own built-ins, registered there like any plugin's),
each naming a family's torch-free half (a ``shared.families.Family``). Torch-free, so
that the Celery parent, which never imports torch, can report them and choose its queues.

A plugin that cannot be loaded (an import error, not a ``Family``, a name that is taken
or not allowed) is logged with the reason and left out; so is one whose torch half does
not import (``check_builders``, in a child process, since the parent keeps torch out).
The worker then starts without it, and its jobs wait for a worker that has it.
``TORCHQUEUE_FAMILY_PLUGINS`` chooses which installed plugins a worker loads: ``*`` (all),
a comma list of distribution names, or ``none``; torchqueue's own families always load.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata

from shared.families import (
    ENTRY_POINT_GROUP,
    FAMILIES,
    FAMILY_NAME_PATTERN,
    OWN_PACKAGE,
    Family,
    FamilyInfo,
)

log = logging.getLogger(__name__)
# How long a child may take to import the plugins' torch halves (torch itself included).
CHECK_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Offered:
    """A family this worker loaded, and the distribution that registered it."""

    family: Family
    package: str
    version: str

    def info(self) -> FamilyInfo:
        return self.family.describe(self.package, self.version)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed(package: str, setting: str) -> bool:
    """Whether ``TORCHQUEUE_FAMILY_PLUGINS`` (``setting``) lets this worker load the
    families of the distribution ``package``."""
    if _canonical(package) == OWN_PACKAGE:
        return True
    chosen = {_canonical(p) for p in setting.split(",") if p.strip()}
    if chosen == {"none"}:
        return False
    return "*" in chosen or _canonical(package) in chosen


def _refusal(
    ep: metadata.EntryPoint, package: str, found: object, taken: dict[str, Offered]
) -> str | None:
    """Why a loaded entry point cannot be offered, or None."""
    if not isinstance(found, Family):
        return f"{ep.value} is a {type(found).__name__}, not a shared.families.Family"
    if found.name != ep.name:
        return f"the entry point is called '{ep.name}' but its family '{found.name}'"
    if not re.match(FAMILY_NAME_PATTERN, found.name):
        return "a family's name is lower-case letters, digits and '_', at most 32"
    own = _canonical(package) == OWN_PACKAGE
    if found.name in FAMILIES and not own:
        return f"'{found.name}' is a built-in family's name"
    if found.name in taken and taken[found.name].family is not found:
        return f"family '{found.name}' is registered by {taken[found.name].package} already"
    return None


def _entry_points() -> Iterator[tuple[metadata.Distribution, metadata.EntryPoint]]:
    """Every entry point of the group, from every copy of each distribution's metadata:
    ``entry_points()`` reads only the first copy on the path, and a source tree's stale
    ``*.egg-info`` (an editable install leaves one) would hide the installed one's."""
    seen = set()
    for dist in metadata.distributions():
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            key = (_canonical(dist.name), ep.name, ep.value)
            if key not in seen:
                seen.add(key)
                yield dist, ep


def discover(setting: str = "*") -> dict[str, Offered]:
    """The families this process can offer, by name; problems are logged, not raised."""
    offered: dict[str, Offered] = {}
    for dist, ep in _entry_points():
        package = dist.name
        if not allowed(package, setting):
            log.info("family %s of %s not loaded: TORCHQUEUE_FAMILY_PLUGINS", ep.name, package)
            continue
        try:
            found = ep.load()
        except Exception as exc:
            log.error("family %s of %s could not be loaded: %r", ep.name, package, exc)
            continue
        why = _refusal(ep, package, found, offered)
        if why is not None:
            log.error("family %s of %s refused: %s", ep.name, package, why)
            continue
        offered[found.name] = Offered(found, package, dist.version)
    missing = sorted(set(FAMILIES) - set(offered))
    if missing:
        # torchqueue's own entry points are missing only from a stale or partial install.
        log.error("built-in families not registered (reinstall torchqueue): %s", missing)
        for name in missing:
            offered[name] = Offered(FAMILIES[name], OWN_PACKAGE, "")
    return offered


def _module(family: Family) -> str:
    return family.builder.partition(":")[0]


# Run in the child: import each module named on the command line, print what failed.
_CHECK = """
import importlib, json, sys
failed = {}
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
    except BaseException as exc:
        failed[module] = repr(exc)
print(json.dumps(failed))
"""


def check_builders(offered: dict[str, Offered]) -> dict[str, Offered]:
    """The families whose torch half imports, tried in one child process (the caller
    keeps torch out of its own); a plugin whose torch half fails is logged and left out."""
    modules = sorted({_module(o.family) for o in offered.values() if o.package != OWN_PACKAGE})
    if not modules:
        return offered
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHECK, *modules],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_SECONDS,
            check=False,
        )
        failed: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        log.error("the plugins' torch halves could not be checked (%r): none offered", exc)
        failed = dict.fromkeys(modules, "not checked")
    kept = {}
    for name, o in offered.items():
        why = failed.get(_module(o.family))
        if why is None:
            kept[name] = o
        else:
            log.error(
                "family %s of %s left out: %s does not import: %s",
                name,
                o.package,
                o.family.builder,
                why,
            )
    return kept


def load_builder(family: Family) -> object:
    """The family's torch half, imported from ``builder`` (``module:attribute``); a class
    is made with no arguments."""
    module, _, attribute = family.builder.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    return found() if isinstance(found, type) else found
