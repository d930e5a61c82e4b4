#!/usr/bin/env bash
# Runs the comparative benchmarks with criterion's usual output, then prints one table:
# for each benchmark, our median time, Stalwart's, the ratio stalwart/ours (> 1 means we
# are faster) and our throughput.
#
#   ./report.sh                                  # everything, with the bench's defaults
#   ./report.sh -- --measurement-time 10         # criterion options after --
#   ./report.sh data_decoder                     # a filter, as with cargo bench
#
# Only results written by this run are reported (older ones under target/criterion are
# ignored), so a filtered run reports only what it ran.
set -euo pipefail

cd "$(dirname "$0")"
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

cargo bench --bench smtp_proto "$@"

python3 - "$stamp" <<'EOF'
import json, os, sys

since = os.path.getmtime(sys.argv[1])
root = os.path.join("target", "criterion")
results = {}  # (group, case) -> {impl: (median_ns, bytes)}
for dirpath, _dirs, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    estimates = os.path.join(dirpath, "estimates.json")
    if os.path.getmtime(estimates) < since:
        continue
    with open(os.path.join(dirpath, "benchmark.json")) as f:
        bench = json.load(f)
    with open(estimates) as f:
        median = json.load(f)["median"]["point_estimate"]
    impl = bench["function_id"]
    case = bench["group_id"] + ("/" + bench["value_str"] if bench.get("value_str") else "")
    nbytes = (bench.get("throughput") or {}).get("Bytes")
    results.setdefault(case, {})[impl] = (median, nbytes)

def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns:.1f} ns"

rows = []
for case in sorted(results):
    r = results[case]
    if "ours" not in r or "stalwart" not in r:
        continue
    ours, nbytes = r["ours"]
    stalwart, _ = r["stalwart"]
    gbps = f"{nbytes / ours:.2f}" if nbytes else "-"  # bytes per ns = GB/s
    rows.append((case, fmt_time(ours), fmt_time(stalwart), f"{stalwart / ours:.2f}", gbps))

if not rows:
    sys.exit("no paired results from this run")
head = ("benchmark", "ours (median)", "stalwart (median)", "stalwart/ours", "ours GB/s")
widths = [max(len(x) for x in col) for col in zip(head, *rows)]
line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths)))
print()
print(line(head))
print(line(["-" * w for w in widths]))
for row in rows:
    print(line(row))
print("\nstalwart/ours > 1: ours is faster. GB/s = input bytes / our median time (10^9 B/s).")
EOF
