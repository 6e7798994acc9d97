"""CPU seconds and peak RSS of a process and its descendants, from /proc.

    proctree.py snapshot PID     → {"cpu_s": ..., "peak_rss_kb": ..., "rss_kb": ..., "pids": [...]}
    proctree.py watch PID FILE   → samples every 0.5 s until PID exits or SIGTERM, then
                                   writes the last snapshot to FILE (keeps children that
                                   exited in the total)

cpu_s is utime + stime of every live process in the tree; peak_rss_kb adds up each
process's VmHWM (its own peak resident set): an upper bound of the tree's peak, exact for
one process. Take a snapshot before and after a run and subtract cpu_s to charge the run
alone; peak RSS includes start-up.

Importable: `tree(pid)`, `snapshot(pid)`, `Watcher`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            pids.append(p)
            todo.extend(children(p))
    return pids


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_kb(pid: int) -> tuple[int, int]:
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return hwm, rss


def snapshot(pid: int) -> dict:
    cpu = 0.0
    peak = rss = 0
    pids = tree(pid)
    for p in pids:
        cpu += cpu_seconds(p) or 0.0
        h, r = memory_kb(p)
        peak += h
        rss += r
    return {"cpu_s": round(cpu, 2), "peak_rss_kb": peak, "rss_kb": rss, "pids": pids}


class Watcher:
    """Remembers the last CPU time and VmHWM of every process seen in the tree, so a child
    that exits before the end still counts."""

    def __init__(self, pid: int):
        self.pid = pid
        self.cpu: dict[int, float] = {}
        self.hwm: dict[int, int] = {}

    def sample(self) -> dict:
        for p in tree(self.pid):
            c = cpu_seconds(p)
            if c is not None:
                self.cpu[p] = c
            h, _ = memory_kb(p)
            if h:
                self.hwm[p] = max(h, self.hwm.get(p, 0))
        return self.result()

    def result(self) -> dict:
        return {
            "cpu_s": round(sum(self.cpu.values()), 2),
            "peak_rss_kb": sum(self.hwm.values()),
            "pids": sorted(self.cpu),
        }


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "snapshot":
        print(json.dumps(snapshot(int(sys.argv[2]))))
    elif len(sys.argv) >= 4 and sys.argv[1] == "watch":
        watcher = Watcher(int(sys.argv[2]))
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop and os.path.exists(f"/proc/{watcher.pid}"):
            watcher.sample()
            time.sleep(0.5)
        with open(sys.argv[3], "w") as f:
            json.dump(watcher.result(), f)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
