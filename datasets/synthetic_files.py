"""Write synthetic subjects as real files: DICOM MR/PT series (single-slice or enhanced
multi-frame), NIfTI, and lesion masks as DICOM Segmentation objects or NIfTI label maps,
plus the cohort manifest CSV.

The demo and the tests publish synthetic cohorts through the same ingest path
as hospital data, so these files carry what scanners write: geometry in LPS,
per-slice rescale, PET in Bq/ml with dose, half-life, weight and times, and
also fake identifying fields (names, dates, institution, free text) so that
de-identification is exercised. Every identifying value is made up here;
`FAKE_IDENTIFIERS` lists them for leak tests. This module must never read real
patient data.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from datasets.preprocess import resample
from datasets.synthetic import NEUTRAL, SiteProfile, generate_cohort
from datasets.volume import LPS_TO_RAS, Volume

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ENHANCED_PET_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
F18_HALF_LIFE_S = 6586.2

#: Made-up identifying values written into every synthetic file (leak tests look for them).
FAKE_IDENTIFIERS = {
    "PatientName": "Quillfeather^Ottoline",
    "PatientID": "MRN-7730-5521",
    "PatientBirthDate": "19480229",
    "InstitutionName": "Saint Wendeline Infirmary",
    "InstitutionAddress": "12 Larkspur Row, Emberford",
    "ReferringPhysicianName": "Brackenridge^Tobiah",
    "AccessionNumber": "ACC99120417",
    "StudyDate": "20240917",
    "StationName": "WENDELINE-MR3",
    "SeriesDescription": "T1 Quillfeather 20240917",
    "OperatorsName": "Vantreece^Maud",
}

Format = Literal["dicom", "dicom-multiframe", "nifti"]
MaskFormat = Literal["dicom-seg", "nifti"]
#: the synthetic lesion's segments (mask values 1 and 2)
SEGMENT_LABELS = ("enhancing core", "oedema")


class PetAcquisition:
    """Decay facts of one synthetic PET scan (made up, within clinical ranges)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.weight_kg = float(np.round(rng.uniform(50.0, 105.0), 1))
        self.dose_bq = float(np.round(rng.uniform(150e6, 400e6), -5))
        self.inject = dt.datetime(2024, 9, 17, 9, 0, 0) + dt.timedelta(
            minutes=float(rng.integers(0, 120)))
        self.delay_s = float(rng.integers(40 * 60, 75 * 60))
        self.half_life_s = F18_HALF_LIFE_S

    @property
    def start(self) -> dt.datetime:
        return self.inject + dt.timedelta(seconds=self.delay_s)

    def suv_to_bqml(self) -> float:
        """Bq/ml per SUVbw unit, decay-corrected to the series start."""
        decayed = self.dose_bq * 2.0 ** (-self.delay_s / self.half_life_s)
        return decayed / (self.weight_kg * 1000.0)


