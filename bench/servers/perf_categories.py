#!/usr/bin/env python3
"""Where mta's CPU time goes, before and after a change, in µs per message.

Input: the `perf script` output of two profiles of the same load (inbound.sh with
PERF_PEER=... PERF_CALLGRAPH="--call-graph dwarf,16384"), and the number of messages of
each run. Each sample is put in one group by its thread and the first of our functions
on its stack; a sample is worth 1/999 s (perf record -F 999).

    perf script -i BEFORE.perf.data > before.txt
    perf script -i AFTER.perf.data > after.txt
    python3 bench/servers/perf_categories.py before.txt after.txt 5000
"""

import collections
import re
import sys

SAMPLE_US = 1_000_000 / 999


def group(thread: str, stack: str) -> str:
    if thread.startswith("sled-io"):
        return "sled I/O threads"
    if thread == "queue-commit":
        if "fdatasync" in stack or "fsync" in stack:
            return "queue commit: spool write + fdatasync"
        if "sled" in stack or "store::" in stack:
            return "queue commit: metadata store (sled)"
        return "queue commit: other"
    maildir = "Maildir::store" in stack or "Maildir::deliver" in stack
    if maildir and re.search(r"sys_(fsync|fdatasync|syncfs)", stack):
        return "Maildir: syncs"
    if maildir:
        return "Maildir: writing the files"
    if thread == "maildir-sync" or "maildir_sync" in stack:
        return "Maildir: syncs"
    if "auth_checks" in stack or "mail_auth" in stack:
        return "sender authentication (SPF, DKIM, DMARC, ARC)"
    if "smtp_server" in stack:
        if "sys_sendto" in stack or "__send" in stack:
            return "SMTP: sending replies"
        if "recvfrom" in stack:
            return "SMTP: reading commands"
        if "enqueue" in stack:
            return "SMTP: handing the message to the queue"
        return "SMTP: sessions (parsing, stages, accept)"
    if "mail_queue" in stack or "mta_bin::delivery" in stack:
        return "queue: scheduling and recording deliveries"
    if thread.startswith("log"):
        return "log writer"
    if "tokio" in stack or thread.startswith("tokio"):
        return "tokio runtime (park, wake, epoll)"
    return "other"


def load(path: str) -> collections.Counter:
    counts = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for sample in f.read().split("\n\n"):
            lines = [line for line in sample.strip().split("\n") if line.strip()]
            if len(lines) < 2:
                continue
            counts[group(lines[0].split()[0], "\n".join(lines[1:]))] += 1
    return counts


def main() -> None:
    before, after, messages = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
    per_msg = lambda counts, key: counts[key] * SAMPLE_US / messages
    print("| where | before µs/msg | after µs/msg |")
    print("|---|---:|---:|")
    for key in sorted(set(before) | set(after), key=lambda k: -(before[k] + after[k])):
        print(f"| {key} | {per_msg(before, key):.0f} | {per_msg(after, key):.0f} |")
    total = lambda counts: sum(counts.values()) * SAMPLE_US / messages
    print(f"| **all** | **{total(before):.0f}** | **{total(after):.0f}** |")


if __name__ == "__main__":
    main()
