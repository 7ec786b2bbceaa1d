"""The `models` commands that change your model store: import-spmamba, remove, default, pull (the conversion,
the settings and the download are sepcli.runtime's)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import EXIT_FAILED, EXIT_USAGE, exit_code_of
from .interrupts import _interrupt_exit, _interruptible
from .main import models_app
from .options import DebugOpt, QuietOpt
from .output import _error, _fail


@models_app.command("import-spmamba")
def models_import_spmamba(
    source: Path | None = typer.Argument(  # noqa: B008
        None, help="The release zip (e.g. SPMamba-LibriMix.zip), a folder holding conf.yml and a checkpoint, or a "
                   "checkpoint file (then give --config).", show_default=False),
    config: Path | None = typer.Option(  # noqa: B008
        None, "--config", help="The training config (conf.yml); by default the one in SOURCE."),
    checkpoint: Path | None = typer.Option(  # noqa: B008
        None, "--checkpoint", help="best_model.pth or a Lightning .ckpt (the older form of SOURCE)."),
    name: str | None = typer.Option(None, "--name", help="Install into your model store under this name "
                                    "(default: from conf.yml, e.g. spmamba-libri2mix)."),
    out: Path | None = typer.Option(None, "--out", help="Write the model folder here instead."),  # noqa: B008
    debug: DebugOpt = False,
) -> None:
    """Convert an official SPMamba release (JusperLee/SPMamba) into a sepcli model.

    Installs into your model store ($SEPCLI_HOME/models, see `sepcli models`) under --name, or under a name
    taken from conf.yml (its experiment name, e.g. spmamba-libri2mix); --out writes the folder elsewhere. A name
    is one plain folder name that no installed model uses as folder, name or alias (a new model must not shadow
    `default`). Exit 1 for an archive or checkpoint that cannot be imported, 2 for a bad name or conf.yml."""
    if (source is None) == (checkpoint is None):
        _error("give the release zip, folder or checkpoint as SOURCE (or --checkpoint with --config), once")
        raise typer.Exit(EXIT_USAGE)
    if name is not None and out is not None:
        _error("give at most one of --name (install into your model store) or --out (a folder)")
        raise typer.Exit(EXIT_USAGE)
    src = source if source is not None else checkpoint
    try:
        from ..runtime.spmamba_import import CheckpointError, ConfigError
    except ImportError as exc:
        raise _fail(RuntimeError(f"SPMamba import is not available ({exc})"), debug, EXIT_FAILED) from None
    try:
        with _interruptible():
            result, name = _import_release(src, config, name, out)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the temporary folders are removed, nothing installed
        raise _interrupt_exit(exc, "nothing installed") from None
    except CheckpointError as exc:  # exit 1; 2 for a bad conf.yml (ConfigError), a bad argument like an option
        # (its exit_code says so; the isinstance default serves a stand-in converter module, as tests use)
        code = exit_code_of(exc, EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)
        raise _fail(exc, debug, code) from None
    for note in result.notes:
        typer.echo(f"sepcli: note: {note}", err=True)
    typer.echo(f"wrote {result.folder}" + (f" (use it with -m {name})" if name else ""))


def _import_release(src: Path, config: Path | None, name: str | None, out: Path | None):
    """import-spmamba's work: the name (given, or from conf.yml) checked, then the import. Returns (ImportResult,
    the name the model is reached by, None for --out)."""
    from ..runtime import store
    from ..runtime.registry import new_name_problem, zoo_dirs
    from ..runtime.spmamba_import import import_release, suggest_name

    if out is None:
        option = "--name"
        if name is None:
            name, option = suggest_name(src, config), "the name from conf.yml"
        problem = new_name_problem(name)
        if problem:
            _error(f"{option}: {problem}" + ("" if option == "--name" else " (give --name)"))
            raise typer.Exit(EXIT_USAGE)
        out = store.models_dir() / name
    elif out.parent.resolve() in {d.resolve() for d in [*zoo_dirs(), store.models_dir()]}:  # the same rules
        problem = new_name_problem(out.name)
        if problem:
            _error(f"--out {out}: {problem}")
            raise typer.Exit(EXIT_USAGE)
    return import_release(src, out, name=name or out.name, config=config), name


@models_app.command("remove")
def models_remove(name: str = typer.Argument(..., help="The name of a model in your model store."),
                  debug: DebugOpt = False) -> None:
    """Delete a model from your model store ($SEPCLI_HOME/models).

    Shipped and SEPCLI_ZOO models are never removed (exit 2)."""
    from ..runtime import store
    from ..runtime.registry import USER, find_installed, installed_names

    entry = find_installed(name)
    if entry is None or name in entry.aliases and name not in (entry.name, entry.folder.name):
        _error(f"no installed model named {name!r} (installed: {installed_names()})")
        raise typer.Exit(EXIT_USAGE)
    if entry.source != USER:
        _error(f"{entry.name!r} is a {entry.source} model ({entry.folder}): only models in your model store "
               f"({store.models_dir()}) can be removed")
        raise typer.Exit(EXIT_USAGE)
    try:
        store.remove_model(entry.folder)
        was_default = store.get_user_default() == entry.name
    except OSError as exc:
        raise _fail(exc, debug) from None
    typer.echo(f"removed {entry.name} ({entry.folder})")
    if was_default:
        typer.echo(f"sepcli: warning: {entry.name!r} was your default model: run `sepcli models default --reset` "
                   "or choose another", err=True)


@models_app.command("default")
def models_default(name: str | None = typer.Argument(None, help="An installed model's name.",
                                                        show_default=False),
                   reset: bool = typer.Option(False, "--reset", help="Forget your default: `default` is the "
                                              "shipped model again."),
                   debug: DebugOpt = False) -> None:
    """Choose the model that `default` (and no -m) means for you; without NAME, say which it is and why.

    Kept in $SEPCLI_HOME/settings.json; the environment variable SEPCLI_MODEL overrides it."""
    from ..runtime import store
    from ..runtime.registry import DEFAULT, ModelNotFound, default_choice, find_installed, installed_names, resolve

    if name is not None and reset:
        _error("give NAME or --reset, not both")
        raise typer.Exit(EXIT_USAGE)
    try:
        if reset:
            had = store.reset_user_default()
            typer.echo("your default model is reset" if had else "no default model was set")
        elif name is not None:
            entry = find_installed(name) if name != DEFAULT else None
            if entry is None:
                why = ("'default' is what this command sets; use --reset for the shipped default" if name == DEFAULT
                       else f"no installed model named {name!r} (installed: {installed_names()})")
                _error(why)
                raise typer.Exit(EXIT_USAGE)
            store.set_user_default(entry.name)
            typer.echo(f"default model: {entry.name} ({entry.folder})")
        target, why = default_choice()
        folder = resolve(DEFAULT)
    except (store.SettingsError, ModelNotFound) as exc:  # the setting, not an argument, is wrong: exit 1 (not
        raise _fail(exc, debug, EXIT_FAILED) from None  # ModelNotFound's 2) for a default that names no model
    if name is None and not reset:
        label = {"SEPCLI_MODEL": "from SEPCLI_MODEL", "user setting": "your setting (sepcli models default)"}
        typer.echo(f"default model: {target or folder.name} ({folder}), {label.get(why, 'the alias default')}")
    elif why == "SEPCLI_MODEL":
        typer.echo(f"sepcli: warning: SEPCLI_MODEL={target} overrides it in this shell", err=True)


PULL_EXIT_HELP = ("Exit codes: 0 = installed (or already installed); 1 = failed (network, checksum, archive), nothing "
                  "installed; 2 = usage error (unknown name, missing --from file); 130 = interrupted (Ctrl-C), 143 = "
                  "terminated (SIGTERM): nothing installed, a partial download is resumed by the next pull.")


@models_app.command("pull", epilog=PULL_EXIT_HELP)
def models_pull(
    name: str = typer.Argument(..., help="Catalogue name, e.g. spmamba-libri2mix (`sepcli models` lists them)."),
    source: str | None = typer.Option(None, "--from", help="A mirror URL or a local copy of the release file "
                                      "(for machines without internet)."),
    force: bool = typer.Option(False, "--force", help="Download and install again over an installed copy."),
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Download a catalogue model and install it into the user store ($SEPCLI_HOME/models/NAME).

    The only command that uses the network: a progress bar on stderr (plain lines when stderr is not a terminal,
    nothing with -q), timeouts, retries, resume of a partial download; the sha256 is checked against a pinned one
    or printed and recorded in the model's provenance. On a slow link: SEPCLI_DOWNLOAD_TIMEOUT (seconds without
    data before a retry, default 30), SEPCLI_DOWNLOAD_RETRIES (default 3)."""
    from ..runtime.pull import pull

    try:
        with _interruptible():
            result = pull(name, source=source, force=force, quiet=quiet)
    except KeyboardInterrupt as exc:
        raise _interrupt_exit(exc, "nothing installed (pull again to resume the download)") from None
    except Exception as exc:  # noqa: BLE001 (PullError: its code; unexpected: 1, one line unless --debug)
        raise _fail(exc, debug) from None
    if result.already_installed:
        typer.echo(f"{name} is already installed in {result.folder} (--force downloads it again)")
        return
    if not quiet:
        for note in result.notes:
            typer.echo(f"sepcli: note: {note}", err=True)
    check = "matches the catalogue" if result.sha256_pinned else "recorded in its provenance"
    typer.echo(f"installed {name} in {result.folder} (sha256 {result.sha256}, {check}); "
               f"use it with `sepcli separate -m {name} ...`")
