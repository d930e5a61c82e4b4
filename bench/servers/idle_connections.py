#!/usr/bin/env python3
"""Memory of `mta serve` holding many idle SMTP connections.

Starts `mta serve` (with a raised RLIMIT_NOFILE) on a generated configuration, measures the
RSS of the process with 0 connections, opens N concurrent TCP connections (default 10,000),
each of which reads the 220 greeting, sends EHLO, reads the reply and then sits idle, holds
them, and measures the RSS again. The goal: every connection greeted, and under 200 MB RSS
for the whole mta process.

    python3 bench/servers/idle_connections.py                   # builds mta if MTA_BIN is not set
    MTA_BIN=target/release/mta python3 bench/servers/idle_connections.py --connections 10000

Writes bench/servers/results/idle-<date>.md. Exit status 0 when the goal is met, 1 otherwise.
"""

import argparse
import asyncio
import datetime
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GOAL_MB = 200


def status(pid):
    """Fields of /proc/PID/status in kB (VmRSS, VmHWM) and counts (Threads)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    try:
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        out["fds"] = -1
    return out


def fmt(st):
    return (f"VmRSS {st['VmRSS'] / 1024:.1f} MB (anon {st.get('RssAnon', 0) / 1024:.1f} MB), "
            f"VmHWM {st['VmHWM'] / 1024:.1f} MB, threads {st['Threads']}, open fds {st['fds']}")


def listen_drops():
    """The kernel's TcpExt ListenOverflows + ListenDrops counters (SYNs dropped: accept queue full)."""
    with open("/proc/net/netstat") as f:
        rows = [line.split() for line in f if line.startswith("TcpExt:")]
    fields = dict(zip(rows[0][1:], map(int, rows[1][1:])))
    return fields.get("ListenOverflows", 0), fields.get("ListenDrops", 0)


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


