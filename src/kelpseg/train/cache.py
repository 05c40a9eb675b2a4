"""Optional pre-decoded tile cache: GeoTIFFs decoded once into memory-mapped ``.npy`` arrays.

Layout under ``<cache_dir>/<key>/`` (``cache_dir`` is ``DataLayout.cache_dir`` by default)::

    images.npy   (N, 7, 350, 350) raw DN as stored in the files (int16, the competition's type;
                 int32 or float32 when some tile does not fit int16), fill value -32768 kept
    masks.npy    (N, 350, 350) uint8 0/1 (zeros for tiles without a mask)
    index.json   {"version", "key", "tile_ids", "image_paths", "mask_paths", "image_dtype", ...}

``key`` is a hash of the sorted (tile id, image path, mask path, file sizes and modification times)
list, so the same tile list gives the same cache for every fold and epoch, and a changed file gives
a new one. The cache is built into a temporary folder beside the final one and renamed into place
when complete, so a reader never sees half a cache and an interrupted build leaves nothing behind
(a concurrent builder of the same key simply loses the rename race and uses the winner's cache).

Readers open the arrays lazily with ``mmap_mode="r"``, so DataLoader workers share the page cache
instead of copying the arrays; a pickled ``TileCache`` carries only its folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from kelpseg.bands import FILL_VALUE, N_BANDS, TILE_SIZE
from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import clean_stale_temps
from kelpseg.io.tiles import read_mask, read_raw_tile

log = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"
INDEX_FILE = "index.json"
#: Storage types tried in order; the first that holds every tile exactly is used.
_DTYPES = ("int16", "int32", "float32")


class CacheError(KelpsegError):
    """The tile cache is unreadable, inconsistent or cannot be built."""


def _file_fingerprint(path: str | None) -> list[Any]:
    if path is None:
        return [None, None, None]
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), None, None]
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(
    tile_ids: Sequence[str], image_paths: Sequence[str | Path], mask_paths: Sequence[str | Path | None] | None
) -> str:
    """A 16-hex-digit key of the tile list: same tiles and files -> same key, in any input order."""
    masks = list(mask_paths) if mask_paths is not None else [None] * len(tile_ids)
    rows = sorted(
        [str(t), _file_fingerprint(str(i)), _file_fingerprint(optional_path(m))]
        for t, i, m in zip(tile_ids, image_paths, masks, strict=True)
    )
    payload = json.dumps({"version": CACHE_VERSION, "rows": rows}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def _storage_dtype(tile: np.ndarray) -> str:
    """The narrowest of int16 / int32 / float32 that stores ``tile`` exactly."""
    if not np.issubdtype(tile.dtype, np.integer):
        if not np.isfinite(tile).all() or not np.array_equal(tile, np.round(tile)):
            return "float32"
        tile = tile.astype(np.int64)
    lo, hi = int(tile.min()), int(tile.max())
    for name in ("int16", "int32"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return name
    return "float32"


def optional_path(path: Any) -> str | None:
    """A mask path as a string, or None for a missing one (None, NaN, empty)."""
    if path is None or (isinstance(path, float) and np.isnan(path)) or str(path) == "":
        return None
    return str(path)


def _npy_problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why ``path`` is not a complete ``.npy`` array of ``shape`` (None when it is)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            header_shape, _, dtype = read_header(fh)
            offset = fh.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        return f"{path.name}: unreadable ({exc})"
    if tuple(header_shape) != tuple(shape):
        return f"{path.name}: shape {tuple(header_shape)}, index says {tuple(shape)}"
    expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size != expected:
        return f"{path.name}: {size} bytes, expected {expected} (truncated)"
    return None


def cache_problem(folder: str | Path) -> str | None:
    """Why the cache folder is not complete and consistent (None when it is).

    Checked: the index (written last: the completion marker) parses and names this folder's key
    and version, and both arrays have the index's shape and exactly the bytes that shape needs.
    """
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
        shape = tuple(int(v) for v in index["shape"])
        n = len(index["tile_ids"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{INDEX_FILE}: missing or unreadable ({exc})"
    if index.get("version") != CACHE_VERSION:
        return f"{INDEX_FILE}: cache version {index.get('version')}, expected {CACHE_VERSION}"
    if index.get("key") != folder.name:
        return f"{INDEX_FILE}: key {index.get('key')!r} does not match the folder name"
    if shape != (n, N_BANDS, TILE_SIZE, TILE_SIZE):
        return f"{INDEX_FILE}: shape {list(shape)} for {n} tiles"
    return _npy_problem(folder / IMAGES_FILE, shape) or _npy_problem(
        folder / MASKS_FILE, (n, TILE_SIZE, TILE_SIZE)
    )


def _discard(folder: Path) -> None:
    """Move a bad cache aside (atomically) and delete it."""
    trash = folder.parent / f".{folder.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    try:
        os.rename(folder, trash)
    except FileNotFoundError:  # another builder removed it first
        return
    shutil.rmtree(trash, ignore_errors=True)


class _NeedsWiderType(Exception):
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class TileCache:
    """A built cache folder; use :meth:`open_or_build` to get one."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        try:
            self.index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(
                f"{index_path}: unreadable tile-cache index ({exc}); delete {self.folder}"
            ) from None
        if self.index.get("version") != CACHE_VERSION:
            raise CacheError(
                f"{index_path}: cache version {self.index.get('version')}, expected {CACHE_VERSION}"
            )
        self.tile_ids: list[str] = list(self.index["tile_ids"])
        self._rows = {t: i for i, t in enumerate(self.tile_ids)}
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    # ---- pickling: only the folder travels to DataLoader workers ------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __contains__(self, tile_id: object) -> bool:
        return tile_id in self._rows

    def __repr__(self) -> str:
        return f"TileCache({str(self.folder)!r}, tiles={len(self)})"

    @property
    def key(self) -> str:
        return str(self.index["key"])

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.folder / IMAGES_FILE, mmap_mode="r")
        return self._images

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            self._masks = np.load(self.folder / MASKS_FILE, mmap_mode="r")
        return self._masks

    def row(self, tile_id: str) -> int:
        try:
            return self._rows[tile_id]
        except KeyError:
            raise KeyError(f"tile {tile_id!r} is not in the cache {self.folder}") from None

    def read_raw(self, tile_id: str) -> np.ndarray:
        """The tile as stored in the GeoTIFF: (7, 350, 350), fill value kept (a copy)."""
        return np.array(self.images[self.row(tile_id)])

    def read_tile(self, tile_id: str, fill: float = np.nan) -> np.ndarray:
        """The tile as ``kelpseg.io.tiles.read_tile`` returns it: float32, fill value -> ``fill``."""
        raw = self.images[self.row(tile_id)]
        out = raw.astype(np.float32)
        out[raw == FILL_VALUE] = fill
        return out

    def read_mask(self, tile_id: str) -> np.ndarray:
        """The mask as uint8 (350, 350) (zeros if the tile had none; a copy)."""
        return np.array(self.masks[self.row(tile_id)])

    # ---- building -----------------------------------------------------------------------------
    @classmethod
    def open_or_build(
        cls,
        cache_dir: str | Path,
        tile_ids: Sequence[str],
        image_paths: Sequence[str | Path],
        mask_paths: Sequence[str | Path | None] | None = None,
        *,
        workers: int = 2,
        progress: Callable[[int, int], None] | None = None,
    ) -> TileCache:
        """The cache of these tiles under ``cache_dir/<key>/``, built first if it does not exist.

        Rows follow the tile ids sorted, whatever the input order. ``progress(done, total)`` is
        called after every tile while building.
        """
        if len(set(tile_ids)) != len(tile_ids):
            raise CacheError("the tile list holds duplicate tile ids")
        if len(tile_ids) == 0:
            raise CacheError("cannot cache an empty tile list")
        masks = [optional_path(m) for m in mask_paths] if mask_paths is not None else [None] * len(tile_ids)
        key = cache_key(tile_ids, image_paths, masks)
        folder = Path(cache_dir) / key
        if folder.exists():
            problem = cache_problem(folder)
            if problem is None:
                return cls(folder)
            log.warning("tile cache %s is incomplete or damaged (%s); building it again", folder, problem)
            _discard(folder)
        rows = sorted(zip(map(str, tile_ids), map(str, image_paths), masks, strict=True))
        _build(folder, key, rows, workers=workers, progress=progress)
        return cls(folder)


