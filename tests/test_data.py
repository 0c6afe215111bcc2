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
        (
            lambda t: broken(t, 4, "where", 9),
            r"column 'where': row 4 holds \[9\], out of .* 0\.\.4",
        ),
        (lambda t: broken(t, 5, "where", 1.5), r"column 'where': row 5 holds \[1\.5\], not integ"),
        (lambda t: broken(t, 3, "location", -1), r"column 'location': row 3 holds \[-1\], neg"),
        (lambda t: broken(t, 7, "time", 0), r"\(subject, trial, time\): rows 6, 7 repeat"),
        (lambda t: broken(t, 2, "time", 5), r"column 'time': row 2 has time >= 3"),
        (lambda t: t.drop(index=[1]), r"column 'time': rows 0, 1 belong to trials with \[2\]"),
        (lambda t: broken(t, 0, "trial", "x"), r"column 'trial': row 0 holds \['x'\], not num"),
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


# ---- issue #15, item 9: identifiers, booleans, non-finite numbers, sources, malformed CSV


def test_mixed_identifier_types_are_refused(tmaze, table):
    mixed = table.astype({"subject": object})
    mixed.loc[mixed["subject"] == "agent-0", "subject"] = 1
    mixed.loc[mixed["subject"] == "agent-1", "subject"] = "1"
    with pytest.raises(pp_aif.DataError, match=r"column 'subject': mixes strings \(rows 6, 7, 8"):
        BehaviourData.read(mixed, tmaze)


def test_numeric_identifiers_are_read_by_value(tmaze, table):
    numbers = table.assign(subject=table["subject"].str[-1].astype(int))
    assert BehaviourData.read(numbers, tmaze).subjects == ("0", "1", "2")
    as_floats = numbers.astype({"subject": float})
    assert BehaviourData.read(as_floats, tmaze).subjects == ("0", "1", "2")
    mixed = numbers.astype({"subject": object})
    mixed.loc[mixed["subject"] == 1, "subject"] = 1.0  # the same number: the same subject
    assert BehaviourData.read(mixed, tmaze).subjects == ("0", "1", "2")


def test_csv_identifiers_are_their_text(tmaze, table, tmp_path):
    renamed = table.replace({"subject": {"agent-0": "01", "agent-1": "1", "agent-2": "NA"}})
    path = tmp_path / "ids.csv"
    renamed.to_csv(path, index=False)
    assert BehaviourData.read(path, tmaze).subjects == ("01", "1", "NA")


def test_spaces_around_identifiers_are_stripped_with_a_warning(tmaze, table):
    spaced = table.copy()
    spaced.loc[[1, 3], "subject"] = " agent-0 "
    message = r"rows 1, 3 have spaces around the identifier \(' agent-0 '\); stripped"
    with pytest.warns(pp_aif.errors.DataWarning, match=message):
        data = BehaviourData.read(spaced, tmaze)
    assert data.subjects == ("agent-0", "agent-1", "agent-2") and data.present.all()
    only_spaces = broken(table, 2, "subject", "  ")
    with pytest.raises(pp_aif.DataError, match=r"column 'subject': row 2 is empty"):
        BehaviourData.read(only_spaces, tmaze)


@pytest.mark.parametrize("column", ["where", "location", "trial", "time"])
def test_boolean_columns_are_refused(tmaze, table, column):
    flags = table.assign(**{column: table[column].fillna(0) > 0})
    with pytest.raises(pp_aif.DataError, match=rf"column '{column}': is boolean \(dtype bool"):
        BehaviourData.read(flags, tmaze)
    one_flag = broken(table, 4, column, True)
    with pytest.raises(pp_aif.DataError, match=rf"column '{column}': row 4 holds \[True\], bool"):
        BehaviourData.read(one_flag, tmaze)


