"""The synthetic cohorts: deterministic, heterogeneous across sites, learnable, safe mocks."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from datasets.cohort import Cohort
from datasets.synthetic import DEMO_PROFILES, generate_cohort, generate_mock

SHAPE = (24, 24, 24)


def test_same_seed_same_cohort_and_different_seed_different_cohort():
    a = generate_cohort(12, seed=3, profile=DEMO_PROFILES["riverside"])
    b = generate_cohort(12, seed=3, profile=DEMO_PROFILES["riverside"])
    c = generate_cohort(12, seed=4, profile=DEMO_PROFILES["riverside"])
    assert np.array_equal(a.volumes["mri"], b.volumes["mri"])
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.volumes["mri"], c.volumes["mri"])


def test_sites_differ_in_intensity_noise_and_class_balance():
    cohorts = {k: generate_cohort(200, seed=1, profile=p) for k, p in DEMO_PROFILES.items()}
    brain_mean = {k: float(c.volumes["mri"][:, 8:16, 8:16, 4:8].mean())
                  for k, c in cohorts.items()}
    balance = {k: float(c.labels.mean()) for k, c in cohorts.items()}
    assert max(brain_mean.values()) - min(brain_mean.values()) > 0.2
    assert balance["riverside"] < 0.4 < 0.55 < balance["northgate"]


def _ventricle_feature(c: Cohort) -> np.ndarray:
    mri = c.volumes["mri"]
    centre = mri[:, 8:16, 8:16, 8:16]
    ref = np.median(mri[:, 6:18, 6:18, 6:18].reshape(c.n, -1), axis=1)[:, None, None, None]
    return (centre < 0.5 * ref).mean(axis=(1, 2, 3))


def test_disease_signal_is_learnable_but_not_trivial():
    c = generate_cohort(300, seed=2)
    auc = roc_auc_score(c.labels, _ventricle_feature(c))
    assert 0.7 < auc < 0.98


def test_mock_has_the_private_schema_but_other_contents():
    private = generate_cohort(20, seed=9, profile=DEMO_PROFILES["northgate"]).to_asset()
    mock = generate_mock(8, SHAPE, seed=9).to_asset()
    assert set(mock) == set(private)
    for key in ("mri", "pet", "labels"):
        assert mock[key].dtype == private[key].dtype
        assert mock[key].shape[1:] == private[key].shape[1:]
    assert mock["cohort_id"] != private["cohort_id"]
    assert not np.array_equal(mock["mri"][:8], private["mri"][:8])


def test_asset_round_trip_and_description_reveals_schema_only():
    c = generate_cohort(10, seed=0, shape=(8, 8, 8))
    back = Cohort.from_asset(c.to_asset())
    assert np.array_equal(back.volumes["pet"], c.volumes["pet"])
    text = c.describe()
    assert "10 subjects" in text and "8x8x8" in text
    assert str(int(c.labels.sum())) + " disease" not in text


def test_lesions_and_misalignment_leave_a_cohort_without_them_unchanged():
    import numpy as np

    from datasets.synthetic import CORE, OEDEMA, generate_cohort

    plain = generate_cohort(12, seed=5, shape=(16, 16, 16))
    lesioned = generate_cohort(12, seed=5, shape=(16, 16, 16), lesions=True)
    assert plain.masks is None and lesioned.masks.shape == (12, 16, 16, 16)
    assert np.array_equal(plain.labels, lesioned.labels)
    outside = lesioned.masks == 0
    assert np.array_equal(plain.volumes["mri"][outside], lesioned.volumes["mri"][outside])
    with_lesion = lesioned.masks.reshape(12, -1).max(1) > 0
    assert 0 < with_lesion.sum() < 12  # some subjects have one, some do not
    # the lesion shows in both images: brighter MRI, a hot core in the PET
    core, rim = lesioned.masks == CORE, lesioned.masks == OEDEMA
    assert lesioned.volumes["mri"][core].mean() > plain.volumes["mri"][core].mean() + 0.2
    assert lesioned.volumes["pet"][core].mean() > plain.volumes["pet"][core].mean() + 0.3
    assert lesioned.volumes["pet"][rim].mean() < plain.volumes["pet"][rim].mean()
    moved = generate_cohort(12, seed=5, shape=(16, 16, 16), lesions=True, misalign=1.0)
    assert np.array_equal(moved.volumes["mri"], lesioned.volumes["mri"])
    assert not np.allclose(moved.volumes["pet"], lesioned.volumes["pet"], atol=0.05)


def test_a_mask_travels_in_the_asset_and_the_mock_has_one_of_the_same_schema():
    import numpy as np

    from datasets.cohort import Cohort
    from datasets.synthetic import generate_cohort, generate_mock

    cohort = generate_cohort(6, seed=2, shape=(8, 8, 8), lesions=True)
    back = Cohort.from_asset(cohort.to_asset())
    assert np.array_equal(back.masks, cohort.masks) and back.mask_classes == 3
    assert back.target("mask").dtype == np.int64 and back.target("pet").shape == (6, 8, 8, 8)
    assert "mask" in cohort.describe() and "classes 0..2" in cohort.describe()
    mock = generate_mock(16, (8, 8, 8), seed=2, lesions=True)
    assert mock.masks is not None and mock.mask_classes == cohort.mask_classes
    assert "mask" not in generate_mock(16, (8, 8, 8), seed=2).to_asset()
    with pytest.raises(KeyError, match="no mask"):
        generate_cohort(2, seed=1, shape=(8, 8, 8)).target("mask")
    with pytest.raises(ValueError, match="the volumes' grid"):
        Cohort(volumes=cohort.volumes, labels=cohort.labels, masks=cohort.masks[:, :4])
