"""The ``kelpseg`` Typer application, its root options and the error handling of every command.

Root options: ``--version``, ``-v/--verbose`` (repeatable: a handler on the ``kelpseg`` logger at
WARNING by default, INFO with ``-v``, DEBUG with ``-vv``; library code that has optional chatter
checks ``logging.getLogger("kelpseg").isEnabledFor(logging.INFO)``), ``-h/--help`` and shell
completion (``--install-completion`` / ``--show-completion``).

Exit status: 0 done, 1 a runtime failure (a missing or malformed file, a stage not run yet,
``check-data`` or ``check-submission`` finding problems), 2 a usage error (a bad option or config
value: :class:`kelpseg.errors.UsageError`, and click's own). Problems go to stderr, on one line.
"""

import logging
import os
import sys
import warnings
from typing import Annotated

import typer
from rich.console import Console

from kelpseg import __version__
from kelpseg.errors import EXIT_FAILURE, EXIT_USAGE, UsageError, exit_for_failure, raise_interrupted_on_sigint

app = typer.Typer(
    name="kelpseg",
    help="Map giant-kelp canopy in Landsat tiles (Kelp Wanted layout): prepare, train, predict, submit.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
#: Line width of tables and messages written to a file or pipe (rich's default there is 80, which
#: cut the fold table's headers to "val_t…" in a ``make run`` log). ``COLUMNS`` still wins.
LOG_WIDTH = 160


def _console(stderr: bool = False) -> Console:
    from kelpseg.progress import is_terminal

    stream = sys.stderr if stderr else sys.stdout
    if is_terminal(stream) or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=LOG_WIDTH)


console = _console()
err_console = _console(stderr=True)

LOGGER = "kelpseg"
_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


def setup_logging(verbosity: int) -> logging.Handler:
    """One stderr handler on the ``kelpseg`` logger; 0 -> WARNING, 1 -> INFO, 2+ -> DEBUG."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, "_kelpseg_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._kelpseg_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[min(verbosity, len(_LEVELS) - 1)])
    return handler


def _print_version(value: bool) -> None:
    if value:
        console.print(f"kelpseg {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-v info, -vv debug).")
    ] = 0,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Map giant-kelp canopy in Landsat tiles (Kelp Wanted layout): prepare, train, predict, submit."""
    setup_logging(verbose)


def quiet_libraries() -> None:
    """Keep the console for kelpseg's own output: library chatter only at warning level."""
    # Lightning and MLflow reset their top loggers to INFO when imported (lazily, after this
    # runs), so the loggers that actually speak are set explicitly too.
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "mlflow",
        "mlflow.store.db.utils",
        "mlflow.tracking.fluent",
        "alembic",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # its only warning is "Experiment ... not found. Creating it." on every first run
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def exit_code(exc: Exception) -> int:
    """2 for a usage error, 1 for a runtime failure (see :mod:`kelpseg.errors`)."""
    return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE


def main() -> None:
    """Entry point: run the app; user errors, OS errors and Ctrl-C end as one line on stderr
    (:func:`kelpseg.errors.exit_for_failure`), bugs keep their traceback."""
    raise_interrupted_on_sigint()
    quiet_libraries()
    try:
        app()
    except BaseException as exc:
        exit_for_failure(exc)