def test_boolean_column_of_a_csv_is_refused(tmaze, table, tmp_path):
    path = tmp_path / "flags.csv"
    table.assign(what=table["what"] > 0).to_csv(path, index=False)
    with pytest.raises(pp_aif.DataError, match=r"column 'what': is boolean"):
        BehaviourData.read(path, tmaze)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("where", np.inf, r"column 'where': row 4 holds \[inf\], not finite; .* 0\.\.4"),
        ("where", -np.inf, r"column 'where': row 4 holds \[-inf\], not finite"),
        ("time", np.inf, r"column 'time': row 4 holds \[inf\], not finite"),
        ("trial", 1e20, r"column 'trial': row 4 holds \[1e\+20\], out of range; .* 0\.\.2\*\*63"),
        ("where", 1e20, r"column 'where': row 4 holds \[1e\+20\], out of range; .* 0\.\.4"),
        ("trial", -1, r"column 'trial': row 4 holds \[-1\], negative"),
        ("where", np.nan, r"column 'where': row 4 is empty; outcomes of modality 'where'"),
        ("location", pd.NA, r"column 'location': row 4 is empty; controls of factor"),
        ("location", 1.5, r"column 'location': row 4 holds \[1\.5\], not integers"),
        ("subject", np.nan, r"column 'subject': row 4 is empty"),
    ],
)
def test_bad_values_are_reported_as_they_are(tmaze, table, column, value, message):
    with pytest.raises(pp_aif.DataError, match=message):
        BehaviourData.read(broken(table, 4, column, value), tmaze)


def test_keys_in_the_index_are_columns(tmaze, table):
    indexed = BehaviourData.read(table.set_index(["subject", "trial"]), tmaze)
    plain = BehaviourData.read(table, tmaze)
    assert indexed.subjects == plain.subjects
    assert torch.equal(indexed.observations, plain.observations)


def test_repeated_and_spaced_column_names(tmaze, table):
    twice = pd.concat([table, table[["what"]]], axis=1)
    with pytest.raises(pp_aif.DataError, match=r"columns: \['what'\] named more than once"):
        BehaviourData.read(twice, tmaze)
    spaced = table.rename(columns={"where": " where"})
    with pytest.raises(pp_aif.DataError, match=r"missing \['where'\].*the table has \[' where'\]"):
        BehaviourData.read(spaced, tmaze)


@pytest.mark.parametrize(
    "source", [pd.Series([0, 1]), np.zeros((3, 7)), {"subject": ["a"]}, 3], ids=type
)
def test_sources_that_are_not_tables_are_refused(tmaze, source):
    kind = "a pandas Series" if isinstance(source, pd.Series) else "of type"
    with pytest.raises(pp_aif.DataError, match=rf"source: is {kind}"):
        BehaviourData.read(source, tmaze)


def test_parquet_round_trip_equals_the_csv(tmaze, table, tmp_path):
    table.to_parquet(tmp_path / "behaviour.parquet")
    table.to_csv(tmp_path / "behaviour.csv", index=False)
    parquet = BehaviourData.read(tmp_path / "behaviour.parquet", tmaze)
    csv = BehaviourData.read(tmp_path / "behaviour.csv", tmaze)
    assert parquet.subjects == csv.subjects
    for name in ("observations", "actions", "present"):
        assert torch.equal(getattr(parquet, name), getattr(csv, name)), name


def _edit_lines(table, tmp_path, edit):
    path = tmp_path / "edited.csv"
    table.to_csv(path, index=False)
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _quote_open(lines, line):
    lines[line - 1] = lines[line - 1].replace("agent", '"agent', 1)


