"""``python -m lsm_core serve``: the embedded default in one command.

Upgrades the database, makes sure demo models exist and are registered, starts one worker and the
Streamlit app as child processes, and stops both on Ctrl-C (or SIGTERM).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve(port: int = 8501, log=print) -> int:
    from db.session import make_engine, session_factory, upgrade
    from lsm_core.demo import ensure_demo_models
    from lsm_core.registry import sync_models

    engine = make_engine()
    upgrade(engine)
    ensure_demo_models(log=log)
    sync_models(session_factory(engine))
    engine.dispose()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    worker = subprocess.Popen([sys.executable, "-m", "lsm_core", "worker"], cwd=ROOT, env=env)
    app = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.port", str(port),
         "--server.headless", "true"],
        cwd=ROOT, env=env,
    )
    log(f"the app is at http://localhost:{port} (worker pid {worker.pid}); Ctrl-C stops both")
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and worker.poll() is None and app.poll() is None:
            time.sleep(0.5)
    finally:
        for proc in (app, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (app, worker):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if not stopping:
        log(f"stopped: {'the worker' if worker.returncode is not None else 'the app'} exited")
        return 1
    return 0