def _read_pair(image_path: str, mask_path: str | None) -> tuple[np.ndarray, np.ndarray]:
    image = read_raw_tile(image_path)
    mask = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8) if mask_path is None else read_mask(mask_path)
    return image, mask


def _fill_arrays(
    tmp: Path,
    rows: list[tuple[str, str, str | None]],
    dtype: str,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    n = len(rows)
    images = np.lib.format.open_memmap(
        tmp / IMAGES_FILE, mode="w+", dtype=dtype, shape=(n, N_BANDS, TILE_SIZE, TILE_SIZE)
    )
    masks = np.lib.format.open_memmap(
        tmp / MASKS_FILE, mode="w+", dtype=np.uint8, shape=(n, TILE_SIZE, TILE_SIZE)
    )
    rank = {"int16": 0, "int32": 1, "float32": 2}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # rasterio releases the GIL
        pairs = pool.map(lambda r: _read_pair(r[1], r[2]), rows)
        for i, (image, mask) in enumerate(pairs):
            need = _storage_dtype(image)
            if rank[need] > rank[dtype]:
                raise _NeedsWiderType(need)
            images[i] = image
            masks[i] = mask
            if progress is not None:
                progress(i + 1, n)
    images.flush()
    masks.flush()
    del images, masks


#: Free space kept beyond the cache's own size when building one.
DISK_MARGIN_BYTES = 512 * 2**20


def cache_bytes(n_tiles: int, image_dtype: str = "int16") -> int:
    """Disk size of a cache of ``n_tiles`` tiles (images in ``image_dtype`` plus uint8 masks)."""
    pixels = n_tiles * TILE_SIZE * TILE_SIZE
    return pixels * N_BANDS * np.dtype(image_dtype).itemsize + pixels


def _check_free_space(folder: Path, n_tiles: int) -> None:
    """Refuse to build when the disk cannot hold the cache.

    The arrays are written through memory maps: running out of space there kills the process with
    SIGBUS instead of raising, so the space is checked first.
    """
    need = cache_bytes(n_tiles) + DISK_MARGIN_BYTES
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CacheError(
            f"{folder}: not enough free disk space for the tile cache of {n_tiles} tiles "
            f"(needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free); free some space or "
            "train without it (--set use_cache=false)"
        )


def _build(
    folder: Path,
    key: str,
    rows: list[tuple[str, str, str | None]],
    *,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(folder.parent, len(rows))
    clean_stale_temps(folder.parent)  # builds of killed processes
    tmp = folder.parent / f".{key}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    tmp.mkdir()
    try:
        for dtype in _DTYPES:
            try:
                _fill_arrays(tmp, rows, dtype, workers, progress)
                break
            except _NeedsWiderType as wider:
                if _DTYPES.index(wider.dtype) <= _DTYPES.index(dtype):  # pragma: no cover - defensive
                    raise
                continue
        index = {
            "version": CACHE_VERSION,
            "key": key,
            "image_dtype": str(np.load(tmp / IMAGES_FILE, mmap_mode="r").dtype),
            "shape": [len(rows), N_BANDS, TILE_SIZE, TILE_SIZE],
            "tile_ids": [r[0] for r in rows],
            "image_paths": [r[1] for r in rows],
            "mask_paths": [r[2] for r in rows],
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError as exc:
            if not (folder / INDEX_FILE).exists():  # not a lost race with another builder
                raise CacheError(
                    f"{folder}: cannot create the tile cache ({exc}); delete the folder"
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
