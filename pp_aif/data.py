"""Behavioural data: ``BehaviourData`` read from long-format CSV, Parquet or a pandas DataFrame.

Long format: one row per subject, trial and time step, with the columns

    subject, trial, time, <one column per modality>, <one column per factor>

named after the task (``task.labels.modalities`` and ``task.labels.factors``). Observation
columns hold outcome indices (0-based); action columns hold the control chosen at that step
(0-based), empty at a trial's last step (no action follows it). Any other column is a covariate.

Every problem raises ``pp_aif.DataError`` naming the offending rows and what is wrong; nothing
is read half-way. In a CSV file they are the file's lines as editors count them (the header is
line 1, so the first data row is line 2), after the file's name; in a DataFrame or a Parquet
file they are rows, 0-based positions in the table with the header not counted (whatever the
DataFrame's index), and the message says so.
Observation, action, trial and time columns hold integers: booleans, fractions, non-finite or
out-of-range numbers and text are refused with their rows and values. A CSV file is checked
line by line first: a record that runs over several lines (a quote left open), a line whose
number of fields differs from the header's, a blank line between records or a column named
twice is a ``DataError`` naming the line, so a malformed file is never read as other data.

Subject identifiers: the text of the field in a CSV file (``"01"`` and ``"1"`` are two
subjects; only an empty field is missing); in a DataFrame or Parquet file, strings as they are
and numbers by value (``1`` and ``1.0`` are subject ``"1"``). A column that mixes strings with
numbers (or booleans) is refused, since ``1`` and ``"1"`` would otherwise be merged or split
by accident. Spaces around a string identifier are stripped, with a ``DataWarning`` naming
the rows.

Dimension symbols: N subjects, K trials (per subject, in order), T steps, M modalities, F factors.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import numbers
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pp_aif.errors import DataError, DataWarning

__all__ = ["BehaviourData", "KEYS", "long_format"]

KEYS = ("subject", "trial", "time")
_MAX_LISTED = 10


@dataclass(frozen=True)
class _Numbering:
    """How messages name the rows of a table (0-based positions, header not counted):
    ``word`` "line" (a CSV file's lines as editors count them: the header is line 1, so
    position p is line p + 2; ``first`` = 2) or "row" (the position itself; ``first`` = 0);
    ``where`` opens each message (the file's name), ``note`` closes one that names rows."""

    word: str = "row"
    first: int = 0
    where: str = ""
    note: str = ""

    def message(self, text: str) -> str:
        """``text`` with the file's name before it and, where it names rows, the note after."""
        names_rows = re.search(rf"\b{self.word}s? \d", text) is not None
        return f"{self.where}{text}{self.note if names_rows else ''}"

    def rows(self, positions, verb: str = "") -> str:
        """The rows as words, "row 4" or "rows 0, 1, ... and 3 more" (in a CSV file "line 6"
        or "lines 2, 3, ..."), then ``verb`` agreeing with them ("holds" / "hold", "is" /
        "are", "has" / "have", "belongs" / "belong")."""
        positions = [int(p) + self.first for p in positions]
        shown = ", ".join(str(p) for p in positions[:_MAX_LISTED])
        more = f" and {len(positions) - _MAX_LISTED} more" if len(positions) > _MAX_LISTED else ""
        many = len(positions) > 1
        if verb:
            plural = {"holds": "hold", "is": "are", "has": "have", "belongs": "belong"}
            verb = " " + (plural.get(verb, verb) if many else verb)
        return f"{self.word}{'s' if many else ''} {shown}{more}{verb}"


_FRAME = _Numbering(note=" (row: 0-based position in the DataFrame, the header not counted)")


def _hash(subject: str, salt: str) -> str:
    return "s-" + hashlib.sha256(f"{salt}\x00{subject}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BehaviourData:
    """People's observations and choices, as tensors the agent and the fits use.

    observations : int64 (N, K, T, M); actions : int64 (N, K, T-1, F), the control chosen at
    each step but the last; present : bool (N, K), False where a subject has fewer trials (those
    entries are 0 and must be masked); subjects : N identifiers (salted hashes when anonymised);
    covariates : one row per subject (index: the identifiers), the columns that are neither keys,
    observations nor actions (the first value of each subject), or None; trials : each
    subject's trial numbers as in the data, in increasing order (the trial axis's labels), or
    None where not known.
    """

    observations: Tensor
    actions: Tensor
    present: Tensor
    subjects: tuple[str, ...]
    modalities: tuple[str, ...]
    factors: tuple[str, ...]
    covariates: pd.DataFrame | None = None
    trials: tuple[tuple[int, ...], ...] | None = None

    @property
    def num_subjects(self) -> int:
        return self.observations.shape[0]

    def to(self, device) -> BehaviourData:
        """A copy whose tensors are on ``device``."""
        return dataclasses.replace(
            self,
            observations=self.observations.to(device),
            actions=self.actions.to(device),
            present=self.present.to(device),
        )

    def subjects_slice(self, start: int, stop: int) -> BehaviourData:
        """Subjects ``start:stop`` (their trials, padding and covariates)."""
        return dataclasses.replace(
            self,
            observations=self.observations[start:stop],
            actions=self.actions[start:stop],
            present=self.present[start:stop],
            subjects=self.subjects[start:stop],
            covariates=None if self.covariates is None else self.covariates.iloc[start:stop],
            trials=None if self.trials is None else self.trials[start:stop],
        )

    def subjects_at(self, index) -> BehaviourData:
        """The subjects at positions ``index`` (a sequence; repeats allowed), in that order."""
        index = [int(i) for i in index]
        rows = torch.as_tensor(index, dtype=torch.long, device=self.actions.device)
        return dataclasses.replace(
            self,
            observations=self.observations[rows],
            actions=self.actions[rows],
            present=self.present[rows],
            subjects=tuple(self.subjects[i] for i in index),
            covariates=None if self.covariates is None else self.covariates.iloc[index],
            trials=None if self.trials is None else tuple(self.trials[i] for i in index),
        )

    @classmethod
    def read(cls, source, task, *, anonymise: bool = False, salt: str | None = None):
        """Read and validate long-format data for ``task``.

        Parameters
        ----------
        source : str, os.PathLike or pandas.DataFrame
            A path to a ``.csv`` or ``.parquet`` (``.pq``) file (Parquet through pyarrow), or a
            DataFrame; subject, trial or time kept in the index (after ``set_index``) are read
            as columns. Anything else (a Series, an array, a dict) is refused with a
            ``DataError``.
        task : Task
            The task whose modalities and factors name the columns.
        anonymise : bool
            Replace subject identifiers with salted SHA-256 hashes in everything this returns
            (and so in every output made from it); ``salt`` is required then, and kept by the
            caller (the same salt maps the same person to the same hash).
        salt : str, optional
            The secret of the hashes.

        Returns
        -------
        BehaviourData

        Raises
        ------
        DataError
            The table or file is malformed, with the rows (or file lines) and what is wrong;
            identifiers that mix strings and numbers (see the module docstring).

        Warns
        -----
        DataWarning
            Spaces around subject identifiers were stripped (the rows are named).
        """
        if anonymise and not salt:
            raise ValueError("salt: anonymise=True needs a salt (a secret string you keep)")
        table, numbering = _load(source)
        try:
            return _build(table, task, salt if anonymise else None, numbering)
        except DataError as error:
            raise DataError(numbering.message(str(error))) from None


def _load(source) -> tuple[pd.DataFrame, _Numbering]:
    """The table, and how its messages name its rows."""
    if isinstance(source, pd.DataFrame):
        return _frame(source, "columns"), _FRAME
    if isinstance(source, pd.Series):
        raise DataError(
            "source: is a pandas Series (one column); give a DataFrame with the columns "
            f"{list(KEYS)}, one per modality and one per factor (or a path to a .csv or "
            ".parquet file)"
        )
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"source: is of type {type(source).__name__}; give a path to a .csv or .parquet file, "
            "or a pandas DataFrame"
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"behavioural data: no file {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header = _check_csv(path)
        try:
            table = pd.read_csv(path, dtype={"subject": str})
            if "subject" in header:  # only an empty field is a missing identifier ("NA" is one)
                table["subject"] = pd.read_csv(
                    path, usecols=["subject"], dtype=str, keep_default_na=False, na_values=[""]
                )["subject"]
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot be read as CSV ({error})") from None
        return table, _Numbering("line", 2, f"{path}: ")
    if suffix in (".parquet", ".pq"):
        try:
            table = pd.read_parquet(path)
        except ImportError as error:
            raise ImportError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow): {error}"
            ) from None
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: cannot be read as Parquet ({error})") from None
        note = " (row: 0-based position in the Parquet file's table, the header not counted)"
        return _frame(table, f"{path}: columns"), _Numbering("row", 0, f"{path}: ", note)
    raise DataError(
        f"{path}: unknown format {suffix!r} for behavioural data; give a .csv or .parquet file "
        "(a table: one row per subject, trial and time step; pp-aif fit --help)"
    )


