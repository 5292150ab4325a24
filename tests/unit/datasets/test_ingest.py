"""DICOM/NIfTI reading, SUV, preprocessing and manifests (no datasite needed).

Round trips write real files with pydicom/nibabel and read them back through
the product's readers; refusals are checked for their specific reason.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from datasets.dicom_series import read_dicom
from datasets.ingest import ingest_manifest
from datasets.manifest import ManifestError, load_manifest
from datasets.nifti_files import read_nifti
from datasets.preprocess import Preprocessing, reorient_ras, resample, target_grid
from datasets.reader import read_image
from datasets.synthetic import generate_cohort
from datasets.synthetic_files import (
    PetAcquisition,
    grid_affine,
    write_dicom,
    write_nifti,
    write_synthetic_cohort,
)
from datasets.volume import DataError, Volume


def _affine(spacing=(1.2, 0.9, 2.5), origin=(-30.0, 12.5, 40.0), rotation_deg=0.0):
    a = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)],
                          [0, np.sin(a / 2), np.cos(a / 2)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _vol(shape=(12, 10, 8), affine=None, seed=0, modality="mri") -> Volume:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.0, 2.0, size=shape).astype(np.float32)
    return Volume(data=data, affine=_affine() if affine is None else affine, modality=modality)


def _world(vol: Volume, idx) -> np.ndarray:
    return vol.affine[:3, :3] @ np.asarray(idx, dtype=float) + vol.affine[:3, 3]


class RawBq(PetAcquisition):
    """Writes the given values as Bq/ml unchanged, with hand-set decay facts."""

    def __init__(self, weight=80.0, dose=370e6, delay_s=3600.0):
        self.weight_kg, self.dose_bq, self.delay_s = weight, dose, delay_s
        self.half_life_s = 6586.2
        self.inject = dt.datetime(2024, 1, 2, 10, 0, 0)

    def suv_to_bqml(self) -> float:
        return 1.0


# --- DICOM round trips -------------------------------------------------------------------

def test_dicom_series_round_trip_keeps_array_and_geometry(tmp_path):
    vol = _vol()
    write_dicom(tmp_path / "s", vol)
    back = read_dicom(tmp_path / "s")
    assert back.source == "dicom-series" and back.modality == "mri"
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    np.testing.assert_allclose(back.data, vol.data, atol=2.0 / 32000 + 1e-6)
    assert back.spacing == pytest.approx((1.2, 0.9, 2.5), abs=1e-5)


def test_slices_are_ordered_by_position_not_file_name_or_instance_number(tmp_path):
    vol = _vol(seed=1)
    rng = np.random.default_rng(5)
    names = {k: f"{v:08x}.dcm" for k, v in enumerate(rng.permutation(10_000)[:vol.shape[2]])}
    write_dicom(tmp_path / "s", vol, file_names=names.__getitem__)
    files = sorted((tmp_path / "s").iterdir())
    assert [f.name for f in files] != [names[k] for k in range(vol.shape[2])]  # really shuffled
    back = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(back.data, vol.data, atol=1e-4)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_oblique_series_round_trip_and_flag(tmp_path):
    vol = _vol(affine=_affine(rotation_deg=25.0), seed=2)
    write_dicom(tmp_path / "s", vol)
    back = read_dicom(tmp_path / "s")
    assert back.oblique
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    np.testing.assert_allclose(back.data, vol.data, atol=1e-4)


def test_left_handed_affine_reads_back_as_the_same_world_image(tmp_path):
    aff = _affine()
    aff[:3, 2] *= -1  # slices run against the normal
    vol = _vol(affine=aff, seed=3)
    write_dicom(tmp_path / "s", vol)
    a, b = reorient_ras(read_dicom(tmp_path / "s")), reorient_ras(vol)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_allclose(a.data, b.data, atol=1e-4)


def test_enhanced_multiframe_round_trip(tmp_path):
    vol = _vol(affine=_affine(rotation_deg=-15.0), seed=4)
    write_dicom(tmp_path / "mf", vol, multiframe=True)
    files = list((tmp_path / "mf").iterdir())
    assert len(files) == 1
    for path in (tmp_path / "mf", files[0]):  # the folder and the file itself
        back = read_dicom(path)
        assert back.source == "dicom-multiframe"
        np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
        np.testing.assert_allclose(back.data, vol.data, atol=1e-4)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    vol = _vol(seed=5)
    write_dicom(tmp_path / "s", vol)
    def double(ds):
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * 2:.10g}"
        ds.RescaleIntercept = "-3"

    _edit((tmp_path / "s").iterdir(), double)
    back = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(back.data, vol.data * 2 - 3, atol=1e-3)


# --- DICOM refusals ----------------------------------------------------------------------

def _series(tmp_path, name="s", seed=0, **kw) -> Path:
    return write_dicom(tmp_path / name, _vol(seed=seed, **kw))


def _edit(files, change, save_to=None) -> None:
    """Apply `change(ds)` to each DICOM file and save it (in place, or to `save_to`)."""
    for f in files:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(save_to or f)


def _by_position(folder: Path) -> list[Path]:
    files = list(folder.iterdir())
    return sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


def test_missing_slice_is_refused(tmp_path):
    folder = _series(tmp_path)
    _by_position(folder)[4].unlink()
    with pytest.raises(DataError, match="1 missing slice"):
        read_dicom(folder)


def test_mixed_series_are_refused(tmp_path):
    a, b = _series(tmp_path, "a"), _series(tmp_path, "b", seed=1)
    shutil.copy(next(b.iterdir()), a / "intruder.dcm")
    with pytest.raises(DataError, match="mixed series: 2 series"):
        read_dicom(a)


def test_inconsistent_orientation_is_refused(tmp_path):
    folder = _series(tmp_path)
    c, s = np.cos(0.1), np.sin(0.1)
    _edit([_by_position(folder)[3]],
          lambda ds: setattr(ds, "ImageOrientationPatient", [c, s, 0, -s, c, 0]))
    with pytest.raises(DataError, match="ImageOrientationPatient differs"):
        read_dicom(folder)


def test_inconsistent_pixel_spacing_is_refused(tmp_path):
    folder = _series(tmp_path)
    _edit([_by_position(folder)[2]], lambda ds: setattr(ds, "PixelSpacing", [1.0, 1.0]))
    with pytest.raises(DataError, match="PixelSpacing 1x1 differs"):
        read_dicom(folder)


def test_duplicate_slice_position_is_refused(tmp_path):
    folder = _series(tmp_path)
    _edit([_by_position(folder)[2]],
          lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()),
          save_to=folder / "echo2.dcm")
    with pytest.raises(DataError, match="same position"):
        read_dicom(folder)


def test_non_image_object_in_a_series_folder_is_refused(tmp_path):
    folder = _series(tmp_path)
    shutil.copy(pydicom.data.get_testdata_file("rtplan.dcm"), folder / "plan.dcm")
    with pytest.raises(DataError, match=r"plan\.dcm: not an image: RT Plan Storage"):
        read_dicom(folder)


def test_stray_non_dicom_file_is_named(tmp_path):
    folder = _series(tmp_path)
    (folder / "notes.txt").write_text("scanned on tuesday\n")
    with pytest.raises(DataError, match=r"notes\.txt: not a DICOM file"):
        read_dicom(folder)


# --- PET SUV -------------------------------------------------------------------------------

def _pet_series(tmp_path, acq, value=5000.0, shape=(6, 5, 4)) -> Path:
    vol = Volume(np.full(shape, value, dtype=np.float32), _affine(), "pet")
    return write_dicom(tmp_path / "pet", vol, pet=acq)


def test_suv_bw_matches_a_hand_computed_value(tmp_path):
    # 80 kg, 370 MBq F-18 injected 10:00:00, series start 11:00:00 (3600 s):
    # decayed dose = 370e6 * 2 ** (-3600 / 6586.2) = 253_314_180 Bq
    # SUVbw = 5000 Bq/ml * 80_000 g / 253_314_180 Bq = 1.579067
    vol = read_dicom(_pet_series(tmp_path, RawBq()))
    assert vol.modality == "pet" and vol.units.startswith("SUVbw")
    np.testing.assert_allclose(vol.data, 1.579067, rtol=1e-4)
    assert vol.suv.decay_time_s == [pytest.approx(3600.0)]
    assert vol.suv.decayed_dose_bq[0] == pytest.approx(253_314_180, rel=1e-6)
    assert "80 kg" in vol.suv.summary() and "series start" in vol.suv.summary()


def test_suv_decay_correction_admin_and_none(tmp_path):
    folder = _pet_series(tmp_path, RawBq())
    _edit(list(folder.iterdir()), lambda ds: setattr(ds, "DecayCorrection", "ADMIN"))
    vol = read_dicom(folder)
    np.testing.assert_allclose(vol.data, 5000 * 80_000 / 370e6, rtol=1e-4)  # 1.081081
    _edit(list(folder.iterdir()), lambda ds: setattr(ds, "DecayCorrection", "NONE"))
    vol = read_dicom(folder)  # each slice k acquired 3600 + 5 k s after injection
    for k in range(vol.shape[2]):
        expected = 5000 * 80_000 / (370e6 * 2 ** (-(3600 + 5 * k) / 6586.2))
        np.testing.assert_allclose(vol.data[:, :, k], expected, rtol=1e-4)


@pytest.mark.parametrize("edit,message", [
    (lambda ds: setattr(ds, "Units", "CNTS"), "Units CNTS cannot be converted"),
    (lambda ds: delattr(ds, "PatientWeight"), "lacks PatientWeight"),
    (lambda ds: setattr(ds, "CorrectedImage", ["ATTN"]), "lacks DECY"),
    (lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"),
     "without RadiopharmaceuticalInformationSequence"),
])
def test_pet_without_what_suv_needs_is_refused(tmp_path, edit, message):
    folder = _pet_series(tmp_path, RawBq())
    _edit(list(folder.iterdir()), edit)
    with pytest.raises(DataError, match=message):
        read_dicom(folder)


def test_units_gml_are_taken_as_suv(tmp_path):
    folder = _pet_series(tmp_path, RawBq(), value=2.5)
    _edit(list(folder.iterdir()), lambda ds: setattr(ds, "Units", "GML"))
    vol = read_dicom(folder)
    np.testing.assert_allclose(vol.data, 2.5, rtol=1e-4)
    assert vol.suv.scale == [1.0]


# --- NIfTI ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_round_trip(tmp_path, name):
    vol = _vol(affine=_affine(rotation_deg=10.0))
    write_nifti(tmp_path / name, vol)
    back = read_nifti(tmp_path / name, modality="mri")
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)


def test_nifti_4d_is_refused_unless_a_frame_is_chosen(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 6, 7, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, _affine()), str(tmp_path / "f.nii.gz"))
    with pytest.raises(DataError, match="4D file with 3 volumes"):
        read_nifti(tmp_path / "f.nii.gz")
    np.testing.assert_array_equal(read_nifti(tmp_path / "f.nii.gz", frame=2).data,
                                  data[..., 2])
    with pytest.raises(DataError, match="frame 3 out of range"):
        read_nifti(tmp_path / "f.nii.gz", frame=3)


def test_modality_must_match_the_manifest_column(tmp_path):
    folder = _pet_series(tmp_path, RawBq())
    with pytest.raises(DataError, match="expected MRI but the file holds PET"):
        read_image(folder, modality="mri")


# --- preprocessing ---------------------------------------------------------------------------

def test_reorient_to_ras_keeps_world_positions():
    aff = np.array([[0, 0, -2.0, 50], [-1.5, 0, 0, 20], [0, 3.0, 0, -10], [0, 0, 0, 1]])
    vol = _vol(shape=(7, 8, 9), affine=aff)
    assert vol.orientation != "RAS"
    ras = reorient_ras(vol)
    assert ras.orientation == "RAS"
    # the brightest voxel sits at the same world point before and after
    i = np.unravel_index(np.argmax(vol.data), vol.shape)
    j = np.unravel_index(np.argmax(ras.data), ras.shape)
    np.testing.assert_allclose(_world(vol, i), _world(ras, j), atol=1e-6)


def test_resampling_moves_a_point_to_the_same_world_location():
    vol = Volume(np.zeros((20, 20, 20), np.float32), _affine(spacing=(2, 2, 2),
                                                            origin=(-19, -19, -19)), "pet")
    vol.data[13, 6, 9] = 1.0
    src = _world(vol, (13, 6, 9))
    target, shape = target_grid(vol, Preprocessing(spacing_mm=(1, 1, 1), shape=(40, 40, 40)))
    out = resample(vol, target, shape)
    peak = np.unravel_index(np.argmax(out.data), out.shape)
    np.testing.assert_allclose(target[:3, :3] @ peak + target[:3, 3], src, atol=1.0)


def test_pet_is_paired_onto_the_mri_grid_by_world_coordinates(tmp_path):
    truth = generate_cohort(2, seed=9, shape=(16, 16, 16))
    mri_aff = grid_affine((16, 16, 16), 10.0)
    # PET: coarser voxels, a larger field of view shifted 23 mm right and 11 mm up, oblique
    pet_aff = grid_affine((14, 14, 14), 14.0, rotation_deg=9.0)
    pet_aff[:3, 3] += [23.0, 0.0, 11.0]
    lines = ["subject_id,mri,pet,label"]
    for i in range(2):
        write_dicom(tmp_path / f"mri{i}", Volume(truth.volumes["mri"][i], mri_aff, "mri"))
        pet = resample(Volume(truth.volumes["pet"][i], mri_aff, "pet"), pet_aff, (14, 14, 14))
        write_nifti(tmp_path / f"pet{i}.nii.gz", pet)
        lines.append(f"s{i},mri{i},pet{i}.nii.gz,{truth.labels[i]}")
    (tmp_path / "cohort.csv").write_text("\n".join(lines) + "\n")
    cohort, report = ingest_manifest(tmp_path / "cohort.csv",
                                     Preprocessing(mri_norm="none", pet_norm="none"))
    assert cohort.volume_shape == (16, 16, 16) and report.oblique_inputs == 2
    np.testing.assert_allclose(cohort.volumes["mri"], truth.volumes["mri"], atol=1e-3)
    for i in range(2):
        got, want = cohort.volumes["pet"][i], truth.volumes["pet"][i]
        inside = np.zeros_like(want, dtype=bool)
        inside[3:13, 3:13, 3:13] = True  # away from the coarse grid's blurred edge
        r = np.corrcoef(got[inside], want[inside])[0, 1]
        shifted = np.corrcoef(np.roll(got, 2, axis=0)[inside], want[inside])[0, 1]
        assert r > 0.75 and r > shifted + 0.4, (r, shifted)  # voxel noise caps r


def test_ingest_reproduces_the_generator_through_dicom(tmp_path):
    manifest = write_synthetic_cohort(tmp_path, n=4, seed=3, shape=(12, 12, 12))
    cohort, report = ingest_manifest(manifest, Preprocessing(mri_norm="none", pet_norm="none"))
    truth = generate_cohort(4, seed=3, shape=(12, 12, 12))
    np.testing.assert_array_equal(cohort.labels, truth.labels)
    for m in ("mri", "pet"):
        np.testing.assert_allclose(cohort.volumes[m], truth.volumes[m], atol=1e-3)
    assert report.units["pet"].startswith("SUVbw") and report.suv_factor_range
    assert report.ignored_columns == ["scanner"]


def test_zscore_and_mean_normalisation_use_each_volume_alone(tmp_path):
    manifest = write_synthetic_cohort(tmp_path, n=2, seed=4, shape=(12, 12, 12),
                                      mri_format="nifti", pet_format="nifti")
    cohort, _ = ingest_manifest(manifest, Preprocessing())
    for i in range(2):
        mri = cohort.volumes["mri"][i]
        assert abs(mri[mri > mri.mean()].mean()) < 1.5  # centred on its own foreground
        pet = cohort.volumes["pet"][i]
        assert pet[pet > pet.mean()].mean() == pytest.approx(1.0, rel=0.15)


def test_subjects_on_different_grids_need_a_target_shape(tmp_path):
    a = write_nifti(tmp_path / "a.nii.gz", _vol(shape=(8, 8, 8)))
    b = write_nifti(tmp_path / "b.nii.gz", _vol(shape=(8, 8, 9)))
    (tmp_path / "c.csv").write_text(f"subject_id,mri,label\ns1,{a},0\ns2,{b},1\n")
    with pytest.raises(DataError, match=r"c\.csv:3 \(subject s2\): grid 8x8x9 differs"):
        ingest_manifest(tmp_path / "c.csv")
    cohort, _ = ingest_manifest(tmp_path / "c.csv", Preprocessing(shape=(8, 8, 8)))
    assert cohort.volume_shape == (8, 8, 8)


def test_a_broken_subject_names_line_subject_column_and_file(tmp_path):
    manifest = write_synthetic_cohort(tmp_path, n=3, seed=1, shape=(8, 8, 8))
    victim = _by_position(tmp_path / "pet" / "sub-0002")[3]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(DataError) as info:
        ingest_manifest(manifest)
    text = str(info.value)
    assert "cohort.csv:3 (subject sub-0002) column pet" in text and victim.name in text


# --- manifest ------------------------------------------------------------------------------

def _manifest(tmp_path, text: str) -> Path:
    (tmp_path / "img.nii.gz").write_bytes(b"")
    path = tmp_path / "cohort.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,expected", [
    ("subject_id,mri\ns1,img.nii.gz\n", "cohort.csv:1: column label: missing"),
    ("subject_id,label\ns1,0\n", "cohort.csv:1: needs an image column"),
    ("subject_id,mri,label\ns1,img.nii.gz,yes\n",
     "cohort.csv:2 (subject s1): column label: 'yes' is not a non-negative integer"),
    ("subject_id,mri,label\ns1,img.nii.gz,0\ns1,img.nii.gz,1\n",
     "cohort.csv:3: column subject_id: s1 already listed on line 2"),
    ("subject_id,mri,label\ns1,nope.nii.gz,0\n",
     "cohort.csv:2 (subject s1): column mri: nope.nii.gz not found"),
    ("subject_id,mri,pet,label\ns1,img.nii.gz,,0\n",
     "cohort.csv:2 (subject s1): column pet: empty"),
    ("subject_id,mri,label,pet_frame\ns1,img.nii.gz,0,1\n",
     "cohort.csv:1: column pet_frame without column pet"),
    ("subject_id,mri,mri_frame,label\ns1,img.nii.gz,-1,0\n",
     "cohort.csv:2 (subject s1): column mri_frame: '-1' is not a 0-based volume index"),
    ("subject_id,mri,label,mri\ns1,a,0,b\n", "cohort.csv:1: column mri appears more than once"),
    ("", "cohort.csv:1: empty file"),
    ("subject_id,mri,label\n", "cohort.csv:2: no subjects listed"),
    (",mri,label\n,img.nii.gz,0\n", "cohort.csv:1: column subject_id: missing"),
])
def test_manifest_errors_name_line_and_column(tmp_path, text, expected):
    with pytest.raises(ManifestError) as info:
        load_manifest(_manifest(tmp_path, text))
    assert expected in str(info.value)


def test_manifest_reports_every_problem_at_once(tmp_path):
    path = _manifest(tmp_path, "subject_id,mri,label\ns1,img.nii.gz,x\n,img.nii.gz,0\n"
                               "s3,gone.nii,1\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert len(info.value.problems) == 3


def test_manifest_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "scans").mkdir()
    path = tmp_path / "scans" / "cohort.csv"
    (tmp_path / "scans" / "a.nii.gz").write_bytes(b"")
    path.write_text("subject_id,mri,label,age\ns1,a.nii.gz,1,71\n")
    m = load_manifest(path)
    assert m.rows[0].mri == tmp_path / "scans" / "a.nii.gz"
    assert m.ignored_columns == ["age"] and m.label_counts() == {1: 1}


def test_grid_affine_is_centred():
    aff = grid_affine((10, 10, 10), 2.0, rotation_deg=30.0)
    centre = aff[:3, :3] @ np.array([4.5, 4.5, 4.5]) + aff[:3, 3]
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)


# --- descriptions and de-identification (no site) ------------------------------------------

def test_description_follows_the_release_rule():
    from policies.schema import Release

    c = generate_cohort(23, seed=0, shape=(8, 8, 8))
    c.meta = {"spacing_mm": [2.0, 2.0, 2.5], "orientation": "RAS"}
    counts = c.label_counts()
    exact = c.describe(Release(sample_count="exact"))
    assert "23 subjects" in exact and f"label 1: {counts[1]}" in exact
    assert "2x2x2.5 mm voxels, RAS" in exact
    # rounded: only the DP count is described (here 31), never N or the label counts
    rounded = c.describe(Release(sample_count="rounded", round_to=10), public_n=31)
    assert "about 30 subjects" in rounded and "23" not in rounded
    assert "label 1" not in rounded and "differentially private" in rounded
    assert "withheld" in c.describe(Release(sample_count="rounded"))  # no count: nothing
    hidden = c.describe(Release(sample_count="hidden"))
    assert "withheld" in hidden and "23" not in hidden and "label 1" not in hidden


def test_identifying_header_fields_never_leave_the_readers(tmp_path):
    import json
    import pickle

    from datasets.inspect import inspect_path
    from datasets.synthetic_files import FAKE_IDENTIFIERS

    manifest = write_synthetic_cohort(tmp_path, n=2, seed=0, shape=(8, 8, 8),
                                      mri_format="dicom", pet_format="dicom-multiframe")
    cohort, report = ingest_manifest(manifest)
    blobs = [pickle.dumps(cohort.to_asset()), cohort.describe().encode(),
             report.model_dump_json().encode()]
    for folder in (tmp_path / "mri" / "sub-0001", tmp_path / "pet" / "sub-0001"):
        blobs.append(json.dumps(inspect_path(folder).model_dump(mode="json")).encode())
        blobs.append(pickle.dumps(read_image(folder).tech))
    raw = (tmp_path / "mri" / "sub-0001").iterdir().__next__().read_bytes()
    for value in FAKE_IDENTIFIERS.values():
        assert value.encode() in raw  # the inputs really carry them
        for blob in blobs:
            assert value.encode() not in blob
    assert all(b"sub-0001" not in blob for blob in blobs[:2])


def test_cli_inspect_pet_series_reports_suv_factors(tmp_path):
    import json

    from typer.testing import CliRunner

    from sites.entrypoint import app

    folder = _pet_series(tmp_path, RawBq())
    result = CliRunner().invoke(app, ["data", "inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["modality"] == "pet" and data["units"].startswith("SUVbw")
    assert data["suv"]["scale"][0] == pytest.approx(80_000 / 253_314_180, rel=1e-6)
    human = CliRunner().invoke(app, ["data", "inspect", str(folder)])
    assert "Bq/ml to SUVbw" in human.output and "half-life 6586.2 s" in human.output


def test_cli_ingest_dry_run_reports_and_names_bad_rows(tmp_path):
    import json

    from typer.testing import CliRunner

    from sites.entrypoint import app

    manifest = write_synthetic_cohort(tmp_path, n=3, seed=2, shape=(8, 8, 8),
                                      mri_format="nifti", pet_format="dicom")
    ok = CliRunner().invoke(app, ["data", "ingest", str(manifest), "--shape", "8", "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    assert report["n"] == 3 and report["shape"] == [8, 8, 8]
    assert report["sources"] == {"mri": {"nifti": 3}, "pet": {"dicom-series": 3}}
    manifest.write_text(manifest.read_text().replace(",1,", ",one,", 1).replace(",0,", ",x,", 1))
    bad = CliRunner().invoke(app, ["data", "ingest", str(manifest)])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "cohort.csv:" in bad.output and "column label" in bad.output
