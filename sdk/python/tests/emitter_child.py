"""An emitting process for the SIGKILL test (not a test module).

``python emitter_child.py OUTBOX URL COUNT [--drain]``: starts an outbox on the SQLite file
OUTBOX with its background sender, emits COUNT events and writes each id ``emit`` returned
for on stdout, flushed, one per line. With ``--drain`` it then delivers everything left and
exits 0; without it the parent kills it (SIGKILL) at a random point.
"""

from __future__ import annotations

import os
import sys

from audit_manager_client import AuditClient, Outbox, make_event


def main() -> None:
    path, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    drain = "--drain" in sys.argv[4:]
    client = AuditClient(url, timeout=5.0, deadline=10.0)
    outbox = Outbox(path, client, batch_size=200, poll_interval=0.05, retry_max=1.0)
    outbox.start()
    out = sys.stdout.fileno()
    for i in range(count):
        event_id = outbox.emit(
            make_event(
                source="/sdk/tests/crash",
                type="org.openg2p.test.crash",
                actor={"type": "system", "id": f"emitter-{os.getpid()}"},
                action="crash.test",
                outcome="success",
                subject=f"crash/{i % 97}",
            )
        )
        os.write(out, f"{event_id}\n".encode())  # unbuffered: in the pipe before the next emit
    if drain:
        outbox.stop()
        outbox.run_until_empty(timeout=60.0)
        outbox.close()


if __name__ == "__main__":
    main()
