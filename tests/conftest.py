import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _restore_kelpseg_logger() -> Iterator[None]:
    """Commands run in-process install a handler and a level on the ``kelpseg`` logger (``-v``);
    restore both so that later tests see the default logging, not a handler on a closed stream."""
    logger = logging.getLogger("kelpseg")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
