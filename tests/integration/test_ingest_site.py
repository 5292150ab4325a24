"""Publishing a DICOM/NIfTI cohort on a real datasite: de-identification, mock, description.

The synthetic files carry made-up names, dates, an institution and free text
(`FAKE_IDENTIFIERS`). None of it may reach the private asset, the mock, the
descriptions, the audit log or any file the site writes; the mock must be the
same whatever the private pixels are.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasets.cohort import Cohort
from datasets.synthetic_files import FAKE_IDENTIFIERS, write_synthetic_cohort
from sites.common.syft_client import login, quiet
from sites.governance.store import Governance
from sites.operator import admin
from tests.support.sites import one_site

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
SHAPE = (12, 12, 12)


def _needles(n: int) -> list[bytes]:
    words = set()
    for value in FAKE_IDENTIFIERS.values():
        words.add(value)
        words.update(w for w in value.replace("^", " ").replace(",", " ").split() if len(w) > 5)
    words.update(f"sub-{i + 1:04d}" for i in range(n))  # subject ids stay with the steward
    return sorted(w.encode() for w in words)


def _leaks(blob: bytes, needles: list[bytes]) -> list[bytes]:
    return [n for n in needles if n in blob or n.lower() in blob.lower()]


@pytest.fixture(scope="module")
def ingested_site(tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp("ingest-site")
    policy = yaml.safe_load((repo_root / "tests/policies/integration.yaml").read_text())
    policy["datasets"]["brain-mri-pet"]["release"] = {"sample_count": "rounded", "round_to": 5}
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    manifest = write_synthetic_cohort(root / "scans", n=14, seed=5, shape=SHAPE,
                                      spacing_mm=14.0, mri_format="dicom",
                                      pet_format="dicom-multiframe", pet_spacing_mm=20.0,
                                      rotation_deg=7.0)
    with one_site(root, "ingest-site", root / "policy.yaml", EMAIL, "Correct-Horse-9-battery",
                  n=14, seed=5, shape=SHAPE, manifest=manifest) as ctx:
        ctx["root"] = root
        yield ctx


def test_private_asset_holds_pixels_labels_and_technical_fields_only(ingested_site):
    from sites.operator.config import load_site
    from sites.operator.lifecycle import admin_password

    d = ingested_site["dir"]
    _, cfg = load_site(d)
    client = login(cfg.host, cfg.port, cfg.admin_email, admin_password(cfg))
    with quiet():
        asset = client.datasets["brain-mri-pet"].assets["cohort"]
        private = asset.data
    assert set(private) == {"format", "cohort_id", "labels", "meta", "mri", "pet"}
    cohort = Cohort.from_asset(private)
    assert cohort.n == 14 and cohort.volume_shape == SHAPE
    assert cohort.meta["orientation"] == "RAS" and cohort.meta["shape"] == list(SHAPE)
    assert "SUVbw" in cohort.meta["units"]["pet"]
    assert not _leaks(pickle.dumps(private), _needles(14))


def test_nothing_identifying_reaches_any_file_the_site_wrote(ingested_site):
    d: Path = ingested_site["dir"]
    needles = _needles(14)
    hits = {}
    readable = 0
    for f in d.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            readable += b"ingested from" in blob  # positive control: the description is there
            found = _leaks(blob, needles)
            if found:
                hits[str(f.relative_to(d))] = found
    assert readable, "the dataset description was not found in any site file (control)"
    assert not hits


def test_researcher_sees_schema_spacing_and_rounded_counts(ingested_site):
    fed = ingested_site["fed"]
    [entry] = fed.datasets()["ingest-site"]
    text = entry["description"]
    assert "MRI, PET" in text and "12x12x12" in text and "mm voxels, RAS" in text
    # the DP count of N (drawn once at publish), rounded; never N, never label counts
    count = Governance(ingested_site["dir"]).dataset("brain-mri-pet")["count_value"]
    assert f"about {max(5, round(count / 5) * 5)} subjects (a differentially private count)" \
        in text
    assert "14 subjects" not in text and "label 1" not in text
    assert not _leaks(text.encode(), _needles(14))


def test_syft_records_the_mocks_size_not_the_private_assets(ingested_site):
    """syft's upload stores the private asset's size in MB where every guest reads it: N
    to the subject (red team, issue 15). The site records the mock's instead."""
    from syft.util.util import get_mb_size

    fed = ingested_site["fed"]
    with quiet():
        [ds] = fed.client("ingest-site").datasets.get_all()
    mock = fed.mock("ingest-site", "brain-mri-pet").to_asset()
    private = ingested_site["cohort"].to_asset()
    assert ds.mb_size == pytest.approx(get_mb_size(mock), rel=0.01)  # mock: 16 subjects
    assert ds.mb_size != pytest.approx(get_mb_size(private), rel=0.01)  # private: 14


def test_mock_is_synthetic_same_schema_and_independent_of_private_values(ingested_site):
    fed = ingested_site["fed"]
    mock = fed.mock("ingest-site", "brain-mri-pet")
    private: Cohort = ingested_site["cohort"]
    assert mock.volume_shape == private.volume_shape
    assert set(mock.volumes) == set(private.volumes)
    assert mock.meta["normalisation"] == private.meta["normalisation"]
    # Neither the mock's size nor any count in its meta gives the cohort's N away.
    assert mock.n == admin.MOCK_SIZE != private.n

    def ints(value):
        if isinstance(value, dict):
            return [i for v in value.values() for i in ints(v)]
        if isinstance(value, (list, tuple)):
            return [i for v in value for i in ints(v)]
        return [value] if isinstance(value, int) and not isinstance(value, bool) else []

    assert private.n not in ints(mock.meta)
    # The same mock comes out for a cohort with other pixel values and labels.
    other = Cohort(volumes={m: np.random.default_rng(1).normal(size=v.shape).astype(np.float32)
                            for m, v in private.volumes.items()},
                   labels=1 - private.labels, meta=dict(private.meta))
    again = admin.mock_for(other)
    for m in mock.volumes:
        np.testing.assert_array_equal(again.volumes[m], mock.volumes[m])
    np.testing.assert_array_equal(again.labels, mock.labels)
