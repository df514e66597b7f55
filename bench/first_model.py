"""The first start: how long until the Classify page offers a model, on two busy cores.

Starts `python -m lsm_core serve` on an empty data dir (a fresh folder: no database, no models; the full demo
recipe) and a free port on 127.0.0.1, while --busy processes (default: one per core) spin in a busy loop at
the normal priority, and clocks from the start of serve:

- the app answering (Streamlit's health endpoint);
- each model as the Classify page offers it: a model in the registry that is not deleted and passed its
  quality check (lsm_core.lab.registry.offered_models, what pages/classify.py lists), polled in the database;
- the first model offered (the issue's figure, against a target of 2 minutes: the ratio), a model offered
  for each task, and the end of the demo training (every demo model in its final version, registered, and
  the trainer gone).

serve runs in a session of its own, as `make run` from a terminal does, and the busy loops in another, as
other people's work does. Where Linux groups the processes of a session for the scheduler (autogroup,
/proc/sys/kernel/sched_autogroup_enabled) each session gets a fair share of the cores, and a process's
niceness counts only against the processes of its own session; --one-session runs the busy loops in serve's
session instead (busy work started from the same terminal), where they compete with it process by process.

Then stops serve (Ctrl-C, as a person would) and the busy loops. With --baseline PATH the same is measured
first for the project in PATH (for example the last commit: `git archive HEAD | tar -x -C /tmp/orig`), and
the ratios of the two runs are printed. The machine's load average at the start is printed with each run:
other work on the machine makes it busier still.

Usage: python bench/first_model.py [--busy 2] [--one-session] [--until first|tasks|all] [--limit 2400]
       [--baseline PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 120.0  # the aim: a first usable model within 2 minutes on two busy cores
BUSY_LOOP = "while True: pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


POLL = r"""
import json, sys, time
from pathlib import Path
from db.session import make_engine, session_factory
from lsm_core.lab.registry import offered_models
from lsm_core.ml.demo import demo_status, missing_demo_models
from lsm_core.ml.models import ModelStore

data = Path(sys.argv[1])
lab = session_factory(make_engine(f"sqlite:///{data / 'lsm.db'}"))
store = ModelStore(data / "models")
while sys.stdin.readline():  # one line asked, one line answered
    with lab() as s:
        offered = [(m.task, m.label, bool(m.is_default)) for m in offered_models(s)]
        registered = {(m.name, m.version) for m in offered_models(s, include_failed=True)}
    stored = {(p.manifest.name, p.manifest.version) for p in store.packages()}
    finished = not missing_demo_models(store) and demo_status(data / "models") is None and stored <= registered
    print(json.dumps({"offered": offered, "finished": finished}), flush=True)
