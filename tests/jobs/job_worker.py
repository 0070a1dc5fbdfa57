"""A jobs-pool worker for tests; the payload (JSON) says what to do with each task.

`{"do": "ack"}` (default) appends "<job id> <attempt> <pid>" to $JOB_LOG (fsynced) and acks;
`nack` / `nack-final` nack with / without requeue; `requeue` requeues with new headers;
`crash` exits mid-task; `sleep` sleeps
`seconds` first; `fail-until` nacks until the attempt reaches `attempt`.
"""

from __future__ import annotations

import json
import os
import time

from mailrunner.worker import Consumer, Task

LOG = os.environ.get("JOB_LOG", "")


def record(task: Task) -> None:
    if not LOG:
        return
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(f"{task.id} {task.attempts} {os.getpid()} {json.dumps(task.headers)}\n")
        handle.flush()
        os.fsync(handle.fileno())


def handle(task: Task) -> None:
    order = json.loads(task.payload or b"{}")
    action = order.get("do", "ack")
    time.sleep(float(order.get("seconds", 0)))
    if action == "crash":
        os._exit(7)
    record(task)
    if action == "nack":
        task.nack("asked to fail", requeue=True, delay=float(order.get("delay", 0)))
    elif action == "nack-final":
        task.nack("asked to fail for good", requeue=False)
    elif action == "requeue":
        task.requeue(float(order.get("delay", 0)), headers={"requeued": ["yes"]})
    elif action == "fail-until" and task.attempts < int(order["attempt"]):
        task.nack(f"attempt {task.attempts} fails", requeue=True)
    else:
        task.ack()


if __name__ == "__main__":
    consumer = Consumer()
    while (task := consumer.wait_task()) is not None:
        handle(task)
