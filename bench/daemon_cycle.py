"""Control-cycle cost (issue 6); prints one JSON object.

Targets: one control cycle (forecast, plan, actuate, store) for one service <= 200 ms p99 on this
machine, excluding network time to Prometheus; 50 services in one daemon <= 10 s per cycle, also
while the daemon's trainer (controller/trainer.py) retrains all 50 beside the cycles.
Signals come from the sample trace on a simulated clock (no network), the actuator is the simulated
cluster, the store is SQLite on disk, the forecaster is the default policy's (the ensemble).

Usage: python bench/daemon_cycle.py [--cycles 200] [--services 50]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.actuators import SimulatedActuator  # noqa: E402
from controller.daemon import Daemon  # noqa: E402
from controller.daemon_metrics import DaemonMetrics  # noqa: E402
from controller.service_controller import ServiceController  # noqa: E402
from controller.policy import load_policy  # noqa: E402
from controller.replay import load_trace  # noqa: E402
from controller.signals import TraceSignals  # noqa: E402
from controller.store import Store  # noqa: E402
from controller.trainer import Trainer  # noqa: E402

T0 = np.datetime64("2026-01-05T00:00", "m")


def build(n: int, workdir: Path, trace) -> tuple[Daemon, list[float]]:
    metrics = DaemonMetrics()
    store = Store(str(workdir / f"bench{n}.db"))
    services = []
    base = (ROOT / "configs" / "policy.yaml").read_text()
    for i in range(n):
        path = workdir / f"svc{i}.yaml"
        path.write_text(base.replace("service: llm-chat", f"service: svc-{i}").replace("count: auto", "count: 3"))
        services.append(ServiceController(path, TraceSignals(trace, 8 * 1440 + 37 * i, T0),
                                          SimulatedActuator(load_policy(path), reserved=3, seed=i), store, metrics,
                                          seed=i))
    clock = {"now": T0}
    return Daemon(services, metrics, clock=lambda: clock["now"]), clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--services", type=int, default=50)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    trace = load_trace(ROOT / "data" / "servegen_llm_m_small.csv")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        daemon, clock = build(1, Path(tmp), trace)
        daemon.retrain_all()
        times = []
        for _ in range(args.cycles):
            started = time.perf_counter()
            daemon.cycle_all()
            times.append(time.perf_counter() - started)
            clock["now"] += np.timedelta64(1, "m")
        ms = np.array(times) * 1000
        report["one_service"] = {"cycles": args.cycles, "p50_ms": round(float(np.percentile(ms, 50)), 2),
                                 "p99_ms": round(float(np.percentile(ms, 99)), 2),
                                 "max_ms": round(float(ms.max()), 2)}
        report["one_service"]["target_met"] = report["one_service"]["p99_ms"] <= 200
        daemon, clock = build(args.services, Path(tmp), trace)
        started = time.perf_counter()
        daemon.retrain_all()
        train_s = time.perf_counter() - started
        times = []
        for _ in range(5):
            started = time.perf_counter()
            daemon.cycle_all()
            times.append(time.perf_counter() - started)
            clock["now"] += np.timedelta64(1, "m")
        # The scheduled retrain, as the running daemon does it: queued for the trainer's thread while the
        # cycles go on (on the same cores), one every 2 s here (30x the daemon's pace of one a minute).
        trainer = Trainer()
        daemon.use_trainer(trainer)
        started = time.perf_counter()
        daemon.queue_retrain_all()
        during = []
        while not trainer.wait_idle(0):
            begun = time.perf_counter()
            daemon.cycle_all()
            during.append(time.perf_counter() - begun)
            clock["now"] += np.timedelta64(1, "m")
            time.sleep(max(0.0, 2.0 - (time.perf_counter() - begun)))
        background_s = time.perf_counter() - started
        trainer.stop()
        report["many_services"] = {"services": args.services, "retrain_all_s": round(train_s, 1),
                                   "cycle_s": [round(t, 2) for t in times], "max_cycle_s": round(max(times), 2),
                                   "while_retraining": {"retrain_all_s": round(background_s, 1),
                                                        "cycles": len(during), "cycle_every_s": 2.0,
                                                        "p50_cycle_s": round(float(np.median(during)), 2),
                                                        "max_cycle_s": round(max(during), 2)},
                                   "target_met": max(times + during) <= 10}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
