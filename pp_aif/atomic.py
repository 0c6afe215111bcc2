"""Atomic writes: every file the project writes appears whole, or not at all.

Each write goes to a temporary file in the target's folder (``.NAME.PID@HOST.TOKEN.partial``),
is flushed to disk (``fsync``), optionally read back and checked, and only then takes the
target's name: ``os.replace`` (the new file replaces the old one in one step) or, for a write
that must happen once, ``os.link`` (which fails if the name is taken; the first file stands).
Whatever is killed when, the target is the old file or the new one, never a part of one.

- **Interrupts.** A Ctrl-C (SIGINT) during a write is remembered as well as raised: netCDF
  and HDF5 libraries may swallow a ``KeyboardInterrupt`` raised inside them ("Exception
  ignored in ..."), and the write would then finish as if nothing had happened. Here the write
  is abandoned either way: the temporary file is removed, the target is left as it was, and
  ``WriteInterrupted`` (a ``KeyboardInterrupt``) is raised, saying so.
- **Leftovers.** A write killed outright (SIGKILL, power loss) leaves its temporary file. The
  next write of the same target removes the temporary files of that target whose process is
  gone (same host), that this process left earlier, or that are more than a day old.
- **Round trips.** ``write_netcdf`` reads the new file back before it takes the target's name
  and refuses (``RoundTripError``) a file whose coordinates or values differ from what was
  written: a stale encoding (a string width kept from an earlier file) would cut ids short.

Only the standard library is imported here; numpy, xarray and arviz are imported by the
functions that need them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

__all__ = [
    "RoundTripError",
    "WriteInterrupted",
    "atomic_write",
    "check_round_trip",
    "is_stale",
    "partial_owner",
    "remove_stale_partials",
    "save_figure",
    "sync_directory",
    "write_json",
    "write_netcdf",
    "write_text",
]

#: temporary files older than this (seconds) are stale whoever made them
STALE_AFTER = 24 * 3600.0

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
# .NAME.PID@HOST.TOKEN.partial (this module); .NAME.PID.TOKEN.partial (the job store before
# it); .NAME.PID.partial (pp-aif fit before it)
_OWNER = re.compile(r"\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9-]*))?(?:\.[0-9a-f]{8})?\.partial$")


#: the temporary files of this process's writes in progress (other threads' are not stale)
_IN_FLIGHT: set[str] = set()


class WriteInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during an atomic write: the temporary file is removed and ``path`` is
    as it was before the write (``existed``: whether there was a file)."""

    def __init__(self, path: str | Path, existed: bool):
        self.path = Path(path)
        self.existed = existed
        kept = (
            f"the earlier {self.path.name} is kept unchanged"
            if existed
            else f"there is no {self.path.name}"
        )
        super().__init__(f"interrupted while writing {self.path}: nothing was written ({kept})")


class RoundTripError(OSError):
    """A written file does not read back as what was written; it was not put in place."""


def partial_owner(name: str) -> tuple[int, str | None] | None:
    """(pid, host or None) of the process that made the temporary file ``name``; None if the
    name is not one of a temporary file."""
    match = _OWNER.search(name)
    if match is None or not name.startswith("."):
        return None
    return int(match["pid"]), match["host"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's, or cannot tell: keep its file
    return True


def is_stale(path: Path, started: float | None = None, now: float | None = None) -> bool:
    """Whether the temporary file ``path`` is left over: its process (on this host) is gone,
    this process made it before ``started`` (the time the current write began) and is not
    writing it now, or it is older than ``STALE_AFTER``. A live process's recent file may be a
    write in progress."""
    owner = partial_owner(path.name)
    if owner is None:
        return False
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return False
    now = time.time() if now is None else now
    if now - modified > STALE_AFTER:
        return True
    pid, host = owner
    if host not in (None, _HOST):
        return False  # another machine's: its process cannot be checked from here
    if pid == os.getpid():
        return started is not None and modified < started and path.name not in _IN_FLIGHT
    return not _alive(pid)


def remove_stale_partials(target: str | Path, started: float | None = None) -> list[Path]:
    """Delete the left-over temporary files of ``target`` (see ``is_stale``); returns them."""
    target = Path(target)
    prefix = f".{target.name}."
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".partial"):
            path = Path(entry.path)
            if is_stale(path, started):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}@{_HOST}.{uuid.uuid4().hex[:8]}.partial")