async def read_reply(reader):
    """Reads one SMTP reply (all its lines); returns the lines."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed by the server")
        lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return lines


class Counters:
    def __init__(self):
        self.connected = 0
        self.greeted = 0
        self.ehlo_ok = 0
        self.failed = 0
        self.errors = {}
        self.greet_latency = []

    def error(self, what):
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1


async def idle_client(i, port, sem, counters, release, writers, timeout):
    async with sem:  # limits the connects in flight, not the connections held
        try:
            t0 = time.monotonic()
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout)
            counters.connected += 1
            writers.append(writer)
            greeting = await asyncio.wait_for(read_reply(reader), timeout)
            if not greeting[0].startswith("220"):
                counters.error(f"greeting: {greeting[0][:60]}")
                return
            counters.greeted += 1
            counters.greet_latency.append(time.monotonic() - t0)
            writer.write(f"EHLO idle{i}.bench.test\r\n".encode())
            await writer.drain()
            reply = await asyncio.wait_for(read_reply(reader), timeout)
            if not reply[0].startswith("250"):
                counters.error(f"EHLO: {reply[0][:60]}")
                return
            counters.ehlo_ok += 1
        except asyncio.TimeoutError:
            counters.error("timeout")
            return
        except OSError as e:
            counters.error(f"{type(e).__name__}: {e.strerror or e}")
            return
    await release.wait()  # idle, connection open, until the measurement is done


async def probe(port):
    """One fresh connection while the others are held: time to greeting and a full EHLO/QUIT."""
    t0 = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    greeting = await asyncio.wait_for(read_reply(reader), 30)
    t1 = time.monotonic()
    writer.write(b"EHLO probe.bench.test\r\n")
    await writer.drain()
    await asyncio.wait_for(read_reply(reader), 30)
    writer.write(b"QUIT\r\n")
    await writer.drain()
    await asyncio.wait_for(read_reply(reader), 30)
    writer.close()
    return greeting[0], (t1 - t0) * 1000


async def run(args, pid, report):
    counters = Counters()
    release = asyncio.Event()
    writers = []
    sem = asyncio.Semaphore(args.concurrent_connects)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(
        idle_client(i, args.port, sem, counters, release, writers, args.timeout))
        for i in range(args.connections)]

    # Wait until every client is greeted+EHLOed or failed (or the overall timeout).
    deadline = time.monotonic() + args.timeout * 3
    last_print = 0
    while counters.ehlo_ok + counters.failed < args.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if time.monotonic() - last_print > 2:
            last_print = time.monotonic()
            print(f"  connected {counters.connected}, greeted {counters.greeted}, "
                  f"EHLO ok {counters.ehlo_ok}, failed {counters.failed}", flush=True)
    setup_s = time.monotonic() - t0
    report(f"opened {args.connections} connections in {setup_s:.1f} s: connected {counters.connected}, "
           f"greeted (220) {counters.greeted}, EHLO 250 {counters.ehlo_ok}, failed {counters.failed}"
           + (f" {counters.errors}" if counters.errors else ""))
    if counters.greet_latency:
        lat = sorted(counters.greet_latency)
        report(f"time from connect to greeting: median {lat[len(lat) // 2] * 1000:.1f} ms, "
               f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")

    # Hold them idle and sample the RSS.
    samples = []
    hold_end = time.monotonic() + args.hold
    while time.monotonic() < hold_end:
        samples.append(status(pid))
        await asyncio.sleep(1)
    held = max(samples, key=lambda s: s["VmRSS"])
    try:
        line, ms = await probe(args.port)
        probe_text = f"a new connection while {counters.ehlo_ok} are held: greeted in {ms:.1f} ms ({line[:40]!r})"
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        probe_text = f"a new connection while they are held FAILED: {e!r}"
    alive = sum(1 for w in writers if not w.is_closing())
    report(probe_text)

    release.set()
    for w in writers:
        w.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counters, held, samples, alive


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=int(os.environ.get("CONNECTIONS", 10000)))
    p.add_argument("--hold", type=float, default=float(os.environ.get("HOLD", 15)),
                   help="seconds to hold the idle connections while sampling RSS")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 1)),
                   help="open, hold and close the connections this many times (memory returned?)")
    p.add_argument("--port", type=int, default=int(os.environ.get("IDLE_PORT", 2559)))
    p.add_argument("--concurrent-connects", type=int, default=500,
                   help="connections being set up at once (the rest wait; all are then held)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-step timeout in seconds")
    p.add_argument("--rust-log", default=os.environ.get("MTA_LOG", "warn"))
    p.add_argument("--nofile", type=int, default=65536,
                   help="RLIMIT_NOFILE wanted for mta and this script (capped by the hard limit "
                        "when the process may not raise it)")
    args = p.parse_args()

    # Our own descriptors: one per connection, plus slack.
    need = max(args.nofile, args.connections + 1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    my_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if my_nofile < args.connections + 100:
        sys.exit(f"RLIMIT_NOFILE is {my_nofile}: not enough for {args.connections} connections (run as root)")

    mta = os.environ.get("MTA_BIN")
    if not mta:
        print("building mta (cargo build --release -p mta-bin)", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "mta-bin"], cwd=ROOT, check=True)
        mta = str(ROOT / "target/release/mta")

    work = Path(tempfile.mkdtemp(prefix="mta-idle.", dir="/var/tmp"))
    config = work / "mta.toml"
    config.write_text(f"""# Generated by bench/servers/idle_connections.py
hostname = "mta.bench.test"

[[listener]]
address = "127.0.0.1:{args.port}"
mode = "relay"

[queue]
path = "{work}/queue"

[local]
domains = ["maildir.test"]
maildir = "{work}/maildir"
accept_any_user = true

