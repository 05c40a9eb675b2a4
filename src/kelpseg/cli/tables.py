"""Printing results: library functions return rows, the command line shows them as tables."""

from rich.table import Table

from kelpseg.cli.app import console


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    """Print a list of dicts as a rich table (floats with 4 significant digits)."""
    if not rows:
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(str(key))
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)


def print_mlflow_hint(command: str | None) -> None:
    """The command that opens the MLflow UI on the store the runs went to."""
    if command:
        console.print(f"MLflow runs: {command}", highlight=False, soft_wrap=True)


def print_problems(problems: list[str], limit: int | None = None) -> None:
    """One ``✗ problem`` line each (at most ``limit``), then how many were left out."""
    shown = problems if limit is None else problems[:limit]
    for problem in shown:
        console.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)
    if len(problems) > len(shown):
        console.print(f"... and {len(problems) - len(shown)} more")