def _fmt_time(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _base(sop_class: str, modality: str, series_uid: str, study_uid: str,
          frame_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    for key, value in FAKE_IDENTIFIERS.items():
        setattr(ds, key, value)
    ds.SeriesDate = FAKE_IDENTIFIERS["StudyDate"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def _quantise(plane: np.ndarray) -> tuple[np.ndarray, float]:
    peak = float(np.max(np.abs(plane)))
    slope = peak / 32000.0 if peak > 0 else 1.0
    return np.round(plane / slope).astype(np.int16), slope


def _geometry(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    lps = LPS_TO_RAS @ affine_ras
    di, dj = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = np.concatenate([lps[:3, 0] / di, lps[:3, 1] / dj])
    return lps, iop, [float(dj), float(di)], lps[:3, 2]


def _pet_tags(ds: Dataset, pet: PetAcquisition) -> None:
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.PatientWeight = str(pet.weight_kg)
    ds.SeriesTime = _fmt_time(pet.start)
    info = Dataset()
    info.RadiopharmaceuticalStartTime = _fmt_time(pet.inject)
    info.RadionuclideTotalDose = str(pet.dose_bq)
    info.RadionuclideHalfLife = str(pet.half_life_s)
    info.Radiopharmaceutical = "Fluorodeoxyglucose"
    ds.RadiopharmaceuticalInformationSequence = Sequence([info])


def write_dicom(folder: Path, vol: Volume, pet: PetAcquisition | None = None,
                multiframe: bool = False, file_names: Callable[[int], str] | None = None) -> Path:
    """Write `vol` (RAS affine; SUV values when `pet`) as an MR or PT series under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    modality = "PT" if pet is not None else "MR"
    data = vol.data * np.float32(pet.suv_to_bqml()) if pet is not None else vol.data
    lps, iop, pixel_spacing, step = _geometry(vol.affine)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    ni, nj, nk = data.shape
    names = file_names or (lambda k: f"IM{k:05d}.dcm")
    thickness = f"{np.linalg.norm(step):.6g}"
    if multiframe:
        sop = ENHANCED_PET_STORAGE if pet else ENHANCED_MR_STORAGE
        ds = _base(sop, modality, series, study, frame)
        ds.Rows, ds.Columns, ds.NumberOfFrames = nj, ni, nk
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = pixel_spacing
        measures.SliceThickness = thickness
        orient = Dataset()
        orient.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        shared.PixelMeasuresSequence = Sequence([measures])
        shared.PlaneOrientationSequence = Sequence([orient])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per_frame, frames = [], []
        for k in range(nk):
            q, slope = _quantise(data[:, :, k].T)
            frames.append(q)
            item, plane, pvt = Dataset(), Dataset(), Dataset()
            plane.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
            pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = f"{slope:.10g}", "0", "US"
            item.PlanePositionSequence = Sequence([plane])
            item.PixelValueTransformationSequence = Sequence([pvt])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
        if pet is not None:
            _pet_tags(ds, pet)
            ds.AcquisitionTime = _fmt_time(pet.start)
        ds.PixelData = np.stack(frames).tobytes()
        ds.save_as(folder / names(0), enforce_file_format=True)
        return folder
    sop = PET_STORAGE if pet else MR_STORAGE
    for k in range(nk):
        ds = _base(sop, modality, series, study, frame)
        ds.Rows, ds.Columns = nj, ni
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.PixelSpacing = [f"{v:.6g}" for v in pixel_spacing]
        ds.SliceThickness = thickness
        ds.InstanceNumber = nk - k  # deliberately against the spatial order
        q, slope = _quantise(data[:, :, k].T)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        if pet is not None:
            _pet_tags(ds, pet)
            ds.AcquisitionTime = _fmt_time(pet.start + dt.timedelta(seconds=5 * k))
        else:
            ds.MagneticFieldStrength = "3"
            ds.RepetitionTime, ds.EchoTime = "2300", "2.98"
        ds.PixelData = q.tobytes()
        ds.save_as(folder / names(k), enforce_file_format=True)
    return folder


def write_dicom_seg(path: Path, mask: Volume, labels: tuple[str, ...] = SEGMENT_LABELS
                    ) -> Path:
    """Write a label map (class numbers 1..len(labels), RAS affine) as a BINARY DICOM
    Segmentation: one frame per segment and plane that holds any of it (a segment absent
    from the subject has no frame), placed by its per-frame ImagePositionPatient."""
    from pydicom.pixels import pack_bits

    path.parent.mkdir(parents=True, exist_ok=True)
    lps, iop, pixel_spacing, step = _geometry(mask.affine)
    ds = _base(SEG_STORAGE, "SEG", generate_uid(), generate_uid(), generate_uid())
    ni, nj, nk = mask.data.shape
    ds.Rows, ds.Columns = nj, ni
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.SegmentationType = "BINARY"
    ds.ContentLabel = "LESION"
    segments = []
    for number, label in enumerate(labels, start=1):
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = label
        item.SegmentAlgorithmType = "MANUAL"
        segments.append(item)
    ds.SegmentSequence = Sequence(segments)
    shared, measures, orient = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = pixel_spacing
    measures.SliceThickness = f"{np.linalg.norm(step):.6g}"
    measures.SpacingBetweenSlices = f"{np.linalg.norm(step):.6g}"
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, frames = [], []
    data = np.rint(mask.data).astype(np.int64)
    for number in range(1, len(labels) + 1):
        for k in range(nk):
            plane = data[:, :, k].T == number
            if not plane.any():
                continue
            item, position, ident = Dataset(), Dataset(), Dataset()
            position.ImagePositionPatient = [f"{v:.6f}"
                                             for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
            ident.ReferencedSegmentNumber = number
            item.PlanePositionSequence = Sequence([position])
            item.SegmentIdentificationSequence = Sequence([ident])
            per_frame.append(item)
            frames.append(plane.astype(np.uint8))
    if not frames:  # a subject without a lesion: one empty frame of segment 1
        item, position, ident = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3]]
        ident.ReferencedSegmentNumber = 1
        item.PlanePositionSequence = Sequence([position])
        item.SegmentIdentificationSequence = Sequence([ident])
        per_frame.append(item)
        frames.append(np.zeros((nj, ni), dtype=np.uint8))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = pack_bits(np.stack(frames))
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, vol: Volume) -> Path:
    """Write `vol` as NIfTI-1 (.nii or .nii.gz) with its affine as sform and qform."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(vol.data.astype(np.float32), vol.affine)
    img.header["descrip"] = FAKE_IDENTIFIERS["SeriesDescription"].encode()
    img.set_qform(vol.affine, code=1)
    img.set_sform(vol.affine, code=1)
    nib.save(img, str(path))
    return path


def grid_affine(shape: tuple[int, int, int], spacing_mm: float,
                rotation_deg: float = 0.0) -> np.ndarray:
    """A RAS affine centred on the origin, optionally rotated about the A axis (oblique)."""
    a = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing_mm
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine


def write_synthetic_cohort(
    out_dir: str | Path, n: int, seed: int, profile: SiteProfile = NEUTRAL,
    shape: tuple[int, int, int] = (24, 24, 24), spacing_mm: float = 8.0,
    mri_format: Format = "dicom", pet_format: Format = "dicom",
    pet_spacing_mm: float | None = None, rotation_deg: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    mask_format: MaskFormat | None = None, mask_spacing_mm: float | None = None,
) -> Path:
    """Generate a cohort and write it as files plus `cohort.csv`; return the manifest path.

    PET is written on its own grid when `pet_spacing_mm` differs (same field of
    view, coarser voxels), so ingest has to pair it onto the MRI grid. With
    `mask_format` the cohort has lesions and each subject a `mask` (a DICOM SEG or a
    NIfTI label map), on its own grid when `mask_spacing_mm` is given (finer or coarser:
    ingest resamples it with nearest neighbour).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cohort = generate_cohort(n=n, seed=seed, profile=profile, shape=shape,
                             lesions=mask_format is not None)
    rng = np.random.default_rng(seed + 1)
    mri_affine = grid_affine(shape, spacing_mm, rotation_deg)
    pet_affine, pet_shape = mri_affine, shape
    if pet_spacing_mm and pet_spacing_mm != spacing_mm:
        pet_shape = tuple(max(2, int(round(s * spacing_mm / pet_spacing_mm))) for s in shape)
        pet_affine = grid_affine(pet_shape, pet_spacing_mm, rotation_deg)  # type: ignore[arg-type]
    rows = []
    for i in range(n):
        sid = f"sub-{i + 1:04d}"
        entry = {"subject_id": sid, "label": int(cohort.labels[i]), "scanner": profile.name}
        mri = Volume(cohort.volumes["mri"][i], mri_affine, "mri")
        pet = Volume(cohort.volumes["pet"][i], mri_affine, "pet")
        if pet_shape != shape:
            pet = resample(pet, pet_affine, pet_shape)  # type: ignore[arg-type]
        if mask_format is not None and cohort.masks is not None:
            mask = Volume(cohort.masks[i].astype(np.float32), mri_affine, "mask")
            if mask_spacing_mm and mask_spacing_mm != spacing_mm:
                m_shape = tuple(max(2, int(round(s * spacing_mm / mask_spacing_mm)))
                                for s in shape)
                mask = resample(mask, grid_affine(m_shape, mask_spacing_mm, rotation_deg),
                                m_shape, order=0)  # type: ignore[arg-type]
            if mask_format == "nifti":
                target = out / "mask" / f"{sid}.nii.gz"
                write_nifti(target, mask)
            else:
                target = out / "mask" / f"{sid}.dcm"
                write_dicom_seg(target, mask)
            entry["mask"] = str(target.relative_to(out))
        for name, vol, fmt in (("mri", mri, mri_format), ("pet", pet, pet_format)):
            acq = PetAcquisition(rng) if name == "pet" else None
            if fmt == "nifti":
                target = out / name / f"{sid}.nii.gz"
                write_nifti(target, vol)
            else:
                target = out / name / sid
                write_dicom(target, vol, pet=acq, multiframe=fmt == "dicom-multiframe")
            entry[name] = str(target.relative_to(out))
        rows.append(entry)
        if progress:
            progress(i + 1, n)
    manifest = out / "cohort.csv"
    with manifest.open("w", newline="") as fh:
        fields = ["subject_id", "mri", "pet", *(["mask"] if mask_format else []), "label",
                  "scanner"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return manifest
