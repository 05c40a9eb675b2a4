"""Submission commands: pack prediction masks into the archive, check an archive."""

from pathlib import Path
from typing import Annotated

import typer

from kelpseg.cli.app import app, console
from kelpseg.cli.options import DataDir, Previews, Quiet
from kelpseg.cli.tables import print_problems
from kelpseg.layout import DEFAULT_DATA_DIR, DataLayout


@app.command("submission")
def submission_cmd(
    preds_dir: Annotated[Path, typer.Option("--preds-dir", help="Folder of 0/1 <tile_id>_kelp.tif masks.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The .tar to write.")] = None,
    previews: Previews = 10,
    quiet: Quiet = False,
) -> None:
    """Pack the test-tile masks into a validated, uncompressed submission.tar."""
    from kelpseg.infer.previews import write_prediction_previews
    from kelpseg.infer.submission import write_submission

    layout = DataLayout(data_dir)
    out = output or Path(preds_dir).parent / "submission.tar"
    tar = write_submission(preds_dir, layout, out)
    if previews:
        write_prediction_previews(
            layout.test_images, preds_dir, out.parent / "previews", n=previews, progress=not quiet
        )
    console.print(f"[green]submission[/] {tar}")


@app.command("check-submission")
def check_submission_cmd(
    tar: Annotated[Path, typer.Argument(help="The submission.tar to check.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Check a submission archive: one 350x350 uint8 0/1 mask per test tile, nothing else."""
    from kelpseg.infer.submission import check_submission

    problems = check_submission(tar, DataLayout(data_dir))
    if not problems:
        console.print(f"[green]{tar}: valid submission[/]")
        return
    print_problems(problems)
    raise typer.Exit(1)
