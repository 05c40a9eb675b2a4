"""Ray for kelpseg: an embedded local instance by default, a cluster when an address is given.

``init_ray()`` with no address (and no ``RAY_ADDRESS`` in the environment) starts Ray inside this
process tree on this machine only: every Ray service listens on 127.0.0.1, no dashboard, and the
CPU/GPU counts you give. With an address (``"auto"``, ``"<host>:<port>"`` of a head node started
with ``ray start --head``, or ``"ray://<host>:10001"`` for Ray Client) it connects instead. A
``host:port`` that nobody answers is reported as a :class:`RayConnectionError` after a TCP probe
bounded by ``connect_timeout_s``, before Ray itself (which would retry for minutes) is involved.

Work sent to Ray runs in other processes, possibly on other machines, with their own working
directory and environment. Two helpers keep a training run's meaning intact there:

* :func:`absolute_config` makes every path of a ``TrainConfig`` absolute (relative to the driver's
  working directory), so that a worker reads the same data and writes the same run directory. On a
  cluster these paths must be on storage every node mounts (NFS, a shared volume).
* :func:`forwarded_env` / :func:`apply_env` carry the MLflow and kelpseg variables of the driver
  (``MLFLOW_TRACKING_URI``, ``MLFLOW_*``, ``KELPSEG_*``) to the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kelpseg.errors import KelpsegError

log = logging.getLogger(__name__)

#: Variables a worker takes over from the driver (exact names or prefixes ending in ``_``).
FORWARDED_ENV = ("MLFLOW_", "KELPSEG_", "AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")
_CONFIG_PATH_FIELDS = ("data_dir", "split_path", "band_stats_path", "output_dir", "encoder_weights")


class RayConnectionError(KelpsegError):
    """The Ray cluster address cannot be reached or is malformed."""


@dataclass(frozen=True)
class RayInfo:
    """What ``init_ray`` connected to."""

    address: str  # GCS address of the cluster
    embedded: bool  # started here (True) or an existing cluster (False)
    resources: dict[str, float]


def resolve_address(address: str | None) -> str | None:
    """``address`` or ``$RAY_ADDRESS``; ``None``, ``""`` and ``"local"`` mean an embedded instance."""
    value = address if address is not None else os.environ.get("RAY_ADDRESS")
    if value is None or value.strip() in ("", "local"):
        return None
    return value.strip()


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` / ``ray://host:port``; ``None`` for ``auto``."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://").rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayConnectionError(
            f"Ray address {address!r}: expected 'auto', '<host>:<port>' or 'ray://<host>:<port>'"
        )
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`RayConnectionError` unless something accepts TCP connections at ``address``."""
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(remaining, 5.0))):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() + 0.5 >= deadline:
            break
        time.sleep(0.5)
    reason = (last.strerror or type(last).__name__) if last is not None else "timed out"
    raise RayConnectionError(
        f"Ray cluster at {address} is not reachable within {timeout_s:g} s ({reason}); "
        "start one with `ray start --head` or leave the address unset for a local instance"
    )


def _loopback_only() -> None:
    """Make a locally started Ray bind every service to 127.0.0.1 instead of the LAN address.

    Ray reads this switch (normally only set on macOS / Windows) when it picks the node address.
    It is set only for the embedded instance, which nobody outside this machine should reach.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        pass


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    connect_timeout_s: float = 10.0,
    log_to_driver: bool = False,
) -> RayInfo:
    """Start an embedded Ray instance or connect to the cluster at ``address`` (see the module doc).

    Re-uses a Ray instance this process already started. ``num_cpus`` / ``num_gpus`` size the
    embedded instance (default: what the machine has) and are ignored for a cluster.
    ``log_to_driver=False`` keeps the workers' training logs in Ray's log folder instead of
    interleaving them on the terminal.
    """
    address = resolve_address(address)
    if address is not None:
        probe_address(address, connect_timeout_s)
    else:
        _loopback_only()
    import ray

    if ray.is_initialized():
        return _info(ray, embedded=address is None)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": log_to_driver,
        "logging_level": logging.WARNING,
        "ignore_reinit_error": True,
    }
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
        else:
            kwargs.pop("include_dashboard")
            ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        where = address or "a local instance"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RayConnectionError(f"cannot start or join Ray at {where}: {first}") from None
    info = _info(ray, embedded=address is None)
    log.info("Ray %s at %s: %s", "started" if info.embedded else "joined", info.address, info.resources)
    return info


def _info(ray: Any, embedded: bool) -> RayInfo:
    context = ray.get_runtime_context()
    address = getattr(context, "gcs_address", "") or ""
    return RayInfo(address=address, embedded=embedded, resources=dict(ray.cluster_resources()))


def shutdown_ray() -> None:
    """Stop (embedded) or leave (cluster) the Ray instance of this process, if any."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver variables that workers take over (see :data:`FORWARDED_ENV`)."""
    environ = os.environ if environ is None else environ
    return {
        key: value
        for key, value in environ.items()
        if any(key.startswith(p) if p.endswith("_") else key == p for p in FORWARDED_ENV)
    }


def apply_env(env: Mapping[str, str]) -> None:
    """Make this worker's forwarded variables exactly ``env`` (drops ones a previous task left)."""
    for key in list(os.environ):
        if key not in env and key in forwarded_env({key: os.environ[key]}):
            del os.environ[key]
    os.environ.update(env)


def absolute_config(config: Any, base: Path | None = None) -> Any:
    """A copy of a ``TrainConfig`` whose path options are absolute (relative to ``base`` or the cwd).

    ``encoder_weights`` is made absolute only when it names an existing local file (it may also be
    ``imagenet`` or another weight name).
    """
    base = Path.cwd() if base is None else Path(base)
    update: dict[str, str] = {}
    for name in _CONFIG_PATH_FIELDS:
        value = getattr(config, name, None)
        if not value or "://" in str(value):
            continue
        path = Path(str(value)).expanduser()
        if name == "encoder_weights" and not (base / path).is_file():
            continue
        if not path.is_absolute():
            update[name] = str((base / path).resolve())
    return config.model_copy(update=update) if update else config
