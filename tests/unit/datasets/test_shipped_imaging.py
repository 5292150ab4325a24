"""The readers against the test files that ship inside the installed pydicom and nibabel.

Images among them must read with the right shape; truncated, non-image and
foreign-format files must be refused with a `DataError` (and, through the
CLI, one line and a non-zero exit, never a traceback).
"""

from __future__ import annotations

from pathlib import Path

import nibabel
import pydicom
import pytest
from typer.testing import CliRunner

from datasets.reader import read_image
from datasets.volume import DataError
from sites.entrypoint import app

DICOM_DIR = Path(pydicom.__file__).parent / "data" / "test_files"
NIB_DIR = Path(nibabel.__file__).parent / "tests" / "data"

IMAGES = [  # file, expected (i, j, k) shape, modality
    (DICOM_DIR / "MR_small.dcm", (64, 64, 1), "mri"),
    (DICOM_DIR / "MR_small_RLE.dcm", (64, 64, 1), "mri"),
    (DICOM_DIR / "MR_small_implicit.dcm", (64, 64, 1), "mri"),
    (DICOM_DIR / "MR_small_bigendian.dcm", (64, 64, 1), "mri"),
    (DICOM_DIR / "CT_small.dcm", (128, 128, 1), "ct"),
    (NIB_DIR / "anatomical.nii", (33, 41, 25), "unknown"),
    (NIB_DIR / "standard.nii.gz", (4, 5, 7), "unknown"),
]

REFUSED = [  # file, words in the reason
    (DICOM_DIR / "rtplan.dcm", "not an image: RT Plan Storage"),
    (DICOM_DIR / "rtstruct.dcm", "not an image"),
    (DICOM_DIR / "rtdose.dcm", "not an image: RT Dose Storage"),
    (DICOM_DIR / "test-SR.dcm", "not an image: Comprehensive SR Storage"),
    (DICOM_DIR / "waveform_ecg.dcm", "not an image"),
    (DICOM_DIR / "liver_1frame.dcm", "not an image: Segmentation Storage"),
    (DICOM_DIR / "MR_truncated.dcm", "truncated"),
    (DICOM_DIR / "SC_rgb_rle_2frame.dcm", "colour image"),
    (DICOM_DIR / "README.txt", "not a DICOM file"),
    (NIB_DIR / "example4d.nii.gz", "4D file with 2 volumes"),
    (NIB_DIR / "functional.nii", "4D file with 20 volumes"),
    (NIB_DIR / "analyze.hdr", "Analyze files are not supported"),
    (NIB_DIR / "minc1_1_scale.mnc", "MINC files are not supported"),
]


@pytest.mark.parametrize("path,shape,modality", IMAGES, ids=lambda v: getattr(v, "name", None))
def test_shipped_images_read_with_their_shape(path, shape, modality):
    vol = read_image(path)
    assert vol.shape == shape and vol.modality == modality
    assert all(s > 0 for s in vol.spacing)


def test_shipped_mr_geometry_matches_its_header():
    vol = read_image(DICOM_DIR / "MR_small.dcm")
    ds = pydicom.dcmread(DICOM_DIR / "MR_small.dcm")
    ipp = [float(v) for v in ds.ImagePositionPatient]
    assert vol.affine[:3, 3].tolist() == pytest.approx([-ipp[0], -ipp[1], ipp[2]])
    assert vol.spacing[:2] == pytest.approx([float(ds.PixelSpacing[1]),
                                             float(ds.PixelSpacing[0])])
    assert float(vol.data.max()) == pytest.approx(float(ds.pixel_array.max()))


def test_shipped_4d_nifti_gives_the_chosen_frame():
    vol = read_image(NIB_DIR / "example4d.nii.gz", frame=1)
    img = nibabel.load(str(NIB_DIR / "example4d.nii.gz"))
    assert vol.shape == img.shape[:3]


@pytest.mark.parametrize("path,reason", REFUSED, ids=lambda v: getattr(v, "name", None))
def test_shipped_non_images_are_refused_with_a_reason(path, reason):
    with pytest.raises(DataError) as info:
        read_image(path)
    assert reason in str(info.value) and path.name in str(info.value)


@pytest.mark.parametrize("source,keep", [
    (DICOM_DIR / "MR_small.dcm", 2000), (DICOM_DIR / "MR_small.dcm", 400),
    (DICOM_DIR / "CT_small.dcm", 10_000), (NIB_DIR / "standard.nii.gz", 60),
    (NIB_DIR / "anatomical.nii", 6000), (NIB_DIR / "anatomical.nii", 100),
])
def test_truncated_copies_are_refused_cleanly(tmp_path, source, keep):
    target = tmp_path / source.name
    target.write_bytes(source.read_bytes()[:keep])
    with pytest.raises(DataError) as info:
        read_image(target)
    assert target.name in str(info.value)


@pytest.mark.parametrize("path", [DICOM_DIR / "MR_truncated.dcm", DICOM_DIR / "rtplan.dcm",
                                  NIB_DIR / "minc1_1_scale.mnc", Path("/nonexistent/scan")])
def test_cli_inspect_refuses_in_one_line_without_traceback(path):
    result = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 1
    text = result.output.strip()
    assert text.startswith("error:") and "Traceback" not in text
    assert path.name in text.replace("\n", "")


def test_cli_inspect_json_reports_geometry():
    import json

    result = CliRunner().invoke(app, ["data", "inspect", str(DICOM_DIR / "MR_small.dcm"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["modality"] == "mri" and data["shape"] == [64, 64, 1]
    assert data["orientation"] == "LPS" and data["technical"]["Modality"] == "MR"


@pytest.mark.filterwarnings("ignore:The pixel data is")
@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm",
                                  "MR_small_padded.dcm", "MR_small_bigendian.dcm"])
def test_direct_buffer_read_agrees_with_pydicom(name):
    import numpy as np

    from datasets.dicom_series import _native_dtype, _pixels

    ds = pydicom.dcmread(DICOM_DIR / name)
    dtype = _native_dtype(ds)
    count = int(ds.Rows) * int(ds.Columns)
    got = _pixels(DICOM_DIR / name, ds, dtype, count).reshape(ds.Rows, ds.Columns)
    np.testing.assert_array_equal(got, pydicom.dcmread(DICOM_DIR / name).pixel_array)
    if name == "MR_small_bigendian.dcm":
        assert dtype is None  # decoded by pydicom, not by the fast path
