"""``torchqueue families``: the model families a training job may name, and the help of
``train --family``, both read from the API (``GET /v1/families``), which knows the
plugins' families the workers reported."""

from __future__ import annotations

import json
from typing import Any

import click
import httpx

from api.client import ApiError, Client

# How long ``--help`` waits for the API before it lists the built-in families alone.
HELP_TIMEOUT_SECONDS = 1.0


def _pools(family: dict[str, Any]) -> str:
    pools = family.get("pools") or {}
    return ", ".join(f"{p} ({'+'.join(kinds)})" for p, kinds in sorted(pools.items())) or "-"


def _limits(prop: dict[str, Any]) -> str:
    """A parameter's type and limits, from its JSON Schema: ``integer 1..4096``,
    ``number 0.0..<1.0`` (``<``: the end itself is refused), ``list of integer 1..8192,
    at most 16``."""
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    kind = prop.get("type") or "|".join(
        str(o.get("type", "?")) for o in prop.get("anyOf", []) if isinstance(o, dict)
    )
    if kind == "array":
        items = prop.get("items")
        most = f", at most {prop['maxItems']}" if "maxItems" in prop else ""
        return f"list of {_limits(items) if isinstance(items, dict) else 'any'}{most}"
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    if low is None and high is None:
        return str(kind or "any")
    above = ">" if "exclusiveMinimum" in prop else ""
    below = "<" if "exclusiveMaximum" in prop else ""
    return f"{kind} {above}{'' if low is None else low}..{below}{'' if high is None else high}"


def _origin(family: dict[str, Any]) -> str:
    return "built-in" if family["builtin"] else f"{family['package']} {family['version']}"


def render_family(family: dict[str, Any]) -> str:
    """One family in full: what it is, and each parameter with its default and limits."""
    lines = [
        f"{family['name']}: {family['description']}",
        f"  input: {family['input']}   tasks: {', '.join(family['tasks'])}   "
        f"from: {_origin(family)}",
        f"  pools: {_pools(family)}",
        "  parameters:",
    ]
    props = family["params"].get("properties", {})
    for name, prop in props.items():
        default = json.dumps(family["defaults"].get(name)) if name in family["defaults"] else "-"
        about = f"  {prop['description']}" if prop.get("description") else ""
        lines.append(f"    {name:18} {default:12} {_limits(prop)}{about}")
    return "\n".join(lines)


@click.command("families")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="the API's answer as JSON")
@click.pass_context
def families(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """The model families a training job may name (built-in, and the plugins' that
    workers reported), with their parameters and the pools that offer them."""
    try:
        found = _fetch(ctx)
    except ApiError as exc:
        raise click.ClickException(exc.detail) from None
    if name is not None:
        if name not in found:
            raise click.ClickException(f"no family '{name}'; there are {', '.join(found)}")
        found = {name: found[name]}
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    if name is not None:
        click.echo(render_family(found[name]))
        return
    origins = {n: _origin(f) for n, f in found.items()}
    width = max(4, *(len(o) for o in origins.values()))
    click.echo(f"{'NAME':18}  {'INPUT':8}  {'TASKS':25}  {'FROM':{width}}  POOLS")
    for name, f in found.items():
        tasks = ",".join(f["tasks"])
        click.echo(f"{name:18}  {f['input']:8}  {tasks:25}  {origins[name]:{width}}  {_pools(f)}")


def _fetch(ctx: click.Context, timeout: float = 30.0) -> dict[str, Any]:
    obj = ctx.find_root().obj or {}
    with Client(obj.get("api_url"), api_key=obj.get("api_key"), timeout=timeout) as client:
        found = client.families()
    if not isinstance(found, dict) or not all(
        isinstance(f, dict) and "name" in f for f in found.values()
    ):
        raise ApiError(0, "unexpected", f"{client.base_url} does not answer as a torchqueue API")
    return found


def family_names(ctx: click.Context) -> list[str]:
    """The families the API knows, or the built-ins when it does not answer in time."""
    try:
        return sorted(_fetch(ctx, HELP_TIMEOUT_SECONDS))
    except (ApiError, httpx.HTTPError, OSError):
        from shared.families import FAMILIES

        return sorted(FAMILIES)


class FamilyOption(click.Option):
    """``--family``, whose help lists the families the API knows when it is shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        names = family_names(ctx)
        self.help = f"the model family: {', '.join(names)} (`torchqueue families` for more)"
        return super().get_help_record(ctx)
