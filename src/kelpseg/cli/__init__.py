"""The ``kelpseg`` command line: one thin command per pipeline stage, one module per stage group.

``app`` (root options, error handling and exit codes), ``options`` (options shared by several
commands), ``tables`` (printing results) and the command groups ``data``, ``prep``, ``train``,
``sweep``, ``predict``, ``submission`` and ``scene``. Commands parse options, call the library function and
print where the outputs went; library functions return results and never print tables.
"""

# ruff: noqa: I001
# Imported in pipeline order: ``kelpseg --help`` lists the commands as they register.
from kelpseg.cli import data  # noqa: F401  (registers commands)
from kelpseg.cli import prep  # noqa: F401
from kelpseg.cli import train  # noqa: F401
from kelpseg.cli import sweep  # noqa: F401
from kelpseg.cli import predict  # noqa: F401
from kelpseg.cli import submission  # noqa: F401
from kelpseg.cli import scene  # noqa: F401
from kelpseg.cli.app import app, exit_code, main, quiet_libraries, setup_logging
from kelpseg.cli.tables import print_table

__all__ = ["app", "exit_code", "main", "print_table", "quiet_libraries", "setup_logging"]
