"""Backup and restore throughput: `site backup` / `site restore` against a plain tar of
the same site folder, measured side by side in one run.

Builds a stopped site (`site init`, with the in-memory keyring) and fills its releases/
folder with SIZE MiB of incompressible files (what blobs and released weights are
like), then alternates, REPEAT times: Python's tarfile writing the folder uncompressed
(the floor: reading and archiving, no crypto, no checks), `backup_site` (snapshots,
SHA-256 of every file, AES-256-GCM), and `restore_site` (decrypt, unpack, every sum,
the audit chain, the ledger). Prints MB/s and the ratio to the floor, and writes JSON
(default benchmarks/results/backup.json).

    python benchmarks/backup.py              # 256 MiB, 3 repeats
    python benchmarks/backup.py --full       # 2048 MiB
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import write_result  # noqa: E402
from sites.common import keychain  # noqa: E402
from sites.common.keyring_backends import MemoryKeyring  # noqa: E402
from sites.operator import lifecycle  # noqa: E402
from sites.operator.backup import backup_site  # noqa: E402
from sites.operator.restore import restore_site  # noqa: E402


def fill(folder: Path, mib: int, file_mib: int = 16) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(max(1, mib // file_mib)):
        (folder / f"round-{i:04d}.safetensors").write_bytes(os.urandom(file_mib << 20))
        written += file_mib << 20
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="MiB of files in the site")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="2048 MiB")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                    "backup.json")
    args = ap.parse_args()
    size = 2048 if args.full else args.size
    keychain.use_backend(MemoryKeyring())
    work = Path(tempfile.mkdtemp(prefix="medsyft-bench-backup-"))
    try:
        site = work / "site"
        lifecycle.init_site("bench-backup", site)
        total = fill(site / "releases" / ("0" * 64), size)
        times: dict[str, list[float]] = {"tar": [], "backup": [], "restore": []}
        for i in range(args.repeat):
            t = time.perf_counter()
            with tarfile.open(work / f"plain-{i}.tar", "w") as tar:
                tar.add(site, arcname=".")
            times["tar"].append(time.perf_counter() - t)
            (work / f"plain-{i}.tar").unlink()
            t = time.perf_counter()
            backup_site(site, work / f"b-{i}.msbak")
            times["backup"].append(time.perf_counter() - t)
            t = time.perf_counter()
            restore_site(work / f"b-{i}.msbak", work / f"restored-{i}", allow_older=True)
            times["restore"].append(time.perf_counter() - t)
            shutil.rmtree(work / f"restored-{i}")
            (work / f"b-{i}.msbak").unlink()
        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: total / v / 1e6 for k, v in med.items()}
        print(f"site of {total / 2**20:.0f} MiB, median of {args.repeat} "
              f"(alternating in one run)")
        print(f"{'':10} {'seconds':>8} {'MB/s':>8} {'vs tar':>8}")
        for k in ("tar", "backup", "restore"):
            print(f"{k:10} {med[k]:8.2f} {rate[k]:8.0f} {med['tar'] / med[k]:8.2f}")
        write_result("backup", {"bytes": total, "repeat": args.repeat, "seconds": times,
                                "median_s": med, "mb_per_s": rate,
                                "ratio_to_tar": {k: med["tar"] / med[k] for k in med}},
                     args.out)
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