def _quote_closed(lines, line):
    lines[line - 1] = lines[line - 1].replace(",", '",', 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda lines: (_quote_open(lines, 5), _quote_closed(lines, 10)),
            r"malformed: line 5 starts a record that runs to line 10 \(a quote that is not clo",
        ),
        (
            lambda lines: _quote_open(lines, 5),
            r"malformed: line 5 starts a record that ends at line 19 .*a quote that is not clo",
        ),
        (lambda lines: lines.__setitem__(4, lines[4] + ",7"), r"malformed: line 5 has 8 fields"),
        (
            lambda lines: lines.__setitem__(1, lines[1].rsplit(",", 1)[0]),
            r"malformed: line 2 has 6 fields; the header has 7",
        ),
        (lambda lines: lines.insert(3, ""), r"malformed: line 4 is blank, between records"),
        (
            lambda lines: lines.__setitem__(0, lines[0].replace(",", ";")),
            r"malformed: line 1 \(the header\) is one field 'subject;trial",
        ),
        (
            lambda lines: lines.__setitem__(0, lines[0].replace("context", "where")),
            r"line 1 \(the header\): \['where'\] named more than once",
        ),
    ],
    ids=[
        "quote closed later",
        "quote never closed",
        "extra field",
        "missing field",
        "blank line",
        "semicolons",
        "repeated name",
    ],
)
def test_malformed_csv_names_the_line(tmaze, table, tmp_path, edit, message):
    path = _edit_lines(table, tmp_path, edit)
    with pytest.raises(pp_aif.DataError, match=message):
        BehaviourData.read(path, tmaze)


def test_blank_lines_at_the_end_of_a_csv_are_fine(tmaze, table, tmp_path):
    path = _edit_lines(table, tmp_path, lambda lines: lines.extend(["", ""]))
    assert BehaviourData.read(path, tmaze).present.all()


def test_a_csv_names_the_file_and_its_lines_as_editors_count_them(tmaze, table, tmp_path):
    """Header = line 1, so data row p is line p + 2; the file is named first; one line "holds",
    several "hold" (issue 17)."""
    path = _edit_lines(table, tmp_path, lambda lines: lines.__setitem__(8, lines[8] + "x"))
    assert path.read_text().splitlines()[8].endswith("0x")  # line 9 of the file: row 7
    with pytest.raises(pp_aif.DataError) as error:
        BehaviourData.read(path, tmaze)
    assert str(error.value) == (
        f"{path}: column 'context': line 9 holds ['0x'], not numbers; controls of factor "
        "'context' take values 0..0"
    )

    def two_bad_lines(lines):
        for index in (5, 6):  # lines 6 and 7 of the file
            fields = lines[index].split(",")
            fields[3] = "9"  # where: 5 outcomes
            lines[index] = ",".join(fields)

    path = _edit_lines(table, tmp_path, two_bad_lines)
    with pytest.raises(pp_aif.DataError) as error:
        BehaviourData.read(path, tmaze)
    assert str(error.value) == (
        f"{path}: column 'where': lines 6, 7 hold [9, 9], out of range; outcomes of modality "
        "'where' take values 0..4"
    )


def test_a_dataframe_and_a_parquet_file_say_what_their_row_numbers_count(tmaze, table, tmp_path):
    bad = broken(table, 4, "where", 9)
    with pytest.raises(pp_aif.DataError) as error:
        BehaviourData.read(bad.set_index(bad.index + 100), tmaze)  # the index does not count
    assert str(error.value) == (
        "column 'where': row 4 holds [9], out of range; outcomes of modality 'where' take values "
        "0..4 (row: 0-based position in the DataFrame, the header not counted)"
    )
    path = tmp_path / "bad.parquet"
    bad.assign(where=bad["where"].astype("int64")).to_parquet(path)
    with pytest.raises(pp_aif.DataError) as error:
        BehaviourData.read(path, tmaze)
    assert str(error.value) == (
        f"{path}: column 'where': row 4 holds [9], out of range; outcomes of modality 'where' "
        "take values 0..4 (row: 0-based position in the Parquet file's table, the header not "
        "counted)"
    )
    with pytest.raises(pp_aif.DataError) as error:  # no rows named: no note
        BehaviourData.read(table.drop(columns=["what"]), tmaze)
    assert not str(error.value).endswith("counted)")


