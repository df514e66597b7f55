"""``python -m lsm_core serve``: the embedded default in one command.

Upgrades the database, registers the models of the store, starts the Streamlit app and one worker as child
processes at once and, when a synthetic demo model is missing, trains it in a third, background child
(``python -m lsm_core demo``), which registers each model as soon as it is trained and reports its progress
through :func:`lsm_core.ml.demo.demo_status`. The quick first versions train at the normal priority (until
there is a model, the worker has nothing to do and the app nothing to offer: seconds of CPU each); then serve
lowers the trainer's priority for the better versions, so that the app and the worker go first. Ctrl-C (or
SIGTERM) stops them all.

The app listens on 127.0.0.1 unless told otherwise (``--address`` or LSM_ADDRESS); opened to the network in
lab mode without LSM_ADMINS, everyone who reaches the port administers, and serve says so. A worker that dies
(killed for memory, a crash) is started again after a pause that doubles up to a minute, and the app's
sidebar says so (:func:`worker_restarts`); the app stays up. Blobs nothing references are collected once an
hour (:mod:`lsm_core.lab.gc`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lsm_core.lab.settings import Settings

ROOT = Path(__file__).resolve().parents[2]  # the project's folder: streamlit_app.py, pages/

# `streamlit run`, with Streamlit told before the first session that the app navigates with st.navigation.
# Streamlit (1.67) reads a folder called pages/ the old (MPA v1) way until some script run has called
# st.navigation, process-wide: PagesManager.uses_pages_directory is set from the folder's existence when the first
# session starts, and only st.navigation clears it. The first session after a start then had the old page list:
# a link to /batch-results or /batch-history showed "Page not found" over the right page, and /results ran
# pages/results.py alone, outside streamlit_app.py's sign-in gate. Streamlit offers no public setting for this
# (client.showSidebarNavigation only hides the old menu), and the folder's name is fixed by the design, so this
# private class attribute is set here, the one place. This module never imports Streamlit itself;
# tests/test_serve.py opens a page file's name first and then every page's URL path on a fresh server.
STREAMLIT_BOOT = (
    "import sys; from streamlit.runtime.pages_manager import PagesManager; "
    "PagesManager.uses_pages_directory = False; "
    "from streamlit.web.cli import main; sys.argv[0] = 'streamlit'; sys.exit(main())"
)


LOW_PRIORITY = 10  # the niceness of the trainer while it trains the better demo versions


def _lower_priority() -> None:  # in the trainer's child process, before exec: the app and the worker go first
    try:
        os.nice(LOW_PRIORITY)
    except OSError:
        pass


def lower_priority(pid: int, niceness: int = LOW_PRIORITY) -> None:
    """Lower the priority of the running process ``pid`` to ``niceness``, each of its threads (Linux keeps a
    niceness per thread: the process's would leave the threads that torch has started as they were)."""
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        threads = [pid]  # no /proc (macOS): the process's niceness is its threads'
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:  # the thread ended meanwhile
            pass


def child_environment(settings: Settings) -> dict[str, str]:
    """This environment for the children, which run in ROOT: the settings with the data dir (and a SQLite
    file) made absolute, so that a relative LSM_DATA_DIR means the folder serve was started in; ROOT on
    PYTHONPATH (``pages``)."""
    from sqlalchemy.engine import make_url

    env = dict(os.environ) | settings.environment()
    url = settings.database_url
    if url.startswith("sqlite"):
        parsed = make_url(url)
        if parsed.database and parsed.database != ":memory:" and not Path(parsed.database).is_absolute():
            env["LSM_DATABASE_URL"] = parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(
                hide_password=False
            )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


WORKER_STATUS_NAME = "serve-worker.json"  # in the data dir: the worker restarts serve made, for the sidebar
RESTART_PAUSES_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)  # between a worker's death and its next start
STEADY_S = 300.0  # a worker that ran this long starts the pauses over when it dies
GC_EVERY_S = 3600.0


