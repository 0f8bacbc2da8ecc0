# DVC versions what a run finishes (docs/workflow.md, "DVC versions the checkpoints").
#
# Every run records its results folder (and the data outputs when they live outside it) in the
# DVC cache with `dvc add --no-relink`: when it starts (what an interrupted run left), while it
# runs (a watcher looks every RECORD_EVERY seconds and records what changed) and when it ends,
# on success or failure. The record is `<path>.dvc` beside each path (results/<profile>.dvc,
# data/cifar10-split.json.dvc, ...): one per profile, so a profile switch never meets a results
# folder without one, and it holds what the workspace holds, so a checkout finds nothing to
# reset. --no-relink leaves the workspace files as they are (inode and mtime: Snakemake sees no
# change, finished/ keeps its hard links). Resume state, logs, partial cells and the trainings
# kept in finished/ are left out by .dvcignore: DVC never stores, restores or deletes them.
#
# Off with DEQROBUST_DVC_RECORD=0. Outside a DVC repository (no .dvc/ above the working
# directory) nothing is recorded; a record that fails (e.g. no git repository) is one warning,
# never a failed run.
import threading
import time

from snakemake.logging import logger

UNRECORDED = ("resume.pt", "resume-other-config.pt")  # as .dvcignore (with logs/, finished/, *.partial/)
RECORD_EVERY = 30  # seconds between the watcher's looks at the results folder
_record_lock = threading.Lock()
_watcher_stop = threading.Event()
_record_state = {"broken": False, "seen": None, "changed": False}


def _inside(path, folder):
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder + os.sep)


def dvc_record_paths():
    """What a run of this profile finishes: its results folder and, outside it, the data outputs."""
    paths = [config["results"]]
    paths += [p for p in (split_json(), batches_dir()) if not _inside(p, config["results"])]
    return [p for p in paths if os.path.exists(p)]


def _dvc_repo():
    """The DVC repository around the working directory, or None."""
    here = Path.cwd().resolve()
    return next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), None)


def _dvc_command():
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    found = shutil.which("dvc")
    return [found] if found else None


def _signature(paths):
    """(path, size, mtime) of every file under paths: what the watcher compares."""
    seen = []
    for root in paths:
        for base, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in ("finished", "logs") and not d.endswith(".partial")]
            seen += [
                (os.path.join(base, f), st.st_size, st.st_mtime_ns)
                for f in files
                if f not in UNRECORDED and not (f.startswith(".") and f.endswith((".tmp", ".lock")))
                for st in [os.stat(os.path.join(base, f))]
            ]
    return sorted(seen)


def _record_file(path):
    return Path(os.path.normpath(path) + ".dvc")


def _records(paths):
    """The bytes of each path's record (results/<profile>.dvc, ...): whether `dvc add` changed one."""
    return {p: _record_file(p).read_bytes() if _record_file(p).is_file() else None for p in paths}


def _add(paths, when):
    """`dvc add --no-relink paths` (retried while another DVC command holds the lock): True when recorded."""
    dvc = _dvc_command()
    if dvc is None:
        _record_state["broken"] = True
        logger.warning("DVC is not installed: this run's results are not recorded (pip install dvc)")
        return False
    before = _records(paths)
    for _ in range(3):
        proc = subprocess.run([*dvc, "add", "--no-relink", "--quiet", *paths], capture_output=True, text=True)
        why = (proc.stderr or proc.stdout).strip().splitlines()
        if proc.returncode == 0 or when == "watch" or "lock" not in " ".join(why).lower():
            break
        time.sleep(5)
    if proc.returncode != 0:
        if when != "watch":  # the watcher's failure (a file replaced while DVC hashed it) retries later
            _record_state["broken"] = when == "start"  # e.g. not a git repository: not again this run
            logger.warning(
                f"DVC could not record {' '.join(paths)} ({when}): {why[-1] if why else proc.returncode}. "
                f"Nothing was changed; record by hand: dvc add --no-relink {' '.join(paths)}"
            )
        return False
    _record_state["changed"] |= _records(paths) != before
    return True


def dvc_record(when):
    """Record the run's outputs in the DVC cache unless nothing changed since the last record."""
    if os.environ.get("DEQROBUST_DVC_RECORD", "1") == "0" or _record_state["broken"] or _dvc_repo() is None:
        return
    with _record_lock:
        paths = dvc_record_paths()
        if not paths:
            return
        try:
            signature = _signature(paths)
        except OSError:  # a file went while we looked (a job replacing its output): next time
            return
        if signature != _record_state["seen"]:
            if not _add(paths, when):
                return
            _record_state["seen"] = signature
        if when != "watch" and _record_state["changed"]:
            records = " ".join(str(_record_file(p)) for p in paths)
            logger.info(f"DVC recorded {' '.join(paths)}; version the record with its config: git add {records}")


def _watch():
    while not _watcher_stop.wait(RECORD_EVERY):
        dvc_record("watch")


def dvc_record_start():
    """onstart: record what is there (an interrupted run's finished jobs), then watch."""
    dvc_record("start")
    if not _record_state["broken"] and not workflow.touch:
        threading.Thread(target=_watch, name="dvc-record", daemon=True).start()


def dvc_record_end(when):
    """onsuccess, onerror: the last record of the run."""
    _watcher_stop.set()
    dvc_record(when)
