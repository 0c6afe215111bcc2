"""BehaviourData: long-format tables read back to the simulation they came from; every kind of bad
table is a DataError that lists its rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import pp_aif
from pp_aif.data import BehaviourData, long_format


@pytest.fixture(scope="module")
def tmaze():
    return pp_aif.load_task("tmaze")


@pytest.fixture(scope="module")
def record(tmaze):
    return pp_aif.simulate(tmaze, 3, 2, seed=0)


@pytest.fixture
def table(record, tmaze):
    return long_format(record, tmaze)


def test_csv_round_trip_equals_the_simulation(record, tmaze, table, tmp_path):
    path = tmp_path / "behaviour.csv"
    table.assign(age=np.repeat([20, 30, 40], len(table) // 3)).to_csv(path, index=False)
    data = BehaviourData.read(path, tmaze)
    assert torch.equal(data.observations, torch.as_tensor(record["observation"].values))
    assert torch.equal(data.actions, torch.as_tensor(record["action"].values[:, :, :-1]))
    assert data.present.all() and data.subjects == ("agent-0", "agent-1", "agent-2")
    assert data.covariates["age"].tolist() == [20, 30, 40]


def test_a_slice_of_subjects_equals_reading_their_rows_alone(tmaze, table):
    with_age = table.assign(age=np.repeat([20, 30, 40], len(table) // 3))
    sliced = BehaviourData.read(with_age, tmaze).subjects_slice(1, 3)
    alone = BehaviourData.read(with_age[with_age["subject"] != "agent-0"], tmaze)
    for name in ("observations", "actions", "present"):
        assert torch.equal(getattr(sliced, name), getattr(alone, name)), name
    assert sliced.subjects == alone.subjects == ("agent-1", "agent-2")
    pd.testing.assert_frame_equal(sliced.covariates, alone.covariates)


def test_rows_in_any_order_and_missing_trials(record, tmaze, table):
    shuffled = table.sample(frac=1.0, random_state=0)
    dropped = shuffled[~((shuffled["subject"] == "agent-1") & (shuffled["trial"] == 1))]
    data = BehaviourData.read(dropped, tmaze)
    assert data.present.tolist() == [[True, True], [True, False], [True, True]]
    assert torch.equal(data.observations[0], torch.as_tensor(record["observation"].values[0]))


def test_anonymised_subjects_are_salted_hashes(tmaze, table):
    data = BehaviourData.read(table, tmaze, anonymise=True, salt="secret")
    again = BehaviourData.read(table, tmaze, anonymise=True, salt="secret")
    other = BehaviourData.read(table, tmaze, anonymise=True, salt="other")
    assert data.subjects == again.subjects and data.subjects != other.subjects
    assert not any("agent" in s for s in data.subjects)
    with pytest.raises(ValueError, match=r"anonymise=True needs a salt"):
        BehaviourData.read(table, tmaze, anonymise=True)


def broken(table, row, column, value):
    table = table.copy()
    table[column] = table[column].astype(object)
    table.loc[row, column] = value
    return table


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["what"]), r"columns: missing \['what'\]"),
        (lambda t: broken(t, 4, "where", 9), r"column 'where': row 4 hold \[9\]; .* 0\.\.4"),
        (lambda t: broken(t, 5, "where", 1.5), r"column 'where': row 5 hold .* not integer"),
        (lambda t: broken(t, 3, "location", -1), r"column 'location': row 3 hold \[-1\]"),
        (lambda t: broken(t, 7, "time", 0), r"\(subject, trial, time\): rows 6, 7 repeat"),
        (lambda t: broken(t, 2, "time", 5), r"column 'time': row 2 have time >= 3"),
        (lambda t: t.drop(index=[1]), r"column 'time': rows 0, 1 belong to trials with \[2\]"),
        (lambda t: broken(t, 0, "trial", "x"), r"column 'trial': row 0 hold \['x'\]"),
        (lambda t: t.iloc[:0], r"the table has no rows"),
    ],
    ids=[
        "missing column",
        "outcome out of range",
        "non-integer outcome",
        "negative control",
        "duplicated key",
        "time beyond the trial",
        "gap in time",
        "non-integer trial",
        "empty",
    ],
)
def test_bad_tables_name_their_rows(tmaze, table, change, message):
    with pytest.raises(pp_aif.DataError, match=message):
        BehaviourData.read(change(table), tmaze)


def test_bad_files_are_named(tmaze, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file"):
        BehaviourData.read(tmp_path / "absent.csv", tmaze)
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(pp_aif.DataError, match=r"unknown format '.xlsx'"):
        BehaviourData.read(path, tmaze)
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(pp_aif.DataError, match=r"columns: missing \['subject', 'trial'"):
        BehaviourData.read(tmp_path / "other.csv", tmaze)