def is_loopback(address: str) -> bool:
    """Whether ``address`` reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def open_lab_warning(settings: Settings) -> str | None:
    """What to warn about the address the app listens on, or None: open to the network in lab mode (no
    sign-in), whatever LSM_ADMINS says. Nobody signs in there, so everyone who reaches the port acts as the
    same person (LSM_USER, or the login name of the account that started the app), and LSM_ADMINS cannot tell
    them apart: when that person administers, everyone does."""
    if is_loopback(settings.address) or settings.signed_in:
        return None
    who = settings.user or "the account that started the app"
    administers = "administers the lab (deletes anyone's batches, trains and chooses models, changes roles)"
    if not settings.admins:
        power = f"Everyone {administers}"
    else:
        power = f"LSM_ADMINS names {', '.join(sorted(settings.admins))}, but it cannot tell people apart here: " + (
            f"everyone {administers}" if who in settings.admins else f"everyone can change or delete {who}'s batches"
        )
    return (
        f"the app listens on {settings.address} in lab mode (no sign-in): anyone who can reach this port acts "
        f"as {who}. {power}. Configure sign-in (README, Security), or serve on 127.0.0.1"
    )


@dataclass(frozen=True)
class WorkerRestarts:
    restarts: int  # how many times serve started the worker again
    last_exit: int | None  # the exit status of the worker that died last (negative: killed by that signal)
    died_at: float | None  # when (time.time())
    running: bool  # whether a worker runs now (False: serve waits before starting the next)


def worker_restarts(data_dir: str | Path) -> WorkerRestarts | None:
    """The worker restarts of the serve running on ``data_dir``, or None (none, or no serve running)."""
    path = Path(data_dir) / WORKER_STATUS_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        os.kill(int(record["serve_pid"]), 0)  # a serve that vanished left its record behind: not news
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not record.get("restarts") and record.get("running", True):
        return None
    return WorkerRestarts(
        int(record.get("restarts", 0)), record.get("last_exit"), record.get("died_at"), bool(record.get("running"))
    )


class _WorkerKeeper:
    """Starts the worker, and starts it again when it dies, pausing longer each time it dies young."""

    def __init__(self, env: dict[str, str], data_dir: Path, log) -> None:
        self.env, self.log = env, log
        self.path = data_dir / WORKER_STATUS_NAME
        self.restarts, self.pause_index = 0, 0
        self.last_exit: int | None = None
        self.died_at: float | None = None
        self.next_start = 0.0
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "lsm_core", "worker"], cwd=ROOT, env=self.env)
        self.started = time.monotonic()
        self._record()

    def check(self) -> None:
        """Call often: notices a dead worker and starts the next one when its pause is over."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is not None:
            self.last_exit, self.died_at = self.proc.returncode, time.time()
            self.proc = None
            if now - self.started >= STEADY_S:
                self.pause_index = 0
            pause = RESTART_PAUSES_S[min(self.pause_index, len(RESTART_PAUSES_S) - 1)]
            self.pause_index += 1
            self.next_start = now + pause
            self.log(f"the worker stopped (exit status {self.last_exit}); starting another in {pause:g} s")
            self._record()
        if self.proc is None and now >= self.next_start:
            self.restarts += 1
            self.start()
            self.log(f"worker started again (pid {self.proc.pid if self.proc else '?'}; restart {self.restarts})")

    def _record(self) -> None:
        record = {
            "serve_pid": os.getpid(),
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "died_at": self.died_at,
            "running": self.proc is not None,
        }
        try:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            self.log(f"could not write {self.path}: {exc}")

    def stop_children(self) -> list[subprocess.Popen]:
        self.path.unlink(missing_ok=True)
        return [self.proc] if self.proc is not None else []


def _collect_garbage_forever(settings: Settings, stop: threading.Event, log) -> None:
    from lsm_core.lab.gc import collect_garbage
    from lsm_core.lab.open_lab import open_lab

    while not stop.wait(GC_EVERY_S):
        try:
            lab = open_lab(settings, sync=False)
            try:
                report = collect_garbage(lab, dry_run=False)
            finally:
                lab.dispose()
            if report.files:
                log(f"blob store: {report.summary()}")
        except Exception as exc:  # the database may be restarting: the next hour tries again
            log(f"collecting unreferenced blobs failed: {exc}")


