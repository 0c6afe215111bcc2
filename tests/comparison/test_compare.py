"""compare ranks fits by PSIS-LOO / WAIC per trial or per subject, names unreliable Pareto k's,
and refuses fits of different data."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest

from pp_aif.comparison import compare, pointwise_fit, subject_elpd
from pp_aif.errors import DataError, DiagnosticWarning
from tests.common import assert_close

C, D, N, K = 2, 400, 4, 6


def synthetic_fit(rng, mean, spread, actions=None, present=None):
    """An InferenceData shaped like pp_aif.fit's, with a known pointwise log-likelihood (0 on
    absent trials, as pp_aif.fit stores them)."""
    present = np.ones((N, K), dtype=bool) if present is None else present
    log_likelihood = (mean + spread * rng.normal(size=(C, D, N, K))) * present
    return az.from_dict(
        posterior={"alpha": rng.lognormal(size=(C, D, N))},
        log_likelihood={"actions": log_likelihood},
        observed_data={"actions": np.zeros((N, K, 2, 2)) if actions is None else actions},
        constant_data={"present": present},
        coords={"subject": [f"s{n}" for n in range(N)], "trial": np.arange(K)},
        dims={
            "alpha": ["subject"],
            "actions": ["subject", "trial"],
            "present": ["subject", "trial"],
        },
    )


def elpd_loo_by_hand(log_likelihood: np.ndarray) -> float:
    """sum over observations of ln mean_s p(y_i | theta_s): PSIS-LOO's target without the
    smoothing, which matches it when the importance ratios are tame (as here)."""
    flat = log_likelihood.reshape(C * D, -1)
    loo = []
    for i in range(flat.shape[1]):
        others = flat[:, i]
        # ln p(y_i | y_-i) = -ln mean_s exp(-ln p(y_i | theta_s))
        loo.append(-(np.log(np.mean(np.exp(-others)))))
    return float(np.sum(loo))


def assert_elpd_close(actual, log_likelihood: np.ndarray) -> None:
    """PSIS-LOO's elpd against ``elpd_loo_by_hand`` of the same pointwise log-likelihood."""
    assert_close(
        actual,
        elpd_loo_by_hand(log_likelihood),
        rtol=1e-3,
        atol=0,
        reason="PSIS smooths the largest importance ratios",
    )


def test_compare_ranks_by_elpd_per_trial_and_per_subject(rng):
    good = synthetic_fit(rng, -0.5, 0.05)
    bad = synthetic_fit(rng, -0.9, 0.05)
    table = compare({"bad": bad, "good": good})
    assert list(table.index) == ["good", "bad"]
    assert_elpd_close(table.loc["good", "elpd_loo"], good.log_likelihood["actions"].values)
    per_subject = compare({"bad": bad, "good": good}, unit="subject")
    summed = good.log_likelihood["actions"].values.sum(-1)
    assert_elpd_close(per_subject.loc["good", "elpd_loo"], summed)
    assert pointwise_fit(good, "subject").log_likelihood["actions"].dims == (
        "chain",
        "draw",
        "subject",
    )
    waic = compare({"bad": bad, "good": good}, ic="waic")
    assert list(waic.index) == ["good", "bad"] and "elpd_waic" in waic.columns


def test_unreliable_pareto_k_names_the_subject_and_trial(rng):
    good = synthetic_fit(rng, -0.5, 0.05)
    wild = synthetic_fit(rng, -0.5, 0.05)
    values = wild.log_likelihood["actions"].values
    values[0, :5, 2, 3] = -60.0  # a few draws make trial 3 of subject s2 very unlikely
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare({"good": good, "wild": wild})
    messages = [str(w.message) for w in caught if w.category is DiagnosticWarning]
    assert len(messages) == 1, [str(w.message) for w in caught]
    # ArviZ's threshold for 800 draws: 1 - 1 / log10(800) = 0.66
    assert "model 'wild': Pareto k > 0.66 for 1 of 24 trials" in messages[0]
    assert "(s2, trial 3)" in messages[0]


