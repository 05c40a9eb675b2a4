"""Write ``requirements.lock`` from a ``pip install --dry-run --report`` of the project.

``make lock`` runs pip's resolver on ``.[dev]`` (plus the build requirements, so that the
editable install needs no network either) and this script turns the report into a hashed
requirements file: every distribution pinned to the exact file pip chose (its sha256), which
``pip install --require-hashes --no-deps -r requirements.lock`` installs and nothing else.
The lock holds what this platform needs (Linux x86_64, CPython 3.11; see the header).

Usage: python tools/lock.py REPORT.json OUTPUT.lock
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def lock_lines(report: dict) -> list[str]:
    env = report.get("environment", {})
    lines = [
        "# kelpseg's resolved environment: `make lock` writes this file, `make setup` installs it.",
        f"# platform: {env.get('sys_platform')} {env.get('platform_machine')}, "
        f"python {env.get('python_full_version')}; resolved by pip {report.get('pip_version')}",
        "",
    ]
    entries = []
    for item in report["install"]:
        info = item["download_info"]
        if "archive_info" not in info:  # the project itself (a local directory)
            continue
        name, version = item["metadata"]["name"].lower().replace("_", "-"), item["metadata"]["version"]
        hashes = info["archive_info"].get("hashes") or {}
        if "sha256" not in hashes:
            raise SystemExit(f"{name}=={version}: pip reported no sha256 for {info['url']}")
        entries.append((name, version, hashes["sha256"]))
    for name, version, digest in sorted(entries):
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    report = json.loads(Path(argv[1]).read_text())
    out = Path(argv[2])
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lock_lines(report)) + "\n")
    tmp.replace(out)
    print(f"{out}: {sum(1 for i in report['install'] if 'archive_info' in i['download_info'])} pinned files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