def test_a_file_of_another_kind_is_named_with_what_it_should_be(tmaze, tmp_path):
    path = tmp_path / "fit.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(pp_aif.DataError) as error:
        BehaviourData.read(path, tmaze)
    assert str(error.value) == (
        f"{path}: unknown format '.nc' for behavioural data; give a .csv or .parquet file (a "
        "table: one row per subject, trial and time step; pp-aif fit --help)"
    )


def test_parquet_with_keys_in_its_index_and_a_damaged_parquet(tmaze, table, tmp_path):
    table.set_index(["subject", "trial"]).to_parquet(tmp_path / "indexed.parquet")
    indexed = BehaviourData.read(tmp_path / "indexed.parquet", tmaze)
    assert torch.equal(indexed.observations, BehaviourData.read(table, tmaze).observations)
    (tmp_path / "damaged.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(pp_aif.DataError, match=r"damaged.parquet: cannot be read as Parquet"):
        BehaviourData.read(tmp_path / "damaged.parquet", tmaze)


def test_names_that_repeat_are_refused_not_overwritten(record, tmaze):
    """A factor named like a modality (or a key) would make one column of two: long_format
    refuses it, as the task itself does (tests/test_task.py), instead of keeping the last."""
    import dataclasses
    import re
    from types import SimpleNamespace

    for factors in (["where", "context"], ["location", "trial"]):
        labels = dataclasses.replace(tmaze.labels, factors=factors)  # Labels are not re-checked
        clash = SimpleNamespace(name="clash", model=tmaze.model, labels=labels)
        repeated = [name for name in factors if name in ("where", "trial")]
        with pytest.raises(
            ValueError, match=rf"long_format: task 'clash' names {re.escape(str(repeated))}"
        ):
            long_format(record, clash)
        with pytest.raises(ValueError, match=r"task 'tmaze': labels: \["):
            dataclasses.replace(tmaze, labels=labels)


def test_a_record_of_another_task_is_refused(record, tmaze):
    foraging = pp_aif.load_task("foraging")
    with pytest.raises(
        ValueError,
        match=r"long_format: the record's modality names \['where', 'what'\] are not those of "
        r"task 'foraging', \['where', 'smell'\]",
    ):
        long_format(record, foraging)


def test_subjects_at_picks_subjects_in_order_with_repeats():
    import pp_aif
    from pp_aif.data import BehaviourData, long_format

    task = pp_aif.load_task("tmaze")
    data = BehaviourData.read(long_format(pp_aif.simulate(task, 3, 2, seed=1), task), task)
    picked = data.subjects_at([2, 0, 2])
    assert picked.subjects == (data.subjects[2], data.subjects[0], data.subjects[2])
    for name in ("observations", "actions", "present"):
        whole, part = getattr(data, name), getattr(picked, name)
        assert torch.equal(part[0], whole[2]) and torch.equal(part[1], whole[0])
        assert torch.equal(part[2], whole[2])


def test_each_subjects_trial_numbers_are_kept_in_order(tmaze, table):
    """The trial numbers as the data gives them (gaps and all), per subject in increasing
    order; slices and picks carry them."""
    renumbered = table.copy()
    # agent-0's trials become 7 and 3 (rows out of order), agent-2 keeps only trial 1
    renumbered.loc[renumbered["subject"] == "agent-0", "trial"] = renumbered["trial"].map(
        {0: 7, 1: 3}
    )
    renumbered = renumbered[~((renumbered["subject"] == "agent-2") & (renumbered["trial"] == 0))]
    data = BehaviourData.read(renumbered, tmaze)
    assert data.trials == ((3, 7), (0, 1), (1,))
    assert data.present.tolist() == [[True, True], [True, True], [True, False]]
    # trial 3 of agent-0 (its first) is what the table called trial 1
    first = renumbered[(renumbered["subject"] == "agent-0") & (renumbered["trial"] == 3)]
    assert data.observations[0, 0, :, 0].tolist() == first.sort_values("time")["where"].tolist()
    assert data.subjects_slice(1, 3).trials == ((0, 1), (1,))
    assert data.subjects_at([2, 0]).trials == ((1,), (3, 7))
