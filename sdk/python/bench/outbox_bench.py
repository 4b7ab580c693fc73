"""Benchmark: ``Outbox.emit`` (the local durable write) with audit-manager up and down.

Emits N events one after another through a SQLite outbox whose background sender is running,
and reports events/s and the p50/p99/max latency of ``emit``:

- **up**: the sender delivers to a real ``audit-manager`` (started here, ingest role only, a
  temporary spool) while the emitter writes;
- **down**: nothing listens at the service's address (connection refused); the sender backs
  off and the outbox grows.

    python bench/outbox_bench.py --bin target/debug/audit-manager [--events 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from audit_manager_client import AuditClient, Outbox, make_event


def start_server(binary: str, spool: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_MANAGER__")}
    env.update(
        {
            "AUDIT_MANAGER__HTTP__LISTEN": "127.0.0.1:0",
            "AUDIT_MANAGER__SPOOL__PATH": str(spool),
            "AUDIT_MANAGER__ROLES": "ingest",
            "RUST_LOG": "warn,audit_manager::serve=info",
            "LOG_FORMAT": "json",
        }
    )
    env.pop("CONFIG_PATH", None)
    proc = subprocess.Popen(
        [binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    addr: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            try:
                v = json.loads(raw)
            except ValueError:
                continue
            if v.get("message") == "audit-manager listening":
                addr.append(v["addr"])
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60) or not addr:
        proc.kill()
        sys.exit("audit-manager did not start")
    return proc, f"http://{addr[0]}"


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def run(url: str, n: int, workdir: Path, label: str) -> dict[str, float]:
    client = AuditClient(url, timeout=2.0, deadline=5.0)
    outbox = Outbox(workdir / f"{label}.sqlite3", client, poll_interval=0.05, retry_max=1.0)
    outbox.start()
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        ev = make_event(
            source="/bench/outbox",
            type="org.openg2p.beneficiary.updated",
            actor={"type": "user", "id": f"officer-{i % 50}", "name": "Officer"},
            action="beneficiary.update",
            outcome="success",
            resource={"type": "beneficiary", "id": f"b-{i}"},
            changes=[{"field": "phone", "old": "0700000001", "new": "0700000002"}],
        )
        s = time.perf_counter()
        outbox.emit(ev)
        lat.append(time.perf_counter() - s)
    elapsed = time.perf_counter() - t0
    depth_at_end = outbox.stats().depth
    outbox.close()
    client.close()
    lat.sort()
    return {
        "events": n,
        "events_per_s": n / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(0.99 * (n - 1))] * 1000,
        "max_ms": lat[-1] * 1000,
        "depth_at_end": depth_at_end,
    }


def report(label: str, r: dict[str, float]) -> None:
    print(
        f"{label:12s} {r['events']:>6.0f} events  {r['events_per_s']:>8.0f} events/s  "
        f"emit p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.1f} ms  "
        f"outbox depth at the end {r['depth_at_end']:.0f}  (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--bin", default=os.environ.get("AUDIT_MANAGER_BIN", "target/debug/audit-manager")
    )
    ap.add_argument("--events", type=int, default=20_000)
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        f", load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as d:
        work = Path(d)
        proc, url = start_server(args.bin, work / "spool")
        try:
            report("server up", run(url, args.events, work, "up"))
        finally:
            proc.terminate()
            proc.wait(30)
        report("server down", run(dead_url(), args.events, work, "down"))


if __name__ == "__main__":
    main()