class _Interrupts:
    """While active (in the main thread, unless Ctrl-C is ignored): a SIGINT sets ``received``
    and then does what the handler it replaced would do (Python's default raises
    KeyboardInterrupt; a library's own handler is called; the system's default, which would kill
    the process mid-write, becomes a KeyboardInterrupt), unless ``committing``, when it only
    sets ``received`` (the file is being put in place, which must not be cut in two). Whatever
    handler a library left installed, an interrupted write is seen and nothing is put in
    place."""

    def __init__(self):
        self.received = False
        self.committing = False
        self._previous = None
        self._installed = False

    def _handler(self, signum, frame):
        self.received = True
        if self.committing:
            return
        previous = self._previous
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)
            return
        raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is not signal.SIG_IGN and current is not None:
                self._previous = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
        return self

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
        return False


def sync_directory(directory: str | Path) -> None:
    """Make a new name in ``directory`` durable (POSIX); a no-op where folders cannot be
    opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | Path,
    write: Callable[[Path], Any],
    *,
    verify: Callable[[Path], Any] | None = None,
    exclusive: bool = False,
) -> bool:
    """Write ``path`` whole or not at all: ``write(temporary)`` writes a temporary file in the
    same folder, which is fsynced, checked by ``verify(temporary)`` (which raises to refuse
    it) and then renamed to ``path`` (``os.replace``), or with ``exclusive`` linked to it
    (``os.link``: nothing is written if ``path`` exists).

    Returns True if the file was written, False if ``exclusive`` and ``path`` was there (it is
    kept). On any error the temporary file is removed and ``path`` is as it was; a Ctrl-C
    raises ``WriteInterrupted``, even one that the writing library swallowed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    remove_stale_partials(path, started)
    existed = path.exists()
    partial = _partial_path(path)
    _IN_FLIGHT.add(partial.name)
    interrupts = _Interrupts()
    committed = False
    try:
        with interrupts:
            write(partial)
            with open(partial, "rb+") as handle:
                os.fsync(handle.fileno())
            if interrupts.received:  # raised inside the writer, and swallowed there
                raise KeyboardInterrupt
            if verify is not None:
                verify(partial)
            interrupts.committing = True
            if interrupts.received:
                raise KeyboardInterrupt
            if exclusive:
                try:
                    os.link(partial, path)  # fails if the name exists: exactly once
                except FileExistsError:
                    return False
            else:
                os.replace(partial, path)
            committed = True
        sync_directory(path.parent)
    except KeyboardInterrupt as interrupt:
        if committed or isinstance(interrupt, WriteInterrupted):
            raise
        raise WriteInterrupted(path, existed) from None
    finally:
        partial.unlink(missing_ok=True)
        _IN_FLIGHT.discard(partial.name)
    if interrupts.received:  # Ctrl-C while the file was put in place: it is there, whole
        raise KeyboardInterrupt(f"interrupted after {path} was written")
    return True


def write_text(path: str | Path, text: str, *, exclusive: bool = False) -> bool:
    """``text`` (UTF-8) to ``path``, atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), exclusive=exclusive)


def write_json(path: str | Path, value: Any, *, indent: int = 2, exclusive: bool = False) -> bool:
    """``value`` as JSON to ``path``, atomically; paths are written as their strings (an
    experiment's or benchmark's ``asdict(config)`` as it is), and a value that is not
    otherwise JSON-serialisable raises TypeError before anything is written."""
    return write_text(path, json.dumps(value, indent=indent, default=_path), exclusive=exclusive)


def _path(value):
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def save_figure(figure, path: str | Path, **savefig_kwargs) -> Path:
    """``figure.savefig`` to ``path``, atomically; the format is the suffix's unless given."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    atomic_write(path, lambda p: figure.savefig(p, **savefig_kwargs))
    return path


