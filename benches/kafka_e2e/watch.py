#!/usr/bin/env python3
"""Helpers of benches/kafka_e2e.sh: scrape a running `linewatch run`, wait for it to finish a
topic, and print the result table. Standard library only.

  watch.py wait ADDR PID RECORDS T0 TIMEOUT_S OUT.json
      Polls http://ADDR/metrics every 0.25 s until the service has counted RECORDS input
      records and every assigned partition reports consumer lag 0, or TIMEOUT_S passes
      (exit 1). T0 is the epoch time (s) the clock starts from (the service's start). Writes
      the figures (seconds, peak RSS, CPU, latency quantiles, alerts) as JSON to OUT.json.
  watch.py ready ADDR TIMEOUT_S
      Waits until /readyz answers 200.
  watch.py table RESULTS.json
      Prints the table of every phase.
"""

import json
import os
import re
import sys
import time
import urllib.request

SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SERIES.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def total(ms, name, **want):
    return sum(v for n, l, v in ms if n == name and all(l.get(k) == x for k, x in want.items()))


def quantiles(ms, hist, qs=(0.5, 0.99)):
    """histogram_quantile over every detector together: linear inside the bucket."""
    buckets = {}
    for n, l, v in ms:
        if n == hist + "_bucket":
            le = float("inf") if l["le"] == "+Inf" else float(l["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    bounds = sorted(buckets)
    count = buckets.get(float("inf"), 0.0)
    res = {"count": int(count)}
    for q in qs:
        key = f"p{int(q * 100)}"
        if count == 0:
            res[key] = None
            continue
        rank = q * count
        prev_b, prev_c = 0.0, 0.0
        for b in bounds:
            c = buckets[b]
            if c >= rank:
                if b == float("inf"):
                    res[key] = f">{prev_b}"
                else:
                    frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
                    res[key] = prev_b + (b - prev_b) * frac
                break
            prev_b, prev_c = b, c
    return res


def proc_status(pid):
    hwm = rss = None
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None, None, None
    return hwm, rss, cpu


def records_seen(ms):
    return total(ms, "linewatch_records_total")


def cmd_wait(addr, pid, want, t0, timeout, out):
    deadline = time.time() + timeout
    first = None
    max_rss = 0
    ms = []
    while True:
        now = time.time()
        try:
            ms = scrape(addr)
        except OSError:
            ms = []
        _, rss, _ = proc_status(pid)
        max_rss = max(max_rss, rss or 0)
        seen = records_seen(ms) if ms else 0
        if seen > 0 and first is None:
            first = now
        lags = [v for n, _, v in ms if n == "linewatch_consumer_lag_records"]
        parts = total(ms, "linewatch_assigned_partitions")
        if seen >= want and lags and len(lags) >= parts and sum(lags) == 0:
            break
        if now > deadline:
            print(f"watch.py: {seen:.0f} of {want} records after {timeout} s; giving up", file=sys.stderr)
            sys.exit(1)
        if not os.path.exists(f"/proc/{pid}"):
            print("watch.py: the service exited", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.25)
    done = time.time()
    hwm, rss, cpu = proc_status(pid)
    res = {
        "records": int(records_seen(ms)),
        "seconds_from_start": done - t0,
        "seconds_from_first_record": done - (first or t0),
        "vmhwm_kb": hwm,
        "rss_end_kb": rss,
        "cpu_s": cpu,
        "alerts": int(total(ms, "linewatch_alerts_total")),
        "dead_letters": int(total(ms, "linewatch_dead_letters_total")),
        "record_to_alert": quantiles(ms, "linewatch_record_to_alert_seconds"),
        "event_to_alert": quantiles(ms, "linewatch_event_to_alert_seconds"),
        "batch": quantiles(ms, "linewatch_batch_seconds"),
        "batches": int(total(ms, "linewatch_batch_seconds_count")),
        "state_bytes": int(total(ms, "linewatch_state_bytes")),
    }
    json.dump(res, open(out, "w"), indent=1)


def cmd_ready(addr, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{addr}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    print(f"watch.py: not ready within {timeout} s", file=sys.stderr)
    sys.exit(1)


def ms_(x):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x + " s"
    return f"{x * 1000:.0f} ms"


def cmd_table(path):
    r = json.load(open(path))
    n = r["records"]
    a, b = r["backlog"], r["live"]
    raw = n / r["kcat_s"]
    svc = n / a["seconds_from_start"]
    svc_first = n / a["seconds_from_first_record"]
    rows = [
        ("records in the topic (lines, malformed included)", f"{n:,}"),
        ("partitions", r["partitions"]),
        ("produce, as fast as possible (generate --kafka --rate 0)", f"{n / r['produce_s']:,.0f} /s  ({r['produce_s']:.1f} s)"),
        ("raw consume (kcat -C -e -q > /dev/null)", f"{raw:,.0f} /s  ({r['kcat_s']:.1f} s)"),
        ("linewatch run, backlog, start to lag 0", f"{svc:,.0f} /s  ({a['seconds_from_start']:.1f} s)"),
        ("  same, from the first record counted", f"{svc_first:,.0f} /s  ({a['seconds_from_first_record']:.1f} s)"),
        ("  ratio to raw consume (target >= 70%)", f"{svc / raw * 100:.0f}%  (from first record {svc_first / raw * 100:.0f}%)"),
        ("  service CPU while draining", f"{a['cpu_s']:.1f} s  ({a['cpu_s'] / a['seconds_from_start']:.2f} cores)"),
        ("  batches, p50 / p99 batch time", f"{a['batches']:,}, {ms_(a['batch']['p50'])} / {ms_(a['batch']['p99'])}"),
        ("  peak RSS (VmHWM), backlog waiting", f"{a['vmhwm_kb'] / 1024:.0f} MiB"),
        ("live feed rate (generate --kafka --rate)", f"{r['live_rate']:,.0f} /s  ({r['live_rate'] / svc * 100:.0f}% of backlog rate)"),
        ("  achieved producer rate", f"{n / r['live_produce_s']:,.0f} /s  ({r['live_produce_s']:.1f} s)"),
        ("  record-to-alert p50 / p99 (target p99 < 250 ms)", f"{ms_(b['record_to_alert']['p50'])} / {ms_(b['record_to_alert']['p99'])}  ({b['record_to_alert']['count']} alerts)"),
        ("  batches, p50 / p99 batch time", f"{b['batches']:,}, {ms_(b['batch']['p50'])} / {ms_(b['batch']['p99'])}"),
        ("  service CPU", f"{b['cpu_s']:.1f} s  ({b['cpu_s'] / r['live_produce_s']:.2f} cores)"),
        ("  peak RSS (VmHWM), fed live", f"{b['vmhwm_kb'] / 1024:.0f} MiB"),
        ("peak RSS backlog minus live (target < 100 MB)", f"{(a['vmhwm_kb'] - b['vmhwm_kb']) / 1024:+.0f} MiB"),
        ("alerts (backlog / live)", f"{a['alerts']} / {b['alerts']}"),
        ("detector state at the end (backlog / live)", f"{a['state_bytes'] / 2**20:.0f} / {b['state_bytes'] / 2**20:.0f} MiB"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd = argv[1]
    if cmd == "wait" and len(argv) == 8:
        cmd_wait(argv[2], int(argv[3]), int(argv[4]), float(argv[5]), float(argv[6]), argv[7])
    elif cmd == "ready" and len(argv) == 4:
        cmd_ready(argv[2], float(argv[3]))
    elif cmd == "table" and len(argv) == 3:
        cmd_table(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