def test_bad_comparisons_are_named(rng):
    a = synthetic_fit(rng, -0.5, 0.05)
    with pytest.raises(ValueError, match=r"need at least two models"):
        compare({"a": a})
    with pytest.raises(ValueError, match=r"ic: 'bic' is not one of"):
        compare({"a": a, "b": a}, ic="bic")
    with pytest.raises(ValueError, match=r"unit: 'draw' is not one of"):
        compare({"a": a, "b": a}, unit="draw")
    other = synthetic_fit(rng, -0.5, 0.05, actions=np.ones((N, K, 2, 2)))
    with pytest.raises(ValueError, match=r"were fitted to different actions"):
        compare({"a": a, "other": other})
    point = az.from_dict(
        posterior={"alpha": np.ones((1, 1, N))},
        log_likelihood={"actions": -np.ones((1, 1, N, K))},
        coords={"subject": [f"s{n}" for n in range(N)], "trial": np.arange(K)},
        dims={"alpha": ["subject"], "actions": ["subject", "trial"]},
    )
    with pytest.raises(ValueError, match=r"fits\['map'\]: has 1 posterior draw\(s\)"):
        compare({"a": a, "map": point})
    no_loglik = az.from_dict(posterior={"alpha": rng.normal(size=(C, D))})
    with pytest.raises(ValueError, match=r"fits\['x'\]: has no log_likelihood"):
        compare({"a": a, "x": no_loglik})


