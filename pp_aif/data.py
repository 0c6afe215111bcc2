"""Behavioural data: ``BehaviourData`` read from long-format CSV, Parquet or a pandas DataFrame.

Long format: one row per subject, trial and time step, with the columns

    subject, trial, time, <one column per modality>, <one column per factor>

named after the task (``task.labels.modalities`` and ``task.labels.factors``). Observation
columns hold outcome indices (0-based); action columns hold the control chosen at that step
(0-based), empty at a trial's last step (no action follows it). Any other column is a covariate.

Every problem raises ``pp_aif.DataError`` listing the offending rows (0-based positions in the
table, header not counted: file line = row + 2) and what is wrong; nothing is read half-way.

Dimension symbols: N subjects, K trials (per subject, in order), T steps, M modalities, F factors.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pp_aif.errors import DataError

__all__ = ["BehaviourData", "KEYS", "long_format"]

KEYS = ("subject", "trial", "time")
_MAX_LISTED = 10


def _rows(positions) -> str:
    positions = [int(p) for p in positions]
    shown = ", ".join(str(p) for p in positions[:_MAX_LISTED])
    more = f" and {len(positions) - _MAX_LISTED} more" if len(positions) > _MAX_LISTED else ""
    return f"row{'s' if len(positions) > 1 else ''} {shown}{more}"


def _hash(subject: str, salt: str) -> str:
    return "s-" + hashlib.sha256(f"{salt}\x00{subject}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BehaviourData:
    """People's observations and choices, as tensors the agent and the fits use.

    observations : int64 (N, K, T, M); actions : int64 (N, K, T-1, F), the control chosen at
    each step but the last; present : bool (N, K), False where a subject has fewer trials (those
    entries are 0 and must be masked); subjects : N identifiers (salted hashes when anonymised);
    covariates : one row per subject (index: the identifiers), the columns that are neither keys,
    observations nor actions (the first value of each subject), or None.
    """

    observations: Tensor
    actions: Tensor
    present: Tensor
    subjects: tuple[str, ...]
    modalities: tuple[str, ...]
    factors: tuple[str, ...]
    covariates: pd.DataFrame | None = None

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
        )

    @classmethod
    def read(cls, source, task, *, anonymise: bool = False, salt: str | None = None):
        """Read and validate long-format data for ``task``.

        source : path to a ``.csv`` or ``.parquet`` file, or a pandas DataFrame.
        anonymise : replace subject identifiers with salted SHA-256 hashes in everything this
            returns (and so in every output made from it); ``salt`` is required then, and kept
            by the caller (the same salt maps the same person to the same hash).
        """
        if anonymise and not salt:
            raise ValueError("salt: anonymise=True needs a salt (a secret string you keep)")
        table = _load(source)
        return _build(table, task, salt if anonymise else None)


def _load(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"behavioural data: no file {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            return pd.read_csv(path, dtype={"subject": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot be read as CSV ({error})") from None
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as error:
            raise ImportError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow): {error}"
            ) from None
    raise DataError(f"{path}: unknown format {suffix!r}; give a .csv or .parquet file")


def _integers(
    table: pd.DataFrame, column: str, limit: int | None, what: str, rows=None
) -> np.ndarray:
    """The column as int64; DataError naming rows that are missing, not integers, or out of
    0..limit-1. ``rows``: the table's rows in the caller's numbering (default 0..len-1)."""
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    values = pd.to_numeric(table[column], errors="coerce")
    bad_type = values.isna() | (values != values.round())
    if bad_type.any():
        raise DataError(
            f"column {column!r}: {_rows(rows[np.flatnonzero(bad_type)])} hold "
            f"{table[column][bad_type].head(3).tolist()}..., not integer {what}"
        )
    values = values.to_numpy().astype(np.int64)
    if limit is not None:
        bad = (values < 0) | (values >= limit)
        if bad.any():
            raise DataError(
                f"column {column!r}: {_rows(rows[np.flatnonzero(bad)])} hold "
                f"{values[bad][:3].tolist()}; {what} take values 0..{limit - 1}"
            )
    return values


def _build(table: pd.DataFrame, task, salt: str | None) -> BehaviourData:
    model, labels = task.model, task.labels
    modalities, factors = tuple(labels.modalities), tuple(labels.factors)
    missing = [c for c in (*KEYS, *modalities, *factors) if c not in table.columns]
    if missing:
        raise DataError(
            f"columns: missing {missing}; task {task.name!r} needs {list(KEYS)}, one column "
            f"per modality {list(modalities)} and one per factor {list(factors)}"
        )
    if len(table) == 0:
        raise DataError("behavioural data: the table has no rows")
    if table["subject"].isna().any():
        raise DataError(
            f"column 'subject': {_rows(np.flatnonzero(table['subject'].isna()))} are empty"
        )
    subject_ids = table["subject"].astype(str).to_numpy()
    trial = _integers(table, "trial", None, "trial numbers")
    time = _integers(table, "time", None, "time steps")
    for column, values in (("trial", trial), ("time", time)):
        if (values < 0).any():
            raise DataError(f"column {column!r}: {_rows(np.flatnonzero(values < 0))} are negative")
    keys = pd.DataFrame({"subject": subject_ids, "trial": trial, "time": time})
    duplicated = keys.duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise DataError(
            f"(subject, trial, time): {_rows(np.flatnonzero(duplicated))} repeat the same key"
        )
    T = task.trial_length
    too_late = time >= T
    if too_late.any():
        raise DataError(
            f"column 'time': {_rows(np.flatnonzero(too_late))} have time >= {T}; task "
            f"{task.name!r} has trials of {T} steps (time 0..{T - 1})"
        )
    counts = keys.groupby(["subject", "trial"])["time"].transform("size").to_numpy()
    short = counts != T
    if short.any():
        raise DataError(
            f"column 'time': {_rows(np.flatnonzero(short))} belong to trials with "
            f"{sorted(set(counts[short].tolist()))} steps instead of {T} (gaps in time, or "
            "missing steps)"
        )
    observations = np.stack(
        [
            _integers(table, m, size, f"outcomes of modality {m!r}")
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
            table[~last], name, size, f"controls of factor {name!r}", np.flatnonzero(~last)
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
    )


def long_format(dataset, task) -> pd.DataFrame:
    """A simulation record (``pp_aif.simulate``) as long-format behavioural data: one row per
    agent (subject ``"agent-<i>"``), trial and time step; actions empty at each trial's last step.
    """
    labels = task.labels
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