def _frame(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """The table with its rows numbered 0..len-1 and any key kept in its index (e.g. after
    ``set_index(["subject", "trial"])``) made a column again; a DataError for a column name
    used twice."""
    _check_column_names(list(table.columns), where)
    in_index = [n for n in table.index.names if n in KEYS and n not in table.columns]
    if in_index:
        table = table.reset_index(level=in_index)
    return table.reset_index(drop=True)


def _check_column_names(names: list, where: str) -> None:
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise DataError(f"{where}: {repeated} named more than once; every column needs one name")


def _check_csv(path: Path) -> list[str]:
    """The header of a well-formed CSV file; a DataError naming the line of anything that would
    make pandas read other data than the file holds: a record over several lines (an open
    quote), a line with more or fewer fields than the header, a blank line between records."""

    def malformed(line: int, what: str) -> DataError:
        return DataError(f"{path}: the CSV is malformed: line {line} {what}")

    line = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: is empty (no header line)")
            if len(header) == 1 and any(sep in header[0] for sep in ";\t"):
                raise malformed(
                    1,
                    f"(the header) is one field {header[0]!r}: fields must be separated by commas",
                )
            _check_column_names(header, f"{path}: line 1 (the header)")
            line, blank = reader.line_num, None
            for record in reader:
                start, line = line + 1, reader.line_num
                if line > start:
                    raise malformed(
                        start,
                        f"starts a record that runs to line {line} (a quote that is not closed?)",
                    )
                if not record:
                    blank = blank or start
                    continue
                if blank is not None:
                    raise malformed(blank, "is blank, between records")
                if len(record) != len(header):
                    raise malformed(
                        start, f"has {len(record)} fields; the header has {len(header)}"
                    )
    except csv.Error as error:
        raise malformed(
            line + 1,
            f"starts a record that ends at line {reader.line_num} with {error!s:.60} "
            "(a quote that is not closed?)",
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: cannot be read as CSV (not UTF-8 text: {error})") from None
    return header


def _is_boolean(value) -> bool:
    return isinstance(value, bool | np.bool_)


def _integers(
    table: pd.DataFrame,
    column: str,
    limit: int | None,
    what: str,
    rows=None,
    numbering: _Numbering = _FRAME,
) -> np.ndarray:
    """The column as int64; a DataError naming the rows that are missing, boolean, not numbers,
    not finite, not integers, negative, or not below ``limit`` (default: int64's range).
    ``rows``: the table's rows in the caller's numbering (default 0..len-1)."""
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    raw = table[column]
    span = f"values 0..{limit - 1}" if limit is not None else "integer values 0..2**63-1"

    def refuse(bad, problem: str, values: bool = True) -> DataError:
        shown = f" {raw[bad].head(3).tolist()}" if values else ""
        more = "..." if values and int(np.sum(bad)) > 3 else ""
        verb = "holds" if values else "is"
        return DataError(
            f"column {column!r}: {numbering.rows(rows[np.flatnonzero(bad)], verb)}{shown}{more}"
            f"{problem}; {what} take {span}"
        )

    if pd.api.types.is_bool_dtype(raw.dtype):
        raise DataError(
            f"column {column!r}: is boolean (dtype {raw.dtype}), True/False, not integers; "
            f"{what} take {span}"
        )
    if raw.dtype == object:
        boolean = raw.map(_is_boolean).to_numpy(dtype=bool)
        if boolean.any():
            raise refuse(boolean, ", booleans, not integers")
    missing = raw.isna().to_numpy()
    if missing.any():
        raise refuse(missing, " empty", values=False)
    numeric = pd.to_numeric(raw, errors="coerce")
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    for bad, problem in (
        (np.isnan(values), ", not numbers"),
        (~np.isfinite(values), ", not finite"),
        (values != np.round(values), ", not integers"),
        (values < 0, ", negative"),
        (values >= (limit if limit is not None else 2.0**63), ", out of range"),
    ):
        if bad.any():
            raise refuse(bad, problem)
    if pd.api.types.is_integer_dtype(numeric.dtype):
        return numeric.to_numpy(dtype=np.int64)
    return values.astype(np.int64)


def _subject_ids(column: pd.Series, numbering: _Numbering = _FRAME) -> np.ndarray:
    """The identifiers as strings (see the module docstring); a DataError for empty ones and for
    a column that mixes strings with other types; a DataWarning for stripped spaces."""
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(f"column 'subject': {numbering.rows(np.flatnonzero(missing), 'is')} empty")
    dtype = column.dtype
    values = column.to_numpy(dtype=object)
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        is_string = np.ones(len(values), dtype=bool)
    else:
        is_string = np.fromiter((isinstance(v, str) for v in values), bool, len(values))
    if is_string.all():
        return _stripped(values.astype(str), numbering)
    if is_string.any():
        strings, other = np.flatnonzero(is_string), np.flatnonzero(~is_string)
        raise DataError(
            f"column 'subject': mixes strings ({numbering.rows(strings[:3])}: "
            f"{values[strings[0]]!r}) with {type(values[other[0]]).__name__} values "
            f"({numbering.rows(other[:3])}: "
            f"{values[other[0]]!r}), so 1 and '1' could be one subject or two; give every "
            "identifier as a string, or every one as a number"
        )
    is_number = np.fromiter(
        (isinstance(v, numbers.Real) and not _is_boolean(v) for v in values), bool, len(values)
    )
    if not is_number.any():  # booleans or other objects alone: their text
        return values.astype(str)
    if not is_number.all():
        other = np.flatnonzero(~is_number)
        raise DataError(
            f"column 'subject': mixes numbers with {type(values[other[0]]).__name__} values "
            f"({numbering.rows(other[:3])}: {values[other[0]]!r}); give every identifier as a "
            "string, or every one as a number"
        )
    numeric = values.astype(np.float64)
    bad = ~np.isfinite(numeric)
    if bad.any():
        raise DataError(
            f"column 'subject': {numbering.rows(np.flatnonzero(bad), 'holds')} "
            f"{values[bad][:3].tolist()}, not finite identifiers"
        )
    # by value: 1, 1.0 and np.int64(1) are subject "1"
    return np.array([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values])


def _stripped(ids: np.ndarray, numbering: _Numbering = _FRAME) -> np.ndarray:
    """String identifiers without surrounding spaces; a DataWarning naming the rows changed."""
    stripped = np.char.strip(ids)
    empty = stripped == ""
    if empty.any():
        raise DataError(
            f"column 'subject': {numbering.rows(np.flatnonzero(empty), 'is')} empty (or only "
            "spaces)"
        )
    changed = np.flatnonzero(stripped != ids)
    if len(changed):
        examples = list(dict.fromkeys(ids[changed].tolist()))[:3]
        warnings.warn(
            numbering.message(
                f"column 'subject': {numbering.rows(changed, 'has')} spaces around the identifier "
                f"({', '.join(repr(e) for e in examples)}); stripped, so they are read as "
                f"{', '.join(repr(e.strip()) for e in examples)}"
            ),
            DataWarning,
            stacklevel=5,
        )
    return stripped


def _build(table: pd.DataFrame, task, salt: str | None, numbering: _Numbering) -> BehaviourData:
    model, labels = task.model, task.labels
    modalities, factors = tuple(labels.modalities), tuple(labels.factors)
    missing = [c for c in (*KEYS, *modalities, *factors) if c not in table.columns]
    if missing:
        spaced = [c for c in table.columns if isinstance(c, str) and c.strip() in missing]
        hint = f" (the table has {spaced}: strip the spaces from the names)" if spaced else ""
        raise DataError(
            f"columns: missing {missing}; task {task.name!r} needs {list(KEYS)}, one column "
            f"per modality {list(modalities)} and one per factor {list(factors)}{hint}"
        )
    if len(table) == 0:
        raise DataError("behavioural data: the table has no rows")
    subject_ids = np.array(_subject_ids(table["subject"], numbering).tolist(), dtype=object)
    trial = _integers(table, "trial", None, "trial numbers", numbering=numbering)
    time = _integers(table, "time", None, "time steps", numbering=numbering)
    keys = pd.DataFrame({"subject": subject_ids, "trial": trial, "time": time})
    duplicated = keys.duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise DataError(
            f"(subject, trial, time): {numbering.rows(np.flatnonzero(duplicated))} repeat the "
            "same key"
        )
    T = task.trial_length
    too_late = time >= T
    if too_late.any():
        raise DataError(
            f"column 'time': {numbering.rows(np.flatnonzero(too_late), 'has')} time >= {T}; task "
            f"{task.name!r} has trials of {T} steps (time 0..{T - 1})"
        )
    counts = keys.groupby(["subject", "trial"])["time"].transform("size").to_numpy()
    short = counts != T
    if short.any():
        raise DataError(
            f"column 'time': {numbering.rows(np.flatnonzero(short), 'belongs')} to trials with "
            f"{sorted(set(counts[short].tolist()))} steps instead of {T} (gaps in time, or "
            "missing steps)"
        )
    observations = np.stack(
        [
            _integers(table, m, size, f"outcomes of modality {m!r}", numbering=numbering)
            for m, size in zip(modalities, model.num_outcomes, strict=True)
        ],
        -1,
    )
    last = time == T - 1
    actions = np.zeros((len(table), len(factors)), dtype=np.int64)
    for f, (name, size) in enumerate(zip(factors, model.num_controls, strict=True)):
        if size == 1 and table[name][~last].isna().all():
            continue  # a factor without choices may leave its column empty
        actions[~last, f] = _integers(
            table[~last],
            name,
            size,
            f"controls of factor {name!r}",
            np.flatnonzero(~last),
            numbering,
        )

    subjects = list(dict.fromkeys(subject_ids))  # order of first appearance
    subject_index = {s: i for i, s in enumerate(subjects)}
    trials_per_subject = keys.groupby("subject", sort=False)["trial"].unique()
    K = max(len(v) for v in trials_per_subject)
    trial_index = {
        (s, k): i for s, values in trials_per_subject.items() for i, k in enumerate(sorted(values))
    }
    N = len(subjects)
    obs = np.zeros((N, K, T, len(modalities)), dtype=np.int64)
    act = np.zeros((N, K, T, len(factors)), dtype=np.int64)
    present = np.zeros((N, K), dtype=bool)
    n = np.array([subject_index[s] for s in subject_ids])
    k = np.array([trial_index[(s, t)] for s, t in zip(subject_ids, trial, strict=True)])
    obs[n, k, time] = observations
    act[n, k, time] = actions
    present[n, k] = True

    names = [_hash(s, salt) for s in subjects] if salt is not None else subjects
    used = {*KEYS, *modalities, *factors}
    extra = [c for c in table.columns if c not in used]
    covariates = None
    if extra:
        covariates = table[extra].groupby(subject_ids, sort=False).first()
        covariates.index = pd.Index(names, name="subject")
    return BehaviourData(
        observations=torch.from_numpy(obs),
        actions=torch.from_numpy(act[:, :, : T - 1]),
        present=torch.from_numpy(present),
        subjects=tuple(names),
        modalities=modalities,
        factors=factors,
        covariates=covariates,
        trials=tuple(tuple(int(k) for k in sorted(trials_per_subject[s])) for s in subjects),
    )


def long_format(dataset, task) -> pd.DataFrame:
    """A simulation record (``pp_aif.simulate``) as long-format behavioural data: one row per
    agent (subject ``"agent-<i>"``), trial and time step; actions empty at each trial's last step.

    The columns are ``KEYS``, then the task's modalities and factors by name; a ValueError if two
    of them share a name (one column would overwrite the other), or if the record's modalities
    and factors are not the task's.
    """
    labels = task.labels
    names = [*KEYS, *labels.modalities, *labels.factors]
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise ValueError(
            f"long_format: task {task.name!r} names {repeated} more than once among the key "
            f"columns {list(KEYS)}, modalities {list(labels.modalities)} and factors "
            f"{list(labels.factors)}; each column needs its own name"
        )
    for what in ("modality", "factor"):
        given = [str(x) for x in dataset[what].values]
        expected = list(labels.modalities if what == "modality" else labels.factors)
        if given != expected:
            raise ValueError(
                f"long_format: the record's {what} names {given} are not those of task "
                f"{task.name!r}, {expected}; give the task that was simulated"
            )
    observations = dataset["observation"].values  # (N, K, T, M)
    actions = dataset["action"].values  # (N, K, T, F), -1 at the last step
    N, K, T, _ = observations.shape
    n, k, t = (a.reshape(-1) for a in np.meshgrid(range(N), range(K), range(T), indexing="ij"))
    columns = {"subject": [f"agent-{i}" for i in n], "trial": k, "time": t}
    for m, name in enumerate(labels.modalities):
        columns[name] = observations[..., m].reshape(-1)
    for f, name in enumerate(labels.factors):
        values = actions[..., f].reshape(-1)
        columns[name] = pd.array(np.where(values < 0, 0, values), dtype="Int64")
        columns[name][values < 0] = pd.NA
    return pd.DataFrame(columns)