"""


class Registry:
    """The models the Classify page of the project in ``root`` would offer, asked in a child process that
    imports that project's code (a baseline checkout's queries, not this one's)."""

    def __init__(self, root: Path, data: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", POLL, str(data)],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the registry poller stopped (exit status {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def stop(proc: subprocess.Popen, own_session: bool, sig: int = signal.SIGINT, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if own_session:
                os.killpg(proc.pid, signal.SIGKILL)  # serve's own process group: its children too
            else:
                proc.kill()
            proc.wait()


def first_start(root: Path, args: argparse.Namespace) -> dict:
    """One first start of serve from the project in ``root``, timed; returns the figures."""
    root = root.resolve()
    data = Path(tempfile.mkdtemp(prefix="lsm-first-start-"))
    env = {k: v for k, v in os.environ.items() if k not in ("LSM_DATABASE_URL", "LSM_DEMO_RECIPE")}
    env |= {"LSM_DATA_DIR": str(data), "LSM_ADDRESS": "127.0.0.1", "PYTHONPATH": str(root)}
    port = free_port()
    if args.one_session:  # this process's session: serve and the busy loops share it
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy)]
    else:  # a session of their own, apart from serve's
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True) for _ in range(args.busy)]
    load = os.getloadavg()[0]
    log_path = data.parent / f"{data.name}.serve.log"
    events: list[tuple[float, str]] = []
    where = "in serve's session" if args.one_session else "in a session of their own"
    figures: dict = {
        "root": str(root),
        "busy_loops": args.busy,
        "busy_loops_in_serve_session": args.one_session,
        "cores": os.cpu_count(),
        "load_at_start": load,
    }
    print(
        f"\n{root}: first start of serve on an empty data dir, {args.busy} busy loop(s) {where} on "
        f"{os.cpu_count()} core(s), load average {load:.1f} at the start",
        flush=True,
    )

    def event(what: str, t: float) -> None:
        events.append((t, what))
        print(f"  {t:7.1f} s  {what}", flush=True)

    registry = None
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        serve = subprocess.Popen(
            [sys.executable, "-m", "lsm_core", "serve", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=not args.one_session,
        )
        try:
            while not answers(port):
                if serve.poll() is not None or time.monotonic() - t0 > args.limit:
                    raise RuntimeError("the app did not answer: " + log_path.read_text()[-3000:])
                time.sleep(0.2)
            figures["app_s"] = time.monotonic() - t0
            event("the app answers", figures["app_s"])
            registry = Registry(root, data, env)
            seen: set[str] = set()
            while serve.poll() is None:
                t = time.monotonic() - t0
                if t > args.limit:
                    print(f"  stopped waiting after {args.limit:g} s", flush=True)
                    break
                state = registry.ask()
                for task, label, default in state["offered"]:
                    if label not in seen:
                        seen.add(label)
                        event(f"offered: {task} {label}" + (" (the task's default)" if default else ""), t)
                        figures.setdefault("first_model_s", t)
                tasks = {task for task, _, _ in state["offered"]}
                if len(tasks) >= 2 and "each_task_s" not in figures:
                    figures["each_task_s"] = t
                if state["finished"] and seen:
                    figures["finished_s"] = t
                    defaults = [f"{task} {label}" for task, label, default in state["offered"] if default]
                    event("demo training finished; the defaults: " + ", ".join(defaults), t)
                    break
                if args.until == "first" and "first_model_s" in figures:
                    break
                if args.until == "tasks" and "each_task_s" in figures:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError("serve stopped: " + log_path.read_text()[-3000:])
        finally:
            if registry is not None:
                registry.close()
            stop(serve, own_session=not args.one_session)
            for proc in busy:
                proc.kill()
                proc.wait()
    figures["events"] = events
    figures["serve_log"] = str(log_path)
    return figures


def summary(figures: dict) -> str:
    def s(key: str) -> str:
        return f"{figures[key]:.0f} s" if key in figures else "not reached"

    ratio = ""
    if "first_model_s" in figures:
        ratio = f" (ratio to the 2-minute target: {figures['first_model_s'] / TARGET_S:.2f})"
    return (
        f"first model offered: {s('first_model_s')}{ratio}; a model for each task: {s('each_task_s')}; "
        f"demo training finished: {s('finished_s')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes (one per core)")
    parser.add_argument("--one-session", action="store_true", help="the busy loops in serve's session")
    parser.add_argument("--until", choices=("first", "tasks", "all"), default="all", help="what to wait for")
    parser.add_argument("--limit", type=float, default=2400.0, help="seconds to wait at most, per run")
    parser.add_argument("--baseline", type=Path, help="another checkout of the project, measured first")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    runs = {}
    if args.baseline:
        runs["baseline"] = first_start(args.baseline, args)
    runs["this"] = first_start(ROOT, args)
    print()
    for name, figures in runs.items():
        print(f"{name} ({figures['root']}, load {figures['load_at_start']:.1f} at the start): {summary(figures)}")
    if args.baseline:
        for key in ("first_model_s", "each_task_s", "finished_s"):
            if key in runs["baseline"] and key in runs["this"]:
                print(f"{key}: this / baseline = {runs['this'][key] / runs['baseline'][key]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