def test_absent_trials_are_no_observations(rng):
    """A subject with fewer trials: pp_aif.fit stores 0 for the missing ones and marks them in
    constant_data; LOO must neither count them nor call them unreliable (their k is infinite)."""
    present = np.ones((N, K), dtype=bool)
    present[1, 4:] = False
    fits = {
        name: synthetic_fit(rng, mean, 0.05, present=present)
        for name, mean in (("good", -0.5), ("bad", -0.9))
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = compare(fits)
    assert not [w for w in caught if w.category is DiagnosticWarning]
    kept = fits["good"].log_likelihood["actions"].values[:, :, present]  # (C, D, 22)
    assert_elpd_close(table.loc["good", "elpd_loo"], kept)
    # each subject's elpd over its own trials, for BMS, in the fit's order of subjects (here
    # not sorted, as ids of any kind may be)
    shuffled = fits["good"].assign_coords(subject=["s3", "s0", "s2", "s1"])
    values = shuffled.log_likelihood["actions"].values
    per_subject = subject_elpd(shuffled)
    for n in range(values.shape[2]):
        assert_elpd_close(per_subject[n], values[:, :, n, present[n]])
    loo = az.loo(pointwise_fit(fits["good"]), pointwise=True)
    assert loo.n_data_points == int(present.sum()) == 22


# ---- issue #15, item 10: the documented names, WAIC's diagnostics, bad fits


def test_compare_bms_and_log_evidence_are_top_level_names():
    import pp_aif
    from pp_aif import comparison

    for name in ("compare", "bms", "log_evidence"):
        assert getattr(pp_aif, name) is getattr(comparison, name)
        assert name in pp_aif.__all__


def test_every_pp_aif_name_in_the_readme_and_docs_exists():
    import importlib
    import re

    from tests.conftest import REPOSITORY

    pages = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for dotted in set(re.findall(r"\bpp_aif(?:\.[A-Za-z_]\w*)+", page.read_text())):
            parts = dotted.split(".")
            target = importlib.import_module("pp_aif")
            for i, part in enumerate(parts[1:], start=1):
                if hasattr(target, part):
                    target = getattr(target, part)
                    continue
                try:  # a submodule not imported by its package
                    target = importlib.import_module(".".join(parts[: i + 1]))
                except ImportError:
                    missing.append(f"{page.name}: {dotted}")
                    break
    assert not missing, missing


def wild_fit(rng, subject=2, trial=3):
    """A fit whose log-likelihood of one trial swings over the draws (variance >> 0.4)."""
    fit = synthetic_fit(rng, -0.5, 0.05)
    fit.log_likelihood["actions"].values[:, :, subject, trial] = -0.5 - 3 * rng.random((C, D))
    return fit


def test_waic_names_the_observations_where_it_is_unreliable(rng):
    good, wild = synthetic_fit(rng, -0.5, 0.05), wild_fit(rng)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = compare({"good": good, "wild": wild}, ic="waic")
    assert "elpd_waic" in table.columns
    assert [w.category for w in caught] == [DiagnosticWarning], [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "model 'wild': WAIC is unreliable for 1 of 24 trials" in message
    assert "posterior variance of their log predictive density exceeds 0.4" in message
    assert "(s2, trial 3)" in message and "ic='loo'" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare({"good": good, "wild": wild}, ic="waic", unit="subject")
    assert len(caught) == 1 and "1 of 4 subjects" in str(caught[0].message)
    assert ": s2;" in str(caught[0].message)


def test_waic_of_tame_fits_warns_nothing(rng):
    fits = {"a": synthetic_fit(rng, -0.5, 0.05), "b": synthetic_fit(rng, -0.6, 0.05)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(fits, ic="waic")


def test_bad_fits_are_named(rng):
    a = synthetic_fit(rng, -0.5, 0.05)
    with pytest.raises(TypeError, match=r"fits: is a list; give a dict \{name: InferenceData\}"):
        compare([a, a])
    with pytest.raises(DataError, match=r"fits\['b'\]: is a ndarray, not an arviz InferenceData"):
        compare({"a": a, "b": np.zeros((C, D, N, K))})
    with pytest.raises(ValueError, match=r"unit: 'draw' is not one of"):
        compare({"a": a, "b": a}, ic="waic", unit="draw")
    broken = synthetic_fit(rng, -0.5, 0.05)
    broken.log_likelihood["actions"].values[1, 7, 3, 5] = np.nan
    message = r"fits\['b'\]: log_likelihood\['actions'\] is nan at chain 1, draw 7, subject s3, "
    with pytest.raises(DataError, match=message + r"trial 5 \(1 non-finite"):
        compare({"a": a, "b": broken})
    broken.log_likelihood["actions"].values[1, 7, 3, 5] = -np.inf
    with pytest.raises(DataError, match=r"is -inf at chain 1, draw 7, subject s3, trial 5"):
        compare({"a": a, "b": broken})
    reordered = a.assign_coords(subject=["s1", "s0", "s2", "s3"])
    with pytest.raises(DataError, match=r"fits\['b'\]: subjects \['s1', 's0'.* differ from"):
        compare({"a": a, "b": reordered})
    flat = az.from_dict(
        posterior={"alpha": rng.normal(size=(C, D))},
        log_likelihood={"actions": rng.normal(size=(C, D, N * K))},
    )
    with pytest.raises(DataError, match=r"fits\['b'\]: log_likelihood\['actions'\] has dims"):
        compare({"a": a, "b": flat})


def test_subject_elpd_and_pointwise_fit_check_the_fit(rng):
    point = az.from_dict(
        posterior={"alpha": np.ones((1, 1, N))},
        log_likelihood={"actions": -np.ones((1, 1, N, K))},
        coords={"subject": [f"s{n}" for n in range(N)], "trial": np.arange(K)},
        dims={"alpha": ["subject"], "actions": ["subject", "trial"]},
    )
    with pytest.raises(DataError, match=r"fit: has 1 posterior draw\(s\); PSIS-LOO and WAIC"):
        subject_elpd(point)
    with pytest.raises(DataError, match=r"fit: is a dict, not an arviz InferenceData"):
        pointwise_fit({"actions": np.zeros(3)})
