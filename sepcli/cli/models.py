"""`sepcli models` (the list: installed models, then catalogue models not installed yet) and `sepcli models info`."""

from __future__ import annotations

import json

import typer

from ..errors import one_line
from .main import models_app
from .options import DebugOpt
from .output import _fail


def _quality_summary(ev: dict) -> str:
    """'SI-SNRi 3.1 dB held-out real, 5.2 dB synthetic' from a config's eval figures, else its plain numbers."""
    parts = []
    for key, label in (("test_real", "held-out real"), ("test_synth", "held-out synthetic"), ("val", "validation")):
        mean = ((ev.get(key) or {}).get("si_snri") or {}).get("mean") if isinstance(ev.get(key), dict) else None
        if isinstance(mean, (int, float)):
            parts.append(f"{mean:.1f} dB {label}")
    if parts:
        return "SI-SNRi " + ", ".join(parts)
    return ", ".join(f"{k}={v}" for k, v in ev.items() if isinstance(v, (int, float, str)) and v is not None)


def _catalogue_rows() -> list[dict]:
    """Rows of `sepcli models` for the catalogue models that are not installed (installed: false)."""
    from ..runtime import catalogue
    from ..runtime.registry import find_installed

    try:
        entries = catalogue.entries()
    except catalogue.CatalogueError as exc:  # a bad SEPCLI_CATALOGUE must not hide the installed models
        typer.echo(f"sepcli: warning: {exc}", err=True)
        return []
    return [{"name": e.name, "aliases": [], "source": "catalogue", "installed": False,
             "arch": "spmamba" if e.importer == "spmamba-release" else None, "sample_rate": e.sample_rate,
             "n_src": e.n_src, "url": e.url, "licence": e.licence, "published": e.figures_line(),
             "published_short": e.figures_line(source=False),
             "pull": f"sepcli models pull {e.name}" + ("" if e.url else " --from FILE"), "path": None,
             "params": None, "size_bytes": None, "eval": {}, "default": False, "default_why": None}
            for e in entries if find_installed(e.name) is None]


_WHY_TEXT = {"SEPCLI_MODEL": "SEPCLI_MODEL", "user setting": "user setting (sepcli models default)"}


def _default_model():
    """(the folder `default` means, why) for the list; (None, None), said in a warning, when it names no model."""
    from ..runtime.registry import ModelNotFound, default_choice, resolve

    try:
        default_folder, why = resolve("default"), default_choice()[1]
    except ModelNotFound as exc:  # e.g. a user default whose model was removed: said, the list still shown
        try:
            chosen = default_choice()[0]
        except ModelNotFound:  # settings.json unreadable: exc says so
            chosen = "?"
        if chosen is not None:  # (no model with the alias `default`: zoo_conflicts said why)
            typer.echo(f"sepcli: warning: {exc}", err=True)
        default_folder, why = None, None
    return default_folder, why


def _installed_rows(default_folder, why) -> list[dict]:
    """Rows of `sepcli models` for the installed models; an unreadable one is skipped with a warning."""
    from ..runtime.model_folder import ModelError, weights_summary
    from ..runtime.registry import list_zoo

    rows = []
    for e in list_zoo():
        try:
            if e.problem:
                raise ModelError(e.problem)
            n, size = weights_summary(e.folder)
        except ModelError as exc:  # one unreadable model (a Git LFS pointer, garbage) must not hide the others
            typer.echo(f"sepcli: warning: skipped zoo model {e.folder}: {one_line(str(exc))}", err=True)
            continue
        cfg = e.config
        is_default = default_folder is not None and default_folder == e.folder
        # `default` is listed only where it leads (SEPCLI_MODEL or the user's setting may take it from the alias)
        aliases = [a for a in e.aliases if a != "default" or default_folder in (None, e.folder)]
        rows.append({"name": e.name, "aliases": aliases, "source": e.source, "arch": cfg.get("arch"),
                     "sample_rate": cfg.get("sample_rate"), "n_src": cfg.get("n_src"), "params": n,
                     "size_bytes": size, "eval": cfg.get("eval", {}), "path": str(e.folder),
                     "default": is_default,
                     "default_why": (_WHY_TEXT.get(why, f"alias 'default' of a {e.source} model")
                                     if is_default else None)})
    return rows


