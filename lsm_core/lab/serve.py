"""``python -m lsm_core serve``: the embedded default in one command.

Upgrades the database, registers the models of the store, starts the Streamlit app and one worker as child
processes at once and, when a synthetic demo model is missing, trains it in a third, background child
(``python -m lsm_core demo``, at a lower priority), which registers each model as soon as it is trained and
reports its progress through :func:`lsm_core.ml.demo.demo_status`. Ctrl-C (or SIGTERM) stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lsm_core.lab.settings import Settings

ROOT = Path(__file__).resolve().parents[2]  # the project's folder: streamlit_app.py, pages/

# `streamlit run`, with Streamlit told before the first session that the app navigates with st.navigation.
# Streamlit reads a folder called pages/ the old (MPA v1) way until some script run has called st.navigation,
# process-wide: the first session after a start then had the old page list, so a link to /batch-results or
# /batch-history showed "Page not found" over the right page. (The URL paths differ from the file names so
# that the old way can never run a page file outside streamlit_app.py's sign-in gate.) This module never
# imports Streamlit itself; tests/test_first_start.py opens a deep link on a fresh server.
STREAMLIT_BOOT = (
    "import sys; from streamlit.runtime.pages_manager import PagesManager; "
    "PagesManager.uses_pages_directory = False; "
    "from streamlit.web.cli import main; sys.argv[0] = 'streamlit'; sys.exit(main())"
)


def _lower_priority() -> None:  # in the trainer's child process, before exec: the app and the worker go first
    try:
        os.nice(10)
    except OSError:
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


def serve(port: int = 8501, log=print) -> int:
    from lsm_core.errors import LsmError
    from lsm_core.lab import settings as settings_module
    from lsm_core.lab.history import open_lab
    from lsm_core.ml.demo import missing_demo_models

    if not (ROOT / "streamlit_app.py").is_file():
        raise LsmError(
            f"serve runs the app from the project's folder, but {ROOT} has no streamlit_app.py: "
            "install the project from its folder with `pip install -e .` (`make install`)"
        )
    settings = settings_module.current()
    env = child_environment(settings)
    lab = open_lab(settings)  # upgraded, and the store's models registered
    store = lab.store
    lab.dispose()
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            STREAMLIT_BOOT,
            "run",
            str(ROOT / "streamlit_app.py"),
            "--server.port",
            str(port),
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
    )
    worker = subprocess.Popen([sys.executable, "-m", "lsm_core", "worker"], cwd=ROOT, env=env)
    trainer = None
    missing = missing_demo_models(store)
    if missing:
        log(
            f"training the synthetic demo models {', '.join(missing)} in the background (a few minutes); "
            "the Classify page shows how far it is"
        )
        trainer = subprocess.Popen(
            [sys.executable, "-m", "lsm_core", "demo"], cwd=ROOT, env=env, preexec_fn=_lower_priority
        )
    children = [p for p in (app, worker, trainer) if p is not None]
    log(
        f"the app is at http://localhost:{port} (worker pid {worker.pid}); Ctrl-C stops "
        + ("all three" if trainer else "both")
    )
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and worker.poll() is None and app.poll() is None:
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
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if not stopping:
        log(f"stopped: {'the worker' if worker.returncode is not None else 'the app'} exited")
        return 1
    return 0