def write_netcdf(
    value, path: str | Path, *, engine: str = "h5netcdf", exclusive: bool = False
) -> bool:
    """An ``arviz.InferenceData`` or an ``xarray.Dataset`` to ``path`` as netCDF, atomically,
    read back and checked (``check_round_trip``) before it takes the name."""
    path = Path(path)

    def write(partial: Path) -> None:
        if hasattr(value, "groups"):  # InferenceData
            value.to_netcdf(str(partial), engine=engine)
        else:
            value.to_netcdf(partial, engine=engine)

    def verify(partial: Path) -> None:
        check_round_trip(value, partial, engine=engine, name=path)

    return atomic_write(path, write, verify=verify, exclusive=exclusive)


def check_round_trip(value, written: str | Path, *, engine: str = "h5netcdf", name=None) -> None:
    """Raise ``RoundTripError`` unless the netCDF file ``written`` holds every group, variable
    and coordinate of ``value`` (InferenceData or Dataset) with the same dimensions and equal
    values (strings compared as text, NaNs equal). One variable is read at a time."""
    import xarray as xr

    name = Path(name if name is not None else written)
    groups = (
        [(group, value[group]) for group in value.groups()]
        if hasattr(value, "groups")
        else [(None, value)]
    )
    for group, dataset in groups:
        where = f"{group}/" if group else ""
        try:
            on_disk = xr.open_dataset(written, group=group, engine=engine, cache=False)
        except (OSError, ValueError, KeyError) as error:
            raise RoundTripError(
                f"{name}: the written file does not read back{' group ' + group if group else ''}"
                f" ({type(error).__name__}: {error}); it was not put in place"
            ) from None
        with on_disk:
            for key, variable in dataset.variables.items():
                if key not in on_disk.variables:
                    raise RoundTripError(
                        f"{name}: {where}{key} was written but is not in the file; it was not "
                        "put in place"
                    )
                read = on_disk.variables[key]
                if read.dims != variable.dims or read.shape != variable.shape:
                    raise RoundTripError(
                        f"{name}: {where}{key} was written with dims {variable.dims} "
                        f"{variable.shape} and reads back as {read.dims} {read.shape}; it was "
                        "not put in place"
                    )
                difference = _first_difference(variable.values, read.values)
                if difference is not None:
                    index, before, after = difference
                    raise RoundTripError(
                        f"{name}: {where}{key}[{index}] was written as {before!r} and reads "
                        f"back as {after!r} (a stale encoding?); it was not put in place"
                    )


def _first_difference(written, read):
    """(index, written value, read value) of the first entry that differs, or None."""
    import numpy as np

    a, b = np.asarray(written), np.asarray(read)
    if a.dtype.kind in "USO" or b.dtype.kind in "USO":
        a, b = a.astype(str), b.astype(str)
        equal = a == b
    elif a.dtype.kind in "fc" or b.dtype.kind in "fc":
        equal = (a == b) | (np.isnan(a) & np.isnan(b))
    else:
        equal = a == b
    equal = np.broadcast_to(np.asarray(equal), a.shape)
    if equal.all():
        return None
    index = tuple(int(i) for i in np.argwhere(~equal)[0])
    return index, a[index].item(), b[index].item()


def save_checkpoint(path: str | Path, value: dict, format_tag: str) -> Path:
    """``torch.save`` of ``value`` with a ``"format"`` tag to ``path``, whole or not at all
    (``atomic_write``, checked by reading it back): trained networks' files."""
    import torch

    saved = {"format": format_tag, **value}
    atomic_write(
        path,
        lambda p: torch.save(saved, p),
        verify=lambda p: torch.load(p, map_location="cpu", weights_only=True),
    )
    return Path(path)


def load_checkpoint(path: str | Path, what: str, format_tag: str) -> dict:
    """What ``save_checkpoint`` wrote with ``format_tag``: FileNotFoundError for no file, a
    ValueError naming ``what`` for a file that is not one (unreadable, or another format)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same error
        raise ValueError(f"{what}: {path} is not a saved {what} ({error})") from None
    if not isinstance(saved, dict) or saved.get("format") != format_tag:
        raise ValueError(f"{what}: {path} is not a saved {what} ({format_tag})")
    return saved
