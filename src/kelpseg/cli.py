"""The ``kelpseg`` command line: one thin command per pipeline stage.

Commands parse options, call the stage function, and print where the outputs went. User
errors (:class:`kelpseg.errors.KelpsegError`) are printed on one line without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kelpseg.errors import KelpsegError
from kelpseg.layout import DEFAULT_DATA_DIR, DataLayout

app = typer.Typer(
    name="kelpseg",
    help="Map giant-kelp canopy in Landsat tiles (Kelp Wanted layout): prepare, train, predict, submit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", "-d", help="Data directory (raw/, processed/, predictions/, ...).")
]
Workers = Annotated[int, typer.Option("--workers", "-w", help="Worker processes.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _layout(data_dir: Path) -> DataLayout:
    return DataLayout(data_dir)


# --------------------------------------------------------------------------------------------
# Foundation
# --------------------------------------------------------------------------------------------
@app.command("synth")
def synth_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    n_train: Annotated[int, typer.Option("--n-train", help="Training tiles.")] = 300,
    n_test: Annotated[int, typer.Option("--n-test", help="Test tiles.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    tile_ids_from: Annotated[
        Path | None, typer.Option("--tile-ids-from", help="Take tile ids from a metadata CSV.")
    ] = None,
    preview: Annotated[Path | None, typer.Option(help="Also write a preview PNG here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing raw/ and truth/ data.")] = False,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Generate a synthetic dataset in the exact competition layout (with truth/ for evaluation)."""
    from kelpseg.synthetic import generate_dataset, write_preview

    summary = generate_dataset(
        data_dir,
        n_train,
        n_test,
        seed,
        tile_ids_from=tile_ids_from,
        workers=workers,
        progress=not quiet,
        overwrite=overwrite,
    )
    console.print(
        f"[green]wrote[/] {summary.n_train} train + {summary.n_test} test tiles "
        f"({summary.n_aois} AOIs, {summary.n_with_kelp} train tiles with kelp) to {_layout(data_dir).raw} "
        f"in {summary.seconds:.1f}s"
    )
    if preview is not None:
        console.print(f"[green]preview[/] {write_preview(data_dir, preview)}")


@app.command("check-data")
def check_data_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    checksums: Annotated[bool, typer.Option("--checksums", help="Also verify md5 and file sizes.")] = False,
    workers: Workers = 2,
    quiet: Quiet = False,
    max_problems: Annotated[int, typer.Option(help="Print at most this many problems.")] = 200,
) -> None:
    """Verify the data dir: files listed exist, masks present, tiles readable and 7x350x350."""
    from kelpseg.io.integrity import check_data

    report = check_data(_layout(data_dir), checksums=checksums, workers=workers, progress=not quiet)
    console.print(
        f"checked {report.n_files_checked} files: {report.n_train} train tiles, {report.n_test} test tiles"
        + (" (with md5/size)" if checksums else "")
    )
    if report.ok:
        console.print("[green]data OK[/]")
        return
    for problem in report.problems[:max_problems]:
        console.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)
    if len(report.problems) > max_problems:
        console.print(f"... and {len(report.problems) - max_problems} more")
    console.print(f"[red]{len(report.problems)} problem(s) found[/]")
    raise typer.Exit(1)


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    """Print a list of dicts as a rich table."""
    if not rows:
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(str(key))
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages."""
    try:
        app()
    except KelpsegError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
