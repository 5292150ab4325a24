"""Voxel masks in the ingest path: NIfTI label maps and DICOM SEG, resampled with nearest
neighbour onto each subject's grid, the number of classes declared by the data owner,
nothing of a SEG's header kept. Files are written with pydicom/nibabel and read back
through the product's readers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from datasets.ingest import ingest_manifest
from datasets.masks import read_mask
from datasets.preprocess import Preprocessing, resample
from datasets.synthetic import generate_cohort
from datasets.synthetic_files import (
    FAKE_IDENTIFIERS,
    grid_affine,
    write_dicom,
    write_dicom_seg,
    write_nifti,
    write_synthetic_cohort,
)
from datasets.volume import DataError, Volume

SHAPE = (16, 16, 16)
PP = Preprocessing(shape=SHAPE, spacing_mm=(8.0, 8.0, 8.0))


def _truth(n: int, seed: int) -> np.ndarray:
    return generate_cohort(n=n, seed=seed, shape=SHAPE, lesions=True).masks


@pytest.mark.parametrize("fmt", ["dicom-seg", "nifti"])
def test_masks_on_the_images_grid_come_back_voxel_for_voxel(tmp_path, fmt):
    manifest = write_synthetic_cohort(tmp_path, n=5, seed=3, shape=SHAPE, mask_format=fmt)
    cohort, report = ingest_manifest(manifest, PP, mask_classes=3)
    truth = _truth(5, 3)
    assert truth.max() == 2 and (truth > 0).any()  # the test data has both classes
    np.testing.assert_array_equal(cohort.masks, truth)
    assert cohort.mask_classes == 3 and report.mask_classes == 3
    assert report.mask_sources == {"dicom-seg" if fmt == "dicom-seg" else "nifti-labels": 5}


def test_a_seg_is_a_standard_binary_segmentation(tmp_path):
    """What the writer makes is what a PACS would send: Modality SEG, the SEG storage
    class, one-bit frames, each frame naming its segment and plane."""
    mask = Volume(_truth(1, 3)[0].astype(np.float32), grid_affine(SHAPE, 8.0), "mask")
    path = write_dicom_seg(tmp_path / "seg.dcm", mask)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.SegmentationType == "BINARY" and ds.BitsAllocated == 1
    assert [s.SegmentNumber for s in ds.SegmentSequence] == [1, 2]
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), *ds.pixel_array.shape[-2:])
    assert set(np.unique(frames)) <= {0, 1}
    numbers = {f.SegmentIdentificationSequence[0].ReferencedSegmentNumber
               for f in ds.PerFrameFunctionalGroupsSequence}
    assert numbers == {1, 2}
    back = read_mask(path)  # the planes that hold a segment (a SEG omits empty frames)
    assert back.shape[2] < SHAPE[2]
    on_grid = resample(back, mask.affine, SHAPE, order=0).data  # placed by world position
    np.testing.assert_array_equal(on_grid, mask.data)


def test_a_mask_on_another_grid_is_resampled_without_blending_classes(tmp_path):
    """A finer mask grid (4 mm under 8 mm images): nearest neighbour gives class numbers
    only, never the 1.5 a linear interpolation would make between core and oedema."""
    manifest = write_synthetic_cohort(tmp_path, n=4, seed=5, shape=SHAPE,
                                      mask_format="dicom-seg", mask_spacing_mm=4.0)
    cohort, _ = ingest_manifest(manifest, PP, mask_classes=3)
    truth = _truth(4, 5)
    assert set(np.unique(cohort.masks)) <= {0, 1, 2}
    assert (cohort.masks == truth).mean() > 0.97  # the same lesions, up to the boundary
    assert (cohort.masks[truth == 0] == 0).mean() > 0.98


def _manifest_with(tmp_path: Path, mask_cell: str) -> Path:
    base = write_synthetic_cohort(tmp_path / "c", n=2, seed=1, shape=SHAPE,
                                  mask_format="nifti")
    rows = list(csv.DictReader(base.open()))
    rows[1]["mask"] = mask_cell
    with base.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return base


def test_refusals_name_the_manifest_line_subject_and_column(tmp_path):
    manifest = write_synthetic_cohort(tmp_path / "a", n=3, seed=3, shape=SHAPE,
                                      mask_format="nifti")
    with pytest.raises(DataError, match=r"cohort.csv: the manifest has a mask column: "
                                        r"declare how many classes"):
        ingest_manifest(manifest, PP)
    with pytest.raises(DataError, match=r"cohort.csv:\d \(subject sub-\d+\) column mask: "
                                        r"class 2 outside the declared 2 classes"):
        ingest_manifest(manifest, PP, mask_classes=2)
    # an image where a label map belongs: fractional values
    image = tmp_path / "image.nii.gz"
    write_nifti(image, Volume(np.random.default_rng(0).random(SHAPE, dtype=np.float32),
                              grid_affine(SHAPE, 8.0), "mri"))
    with pytest.raises(DataError, match=r"cohort.csv:3 \(subject sub-0002\) column mask: .*"
                                        r"not a label map"):
        ingest_manifest(_manifest_with(tmp_path / "b", str(image)), PP, mask_classes=3)
    # an MR series where a SEG belongs
    series = write_dicom(tmp_path / "mr", Volume(np.ones(SHAPE, np.float32),
                                                 grid_affine(SHAPE, 8.0), "mri"))
    first = sorted(series.iterdir())[0]
    with pytest.raises(DataError, match=r"column mask: .*not a DICOM Segmentation \(Modality "
                                        r"MR\)"):
        ingest_manifest(_manifest_with(tmp_path / "d", str(first)), PP, mask_classes=3)


def test_nothing_of_a_segs_header_reaches_the_cohort_or_the_report(tmp_path):
    manifest = write_synthetic_cohort(tmp_path, n=2, seed=3, shape=SHAPE,
                                      mask_format="dicom-seg")
    seg = next((tmp_path / "mask").iterdir())
    assert str(pydicom.dcmread(seg).PatientName) == FAKE_IDENTIFIERS["PatientName"]
    cohort, report = ingest_manifest(manifest, PP, mask_classes=3)
    text = json.dumps(cohort.meta) + report.model_dump_json() + json.dumps(
        {k: str(v) for k, v in cohort.to_asset().items() if not hasattr(v, "shape")})
    for value in FAKE_IDENTIFIERS.values():
        assert value not in text
        for part in value.split("^"):
            assert part not in text
