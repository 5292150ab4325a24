"""Ingest throughput: medsyft's readers against a raw pydicom/nibabel read of the same files.

Writes a synthetic cohort twice (DICOM single-slice series, NIfTI .nii.gz), then
alternates, in one run, the raw read (pydicom.dcmread + pixel_array + stack;
nibabel.load + get_fdata) with medsyft's read (`datasets.reader.read_image`:
geometry checks, slice ordering, rescale, SUV) and with the whole ingest
(`ingest_manifest`: read + RAS grid + normalisation). Reports volumes per
second and the ratio to raw (goal: read >= 0.9 of raw). Prints a table and
writes JSON (default benchmarks/results/ingest.json).

    python benchmarks/ingest.py            # quick: 24 subjects, 64x64x48
    python benchmarks/ingest.py --full     # 48 subjects, 128x128x96
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import write_result  # noqa: E402
from datasets.ingest import ingest_manifest  # noqa: E402
from datasets.manifest import load_manifest  # noqa: E402
from datasets.preprocess import Preprocessing  # noqa: E402
from datasets.reader import read_image  # noqa: E402
from datasets.synthetic_files import write_synthetic_cohort  # noqa: E402


def raw_dicom(folder: Path) -> np.ndarray:
    planes = [pydicom.dcmread(f).pixel_array for f in sorted(folder.iterdir())]
    return np.stack(planes, axis=-1)


def raw_nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))


def _paths(manifest: Path) -> list[tuple[Path, str]]:
    m = load_manifest(manifest)
    return [(r.image(mod), mod) for r in m.rows for mod in m.modalities]


def _time(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - t0


def bench_format(manifest: Path, fmt: str, reps: int) -> dict:
    items = _paths(manifest)
    raw = raw_nifti if fmt == "nifti" else raw_dicom
    ours = lambda item: read_image(item[0], modality=item[1])  # noqa: E731
    pp = Preprocessing(mri_norm="zscore", pet_norm="mean")
    _time(lambda it: raw(it[0]), items)  # warm the page cache
    t_raw, t_ours, t_ingest = [], [], []
    for _ in range(reps):  # alternate so drift hits all three alike
        t_raw.append(_time(lambda it: raw(it[0]), items))
        t_ours.append(_time(ours, items))
        t0 = time.perf_counter()
        ingest_manifest(manifest, pp)
        t_ingest.append(time.perf_counter() - t0)
    n = len(items)
    raw_vps = n / statistics.median(t_raw)
    ours_vps = n / statistics.median(t_ours)
    ingest_vps = n / statistics.median(t_ingest)
    return {"format": fmt, "volumes": n, "reps": reps,
            "raw_volumes_per_s": round(raw_vps, 2),
            "read_volumes_per_s": round(ours_vps, 2),
            "ingest_volumes_per_s": round(ingest_vps, 2),
            "read_ratio": round(ours_vps / raw_vps, 3),
            "ingest_ratio": round(ingest_vps / raw_vps, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="bigger cohort and volumes")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest.json")
    args = ap.parse_args(argv)
    n, shape = (48, (128, 128, 96)) if args.full else (24, (64, 64, 48))
    results = []
    with tempfile.TemporaryDirectory(prefix="medsyft-bench-") as tmp:
        for fmt in ("dicom", "nifti"):
            manifest = write_synthetic_cohort(Path(tmp) / fmt, n=n, seed=1, shape=shape,
                                              spacing_mm=2.0, mri_format=fmt, pet_format=fmt)
            results.append(bench_format(manifest, fmt, args.reps))
    print(f"ingest: {n} subjects x 2 modalities, volumes {'x'.join(map(str, shape))}")
    print(f"{'format':8} {'raw vol/s':>10} {'read vol/s':>11} {'ratio':>6} "
          f"{'ingest vol/s':>13} {'ratio':>6}")
    for r in results:
        print(f"{r['format']:8} {r['raw_volumes_per_s']:>10.1f} {r['read_volumes_per_s']:>11.1f} "
              f"{r['read_ratio']:>6.3f} {r['ingest_volumes_per_s']:>13.1f} "
              f"{r['ingest_ratio']:>6.3f}")
    write_result("ingest", {"subjects": n, "shape": list(shape), "goal_read_ratio": 0.9,
                            "results": results}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
