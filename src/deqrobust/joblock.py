"""One writer per output, and no job left running by a killed Snakemake.

``kill -9`` of ``snakemake`` (or a crash, or a closed terminal) does not stop the jobs it
started: they keep training or attacking, and a rerun may start the same job beside them,
two processes writing one checkpoint. ``claim(output)`` guards a long job against both:

- it takes an exclusive lock on ``.<name>.lock`` next to the output (``flock``: the kernel
  drops it when the process ends, however it ends, so a lock is never stale) and refuses to
  start when another process holds it, naming that process and what to do;
- when the job was started by Snakemake (an ancestor process runs ``snakemake``), a watchdog
  thread stops the job as Ctrl-C would (SIGINT to itself) within a second of that Snakemake
  process being gone, so the rerun resumes it from its last saved state (``resume.pt``,
  ``<cell>.json.partial/``).

The lock works wherever ``flock`` does (Linux and macOS; on network file systems as far as
they support it); the watchdog needs Linux's ``/proc`` and is off elsewhere.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from deqrobust.atomic import refused
from deqrobust.errors import ConfigError

POLL_SECONDS = 1.0  # how often the watchdog looks for the Snakemake process
GRACE_SECONDS = 60.0  # after the interrupt, a job stuck in native code is ended hard


class BusyError(ConfigError):
    """Another process is writing the same output; the message names it and the next step."""


def lock_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


@contextmanager
def claim(output: str | os.PathLike) -> Iterator[None]:
    """Hold ``output`` for this process (see the module docstring); under torchrun only rank 0 locks."""
    stop_watch = _watch_snakemake()
    try:
        if os.environ.get("RANK", "0") != "0":  # the other ranks of a data-parallel job write nothing
            yield
            return
        with _locked(Path(output)):
            yield
    finally:
        stop_watch.set()


@contextmanager
def _locked(output: Path) -> Iterator[None]:
    path = lock_path(output)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:  # read-only or not ours: say so for the output, not for its lock file
            if refused(err) is None:
                raise
            raise refused(err, output) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise BusyError(_busy_message(output, holder)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder unlinked while we waited for it
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": " ".join(sys.argv)}
            ).encode(),
        )
        yield
    finally:
        with suppress(OSError):
            path.unlink()  # before the unlock, so that a waiter sees a new file
        os.close(fd)


def _read(fd: int) -> dict:
    with suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode())
    return {}


def _busy_message(output: Path, holder: dict) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
    command = holder.get("command", "?")
    return (
        f"{output} is being written by another process (pid {pid} on {host}, since {since}: {command}). "
        "A snakemake stopped with kill -9 can leave its jobs running: wait for that process to end, "
        f"or stop it (kill {pid}), then rerun; the job resumes from its last saved state."
    )


# ---- the watchdog --------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid`` from /proc, or None when it is gone (or there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def _is_snakemake(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    if any(Path(arg).name == "snakemake" for arg in argv[:2]):
        return True
    return any(a == "-m" and b == "snakemake" for a, b in zip(argv, argv[1:]))


def snakemake_ancestor() -> tuple[int, int] | None:
    """(pid, start time) of the nearest ancestor process that runs Snakemake, if any."""
    pid = os.getppid()
    while pid > 1:
        stat = _proc_stat(pid)
        if stat is None:
            return None
        if _is_snakemake(pid):
            return pid, stat[1]
        pid = stat[0]
    return None


def _watch_snakemake() -> threading.Event:
    """Start the watchdog when a Snakemake process started this one; set the event to stop it."""
    stop = threading.Event()
    ancestor = snakemake_ancestor()
    if ancestor is not None:
        threading.Thread(target=_watch, args=(*ancestor, stop), name="deqrobust-watchdog", daemon=True).start()
    return stop


def _watch(pid: int, start: int, stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == start:
            continue  # still the same Snakemake process (a reused pid has another start time)
        print(
            f"deqrobust: the snakemake process that started this job (pid {pid}) is gone; stopping, "
            "so that a rerun resumes this job from its last saved state",
            file=sys.stderr,
            flush=True,
        )
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: wakes a blocking call, cleanup runs, the lock is released
        else:  # SIGINT ignored (inherited): end without cleanup
            os.kill(os.getpid(), signal.SIGTERM)
        if not stop.wait(GRACE_SECONDS):  # stuck in native code that never returns to Python
            os._exit(130)
        return
