"""PET activity (Bq/ml) to body-weight SUV, with the factors reported.

The formula is the vendor-neutral one from the QIBA/UW-Madison SUV guidance:

    SUVbw = C(t) [Bq/ml] * W [g] / D(t)

    D(t)  = D0 * 2 ** (-Δt / T½)

with D0 = RadionuclideTotalDose (Bq, at injection), T½ = RadionuclideHalfLife
(s), W = PatientWeight (kg) * 1000 and Δt the time from the injection
(RadiopharmaceuticalStartDateTime, or SeriesDate + RadiopharmaceuticalStartTime)
to the time the pixel values are decay-corrected to:

* DecayCorrection START: the series start (SeriesDate/SeriesTime), or the
  earliest AcquisitionTime when the series time is later than it (some
  scanners reset SeriesTime on post-processing);
* DecayCorrection ADMIN: the injection itself, so Δt = 0;
* DecayCorrection NONE: each slice's own AcquisitionTime (one factor per slice).

Units GML are already SUVbw (factor 1). Anything else (CNTS, PROPCNTS, ...) is
refused. The factors may be shown to the data owner; they are never stored in a
published asset. Dates and times are used for the interval only and never leave
this module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from datasets.volume import DataError

SUV_UNITS = "SUVbw (g/ml)"


class SuvFactors(BaseModel):
    """How stored PET values were converted to SUVbw (per slice when DecayCorrection is NONE)."""

    units_in: str
    units_out: str = SUV_UNITS
    decay_correction: str | None = None
    decay_reference: str | None = None
    patient_weight_kg: float | None = None
    injected_dose_bq: float | None = None
    half_life_s: float | None = None
    decay_time_s: list[float] = []
    decayed_dose_bq: list[float] = []
    scale: list[float]  # multiply stored (rescaled) values by this, per slice or one for all

    def summary(self) -> str:
        lo, hi = min(self.scale), max(self.scale)
        factor = f"{lo:.6g}" if np.isclose(lo, hi) else f"{lo:.6g}..{hi:.6g}"
        if self.units_in == "GML":
            return "stored as SUVbw (Units GML), factor 1"
        dts = ", ".join(f"{t:.0f}" for t in sorted(set(np.round(self.decay_time_s))))
        return (f"Bq/ml to SUVbw: weight {self.patient_weight_kg:g} kg, dose "
                f"{self.injected_dose_bq:.4g} Bq, half-life {self.half_life_s:g} s, decay to "
                f"{self.decay_reference} after {dts} s, factor {factor} g/ml per Bq/ml")


def _date(value: Any) -> dt.date | None:
    text = str(value or "").strip()
    if len(text) < 8:
        return None
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _time(value: Any) -> dt.time | None:
    text = str(value or "").strip().replace(":", "")
    if len(text) < 2:
        return None
    try:
        whole, _, frac = text.partition(".")
        whole = whole.ljust(6, "0")
        micro = int((frac + "000000")[:6]) if frac else 0
        return dt.time(int(whole[0:2]), int(whole[2:4]), int(whole[4:6]), micro)
    except ValueError:
        return None


def _datetime(value: Any) -> dt.datetime | None:
    text = str(value or "").strip()
    for sep in ("+", "-"):  # drop a UTC offset suffix; all times here share one clock
        if sep in text[8:]:
            text = text[: 8 + text[8:].index(sep)]
    d, t = _date(text), _time(text[8:] if len(text) > 8 else "0")
    return dt.datetime.combine(d, t) if d and t else None


def _at(date: dt.date | None, time: dt.time | None) -> dt.datetime | None:
    if time is None:
        return None
    return dt.datetime.combine(date or dt.date(2000, 1, 1), time)


def _seconds(later: dt.datetime, earlier: dt.datetime, dated: bool) -> float:
    s = (later - earlier).total_seconds()
    if s < 0 and not dated:  # times without dates across midnight
        s += 86_400.0
    return s


def suv_factors(path: str, headers: Sequence[Any]) -> SuvFactors:
    """Factors for a PET series; `headers` are the slices' datasets in slice order."""
    first = headers[0]
    units = str(first.get("Units", "") or "").upper()
    if units == "GML":
        return SuvFactors(units_in="GML", scale=[1.0])
    if units != "BQML":
        raise DataError(path, f"PET Units {units or '(missing)'} cannot be converted to SUV "
                        "(need BQML or GML)")
    corrected = [str(c).upper() for c in (first.get("CorrectedImage") or [])]
    decay = str(first.get("DecayCorrection", "") or "").upper()
    if decay in ("START", "ADMIN") and corrected and "DECY" not in corrected:
        raise DataError(path, f"DecayCorrection {decay} but CorrectedImage lacks DECY")
    info_seq = first.get("RadiopharmaceuticalInformationSequence")
    if not info_seq:
        raise DataError(path, "PET without RadiopharmaceuticalInformationSequence: no dose "
                        "or half-life for SUV")
    info = info_seq[0]
    missing = [k for k in ("RadionuclideTotalDose", "RadionuclideHalfLife")
               if info.get(k) in (None, "")]
    if first.get("PatientWeight") in (None, ""):
        missing.append("PatientWeight")
    if missing:
        raise DataError(path, f"PET lacks {', '.join(missing)}: cannot compute SUVbw")
    weight = float(first.PatientWeight)
    dose = float(info.RadionuclideTotalDose)
    half = float(info.RadionuclideHalfLife)
    if weight <= 0 or dose <= 0 or half <= 0:
        raise DataError(path, "PatientWeight, RadionuclideTotalDose and RadionuclideHalfLife "
                        "must be positive for SUVbw")

    series_date = _date(first.get("SeriesDate")) or _date(first.get("AcquisitionDate"))
    inject = _datetime(info.get("RadiopharmaceuticalStartDateTime"))
    dated = inject is not None or series_date is not None
    if inject is None:
        inject = _at(series_date, _time(info.get("RadiopharmaceuticalStartTime")))
    if decay == "ADMIN":
        times, reference = [0.0], "administration"
    elif decay == "START":
        if inject is None:
            raise DataError(path, "PET lacks RadiopharmaceuticalStartTime: cannot decay-correct")
        series = _at(series_date, _time(first.get("SeriesTime")))
        acq = [_at(_date(h.get("AcquisitionDate")) or series_date, _time(h.get("AcquisitionTime")))
               for h in headers]
        acq = [a for a in acq if a is not None]
        start = series
        if acq and (start is None or min(acq) < start):
            start = min(acq)
        if start is None:
            raise DataError(path, "PET lacks SeriesTime and AcquisitionTime: cannot decay-correct")
        times, reference = [_seconds(start, inject, dated)], "series start"
    elif decay == "NONE":
        if inject is None:
            raise DataError(path, "PET lacks RadiopharmaceuticalStartTime: cannot decay-correct")
        times = []
        for h in headers:
            a = _at(_date(h.get("AcquisitionDate")) or series_date, _time(h.get("AcquisitionTime")))
            if a is None:
                raise DataError(path, "DecayCorrection NONE needs each slice's AcquisitionTime")
            times.append(_seconds(a, inject, dated))
        reference = "each slice's acquisition"
    else:
        raise DataError(path, f"PET DecayCorrection {decay or '(missing)'} not understood "
                        "(need START, ADMIN or NONE)")
    if any(t < 0 for t in times):
        raise DataError(path, "PET scan time is before the injection time")
    decayed = [dose * 2.0 ** (-t / half) for t in times]
    return SuvFactors(units_in="BQML", decay_correction=decay, decay_reference=reference,
                      patient_weight_kg=weight, injected_dose_bq=dose, half_life_s=half,
                      decay_time_s=times, decayed_dose_bq=decayed,
                      scale=[weight * 1000.0 / d for d in decayed])


def apply_suv(data: np.ndarray, factors: SuvFactors) -> np.ndarray:
    """Scale a (i, j, k) volume in place by the SUV factor (per k slice if several)."""
    scale = np.asarray(factors.scale, dtype=np.float32)
    if scale.size == 1:
        data *= scale[0]
    else:
        data *= scale[None, None, :]
    return data