[limits]
max_connections = 20000
max_connections_per_ip = 20000
""")
    lines = []

    def report(text):
        print(text, flush=True)
        lines.append(text)

    # The child inherits our (raised) limits; this is `ulimit -n` / `prlimit --nofile` for it.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)

    def raise_limit():  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    stderr = open(work / "mta.stderr", "w")
    proc = None
    ok = False
    try:
        proc = subprocess.Popen([mta, "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                                stderr=stderr, preexec_fn=raise_limit,
                                env={**os.environ, "RUST_LOG": args.rust_log})
        if not wait_port(args.port):
            sys.exit(f"mta does not listen on {args.port}: " + (work / "mta.stderr").read_text())
        with open(f"/proc/{proc.pid}/limits") as f:
            mta_nofile = next(line for line in f if line.startswith("Max open files")).split()[3]
        time.sleep(1.0)
        report(f"date {datetime.datetime.now().isoformat(timespec='seconds')}; {os.cpu_count()} cores; "
               f"load: {open('/proc/loadavg').read().strip()}")
        report(f"mta {mta} pid {proc.pid}, RLIMIT_NOFILE {mta_nofile}, RUST_LOG={args.rust_log}; "
               f"client RLIMIT_NOFILE {my_nofile}")
        idle = status(proc.pid)
        report(f"0 connections: {fmt(idle)}")

        all_greeted, under, worst = True, True, None
        for round_no in range(1, args.rounds + 1):
            if args.rounds > 1:
                report(f"round {round_no} of {args.rounds}")
            drops_before = listen_drops()
            counters, held, samples, alive = asyncio.run(run(args, proc.pid, report))
            drops_after = listen_drops()
            report(f"kernel accept-queue overflows during the test (system-wide TcpExt ListenOverflows/"
                   f"ListenDrops): {drops_after[0] - drops_before[0]}/{drops_after[1] - drops_before[1]} "
                   f"(each costs the client a SYN retransmission, about 1 s)")
            report(f"{counters.ehlo_ok} idle connections held {args.hold:.0f} s: {fmt(held)} "
                   f"(max VmRSS over {len(samples)} samples; still open at the end of the hold: {alive})")
            per_conn = (held["VmRSS"] - idle["VmRSS"]) / max(counters.ehlo_ok, 1)
            report(f"growth over 0 connections: {(held['VmRSS'] - idle['VmRSS']) / 1024:.1f} MB, "
                   f"{per_conn:.1f} kB per connection")
            time.sleep(3)
            after = status(proc.pid)
            report(f"3 s after closing them all: {fmt(after)}")
            all_greeted &= counters.greeted == args.connections and counters.ehlo_ok == args.connections
            under &= held["VmRSS"] < GOAL_MB * 1024 and held["VmHWM"] < GOAL_MB * 1024
            if worst is None or held["VmHWM"] > worst["VmHWM"]:
                worst = held
        report(f"load after: {open('/proc/loadavg').read().strip()}")
        alive_mta = proc.poll() is None
        ok = all_greeted and under and alive_mta
        report(f"RESULT: all {args.connections} greeted: {'yes' if all_greeted else 'NO'}; "
               f"RSS with {args.connections}: {worst['VmRSS'] / 1024:.1f} MB (peak {worst['VmHWM'] / 1024:.1f} MB) "
               f"{'<' if under else '>='} {GOAL_MB} MB goal; mta alive: {'yes' if alive_mta else 'NO'} -> "
               f"{'PASS' if ok else 'FAIL'}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stderr.close()
        warnings = [l for l in (work / "mta.stderr").read_text().splitlines()
                    if (" WARN " in l or " ERROR " in l) and "no [tls]" not in l]
        if warnings:
            report(f"mta logged {len(warnings)} WARN/ERROR lines, first: {warnings[:3]}")
        results = HERE / "results"
        results.mkdir(exist_ok=True)
        out = results / f"idle-{datetime.datetime.now():%Y%m%d-%H%M%S}.md"
        out.write_text("# Idle connections: mta RSS\n\n" + "\n".join(f"- {l}" for l in lines) + "\n")
        print(f"written: {out}")
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