def _print_table(rows: list[dict], pending: list[dict], default_folder, why) -> None:
    """The table of `sepcli models` on stdout, then which model `default` is and why."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="sepcli models")
    for col in ("name", "aliases", "source", "arch", "rate", "params", "size", "quality"):
        t.add_column(col)
    for r in rows:
        quality = _quality_summary(r["eval"] or {})
        name = f"{r['name']} *" if r["default"] else r["name"]
        t.add_row(name, ", ".join(r["aliases"]), r["source"], str(r["arch"]), f"{r['sample_rate']} Hz",
                  f"{r['params'] / 1e6:.2f} M", f"{r['size_bytes'] / 1e6:.1f} MB", quality or "-")
    for r in pending:
        t.add_row(f"{r['name']} (not installed)", "", r["source"], str(r["arch"] or "-"),
                  f"{r['sample_rate']} Hz" if r["sample_rate"] else "-", "-", "-",
                  f"published: {r['published_short']}" if r["published_short"] else "-")
    if not rows:
        typer.echo("no models installed", err=True)
    console = Console(width=max(100, Console().width))
    console.print(t)
    if pending:
        console.print("not installed: get one with `sepcli models pull NAME` (the only command that downloads)",
                      highlight=False)
    chosen = next((r for r in rows if r["default"]), None)
    if chosen is not None:
        console.print(f"* default: {chosen['name']} ({chosen['default_why']})", highlight=False)
    elif default_folder is not None:
        console.print(f"default: {default_folder} ({_WHY_TEXT.get(why, why)})", highlight=False)


@models_app.callback()
def models(ctx: typer.Context,
           as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List the models: name, where it lives (shipped, SEPCLI_ZOO, user), architecture, sample rate, parameters,
    size, measured quality, and which one `default` means and why."""
    if ctx.invoked_subcommand is not None:
        return
    from ..runtime.registry import zoo_conflicts

    for line in zoo_conflicts():
        typer.echo(f"sepcli: warning: {line}", err=True)
    default_folder, why = _default_model()
    rows = _installed_rows(default_folder, why)
    pending = _catalogue_rows()  # catalogue models not installed yet, listed after the installed ones
    if as_json:
        typer.echo(json.dumps([{**r, "installed": True} for r in rows] + pending, indent=2))
        return
    _print_table(rows, pending, default_folder, why)


@models_app.command("info")
def models_info(name: str = typer.Argument(..., help="Zoo name, alias or model folder path."),
                debug: DebugOpt = False) -> None:
    """Show one model: its config and its model card."""
    from ..runtime.model_folder import ModelError, locate, read_config, weights_summary
    from ..runtime.registry import ModelNotFound, UnknownName, resolve

    try:
        folder, weights = locate(resolve(name))
        cfg = read_config(folder)
    except ModelError as exc:  # exit 2 for an unknown model (ModelNotFound), 1 for one that cannot be read
        if isinstance(exc, UnknownName):
            from ..runtime.catalogue import not_installed_hint  # a catalogue model not pulled yet: how to get it

            hint = not_installed_hint(exc.name)
            exc = ModelNotFound(hint) if hint else exc
        raise _fail(exc, debug) from None
    try:
        n, size = weights_summary(weights)
    except ModelError as exc:  # e.g. a Git LFS pointer or garbage in the weights, a .pth holding Python objects
        raise _fail(exc, debug) from None
    typer.echo(f"{cfg['name']}  ({folder})")
    typer.echo(f"  arch {cfg['arch']}, {cfg['sample_rate']} Hz, {cfg['n_src']} speakers, {n / 1e6:.2f} M params, "
               f"{size / 1e6:.1f} MB")
    typer.echo(f"  segment {cfg['segment']} s, overlap {cfg['overlap']}, input loudness {cfg['input_loudness']}")
    if cfg.get("aliases"):
        typer.echo(f"  aliases: {', '.join(cfg['aliases'])}")
    for key in ("description", "provenance"):
        if cfg.get(key):
            typer.echo(f"  {key}: {cfg[key] if isinstance(cfg[key], str) else json.dumps(cfg[key])}")
    if cfg.get("eval"):
        typer.echo(f"  eval: {json.dumps(cfg['eval'])}")
    card = folder / "MODEL_CARD.md"
    if card.is_file():
        typer.echo("")
        typer.echo(card.read_text())