def stop_processes(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM every process still running (a worker finishes its step and gives its job back), then wait for
    each; kill one that has not exited ``timeout`` seconds into its wait."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(port: int = 8501, log=print, address: str | None = None) -> int:
    from lsm_core.errors import LsmError
    from lsm_core.lab import settings as settings_module
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.ml.demo import FIRST, demo_plan, demo_status

    if not (ROOT / "streamlit_app.py").is_file():
        raise LsmError(
            f"serve runs the app from the project's folder, but {ROOT} has no streamlit_app.py: "
            "install the project from its folder with `pip install -e .` (`make install`)"
        )
    settings = settings_module.current()
    if address:
        settings = settings.with_(address=address.strip())
    # the app runs in ROOT: its secrets are the user's and ROOT's, whatever folder serve was started in
    app_secrets = [Path.home() / ".streamlit" / "secrets.toml", ROOT / ".streamlit" / "secrets.toml"]
    problem = settings_module.auth_problem(app_secrets)
    if problem:
        raise LsmError(problem)  # a forgeable sign-in cookie: nothing starts
    settings = settings.with_(signed_in=settings_module.Settings.from_env(secrets=app_secrets).signed_in)
    env = child_environment(settings)
    lab = open_lab(settings)  # upgraded, and the store's models registered
    store = lab.store
    lab.dispose()
    for warning in (open_lab_warning(settings), settings_module.auth_warning(app_secrets)):
        if warning:
            log("WARNING: " + warning)
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            STREAMLIT_BOOT,
            "run",
            str(ROOT / "streamlit_app.py"),
            "--server.port",
            str(port),
            "--server.address",
            settings.address,
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
    )
    keeper = _WorkerKeeper(env, settings.data_dir, log)
    trainer = None
    plan = demo_plan(store)
    quick_first = any(stage == FIRST for _, stage in plan)  # the trainer's priority is lowered after them
    if plan:
        missing = list(dict.fromkeys(name for name, _ in plan))
        log(
            f"training the synthetic demo models {', '.join(missing)} in the background"
            + (" (quick first versions within a minute or two, better ones after them)" if quick_first else "")
            + "; the Classify page shows how far it is"
        )
        trainer = subprocess.Popen(
            [sys.executable, "-m", "lsm_core", "demo"],
            cwd=ROOT,
            env=env,
            preexec_fn=None if quick_first else _lower_priority,
        )
    shown = "localhost" if is_loopback(settings.address) else settings.address
    log(
        f"the app is at http://{shown}:{port} (worker pid {keeper.proc.pid if keeper.proc else '?'}); Ctrl-C stops "
        + ("all three" if trainer else "both")
    )
    stopping = False
    gc_stop = threading.Event()
    threading.Thread(target=_collect_garbage_forever, args=(settings, gc_stop, log), daemon=True).start()

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and app.poll() is None:
            keeper.check()
            if quick_first and trainer is not None and trainer.poll() is None:
                status = demo_status(store.root)
                if status is not None and status.running and status.pid == trainer.pid and status.stage != FIRST:
                    lower_priority(trainer.pid)  # the quick versions are registered: the app and worker go first
                    quick_first = False
            if trainer is not None and trainer.poll() is not None:
                if trainer.returncode == 0:
                    log("the synthetic demo models are trained and registered")
                else:
                    log(
                        f"training the demo models failed (exit status {trainer.returncode}); the Classify page "
                        "says why, and `python -m lsm_core demo` (or the next serve) tries again"
                    )
                trainer = None
            time.sleep(0.5)
    finally:
        gc_stop.set()
        children = [app, *keeper.stop_children(), *([trainer] if trainer is not None else [])]
        stop_processes(children, timeout=30)
    if not stopping:
        log(f"stopped: the app exited (exit status {app.returncode})")
        return 1
    return 0
