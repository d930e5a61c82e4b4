#!/usr/bin/env python3
"""What one append + fdatasync costs on this filesystem, growing a file as it goes
against writing into blocks allocated ahead (fallocate), as mail-queue's spool does.

    python3 bench/servers/append_fdatasync.py [DIR] [--count N] [--size BYTES] [--rounds R]

DIR (default: bench/servers/results) must be on the filesystem the queue would use.
Prints, per round and mode, the wall time and this process's CPU time (user + system)
per append + fdatasync, and the ratio of the medians.
"""

import argparse
import os
import resource
import statistics
import time


def run(path: str, count: int, size: int, preallocate: bool) -> tuple[float, float]:
    record = b"x" * size
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        if preallocate:
            os.posix_fallocate(fd, 0, count * size + 4096)
            os.fsync(fd)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        offset = 0
        for _ in range(count):
            os.pwrite(fd, record, offset)
            offset += size
            os.fdatasync(fd)
        t1, r1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.unlink(path)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return 1e6 * (t1 - t0) / count, 1e6 * cpu / count


def main() -> None:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=here)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=1100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"append-fdatasync-{os.getpid()}.tmp")
    results: dict[str, list[tuple[float, float]]] = {"growing": [], "allocated ahead": []}
    for round_ in range(1, args.rounds + 1):
        for mode in results:
            wall, cpu = run(path, args.count, args.size, mode == "allocated ahead")
            results[mode].append((wall, cpu))
            print(f"round {round_} {mode:16s} wall {wall:7.1f} µs  CPU {cpu:6.1f} µs  per append + fdatasync")
    med = {m: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for m, r in results.items()}
    (gw, gc), (aw, ac) = med["growing"], med["allocated ahead"]
    print(f"median: growing {gw:.1f} µs wall, {gc:.1f} µs CPU; allocated ahead {aw:.1f} µs wall, {ac:.1f} µs CPU")
    print(f"allocated ahead / growing: wall {aw / gw:.2f}, CPU {ac / gc:.2f}")


if __name__ == "__main__":
    main()
