#!/usr/bin/env python3
"""A simulated fleet: N cairn processes against one etcd holding 1 000 services of 100 instances
(100 000 in all), each node routing 5 of them, as its users run it at scale.

For each N and each mode it starts every node at once (a cold-start storm, with etcd's /health
probed meanwhile), then reports what etcd carries and what a node costs:
  - routed:        the default; each node lists and watches only its 5 services;
  - routed+proxy:  the same through `etcd grpc-proxy`, which coalesces identical watches;
  - all:           each node lists and watches the whole prefix (`[discovery] scope = "all"`),
                   the shape before scoped discovery, as the baseline of the same run.

Every node routes `svc-0000` (the "hot" service) and 4 others, so that one put to `svc-0000`
must reach every node: the time from that put to each node's log line saying the change is
applied (its snapshot swapped) is the propagation time. The per-change cost is etcd's CPU time
and bytes sent over a window of puts to random services, minus an idle window of the same
length.

Run through scripts/bench-fleet, which builds the release binary first.
"""

import argparse
import base64
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SERVICES = 1000
PER_SERVICE = 100
HOT = "svc-0000"
OTHERS_PER_NODE = 4
PREFIX = "/services/"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
APPLIED = re.compile(
    r"^(\S+Z)\s+DEBUG .*registry changes applied.*prefix=(\S+) revision=(\d+)"
)


def service(i):
    return f"svc-{i:04d}"


_next_port = [20000]


def free_port():
    """A free port below the kernel's ephemeral range, so that no node's port-0 listener can
    take it between this check and the process that binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    while _next_port[0] < ephemeral:
        port = _next_port[0]
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    sys.exit("bench-fleet: no free port left below the ephemeral range")


def b64(text):
    return base64.b64encode(text.encode()).decode()


def http(url, body=None, timeout=10.0):
    """(status, body bytes); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def put(endpoint, key, value):
    """Writes through etcd's JSON gateway; returns the revision of the write."""
    status, body = http(f"{endpoint}/v3/kv/put", {"key": b64(key), "value": b64(value)})
    if status != 200:
        sys.exit(f"bench-fleet: a put of {key} failed: {status} {body[:200]!r}")
    return int(json.loads(body)["header"]["revision"])


def delete_prefix(endpoint, prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    http(f"{endpoint}/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(end)})


def fill(endpoint):
    """1 000 services of 100 instances, one transaction per service."""
    for s in range(SERVICES):
        ops = [
            {
                "requestPut": {
                    "key": b64(f"{PREFIX}{service(s)}/{service(s)}-{i:03d}"),
                    "value": b64(f"10.{s // 250}.{s % 250}.{i + 1}:8080"),
                }
            }
            for i in range(PER_SERVICE)
        ]
        status, body = http(f"{endpoint}/v3/kv/txn", {"success": ops})
        if status != 200:
            sys.exit(f"bench-fleet: filling the registry failed: {status} {body[:200]!r}")


def metrics(url):
    """Prometheus text as {series: value}."""
    _, body = http(url)
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid, field="VmRSS"):
    """A process's resident memory: all of it (`VmRSS`), or its private part (`RssAnon`, what
    the binary's shared pages leave out)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def established(port):
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
    ).stdout
    return len([l for l in out.splitlines() if l.strip()])


def wait_http(url, what, deadline=30.0):
    end = time.time() + deadline
    while time.time() < end:
        if http(url, timeout=1.0)[0] == 200:
            return
        time.sleep(0.05)
    sys.exit(f"bench-fleet: {what} did not answer within {deadline:.0f} s")


class Etcd:
    def __init__(self, workdir):
        self.port, self.peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = open(os.path.join(workdir, "etcd.log"), "w")
        self.proc = subprocess.Popen(
            [
                "etcd",
                "--name=fleet",
                f"--data-dir={os.path.join(workdir, 'etcd')}",
                f"--listen-client-urls={self.endpoint}",
                f"--advertise-client-urls={self.endpoint}",
                f"--listen-peer-urls=http://127.0.0.1:{self.peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer}",
                f"--initial-cluster=fleet=http://127.0.0.1:{self.peer}",
                "--quota-backend-bytes=4294967296",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_http(f"{self.endpoint}/health", "etcd")


class Proxy:
    def __init__(self, workdir, etcd):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = open(os.path.join(workdir, "grpc-proxy.log"), "w")
        addr = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                "etcd",
                "grpc-proxy",
                "start",
                f"--endpoints=127.0.0.1:{etcd.port}",
                f"--listen-addr={addr}",
                f"--advertise-client-url={addr}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        # The proxy serves the JSON gateway too.
        wait_http(f"{self.endpoint}/health", "the grpc-proxy")


def routed_by(i):
    """The services node i routes: the hot one and 4 others, spread over the registry."""
    others = [service(1 + (i * OTHERS_PER_NODE + k) % (SERVICES - 1)) for k in range(OTHERS_PER_NODE)]
    return [HOT] + others


def node_config(i, endpoint, admin, scope_all):
    lines = [
        f'[etcd]\nendpoints = ["{endpoint}"]\n',
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n',
        "[runtime]\nworkers = 1\n",
    ]
    if scope_all:
        lines.append('[discovery]\nscope = "all"\n')
    for name in routed_by(i):
        lines.append(f'[[service]]\nname = "{name}"\nlisten = "127.0.0.1:0"\n')
    return "\n".join(lines)


STARTED = []  # every node process, stopped on the way out whatever happens


class Node:
    def __init__(self, i, workdir, binary, endpoint, scope_all):
        self.admin = free_port()
        self.dir = os.path.join(workdir, f"node-{i}")
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, "cairn.toml")
        with open(path, "w") as f:
            f.write(node_config(i, endpoint, self.admin, scope_all))
        self.log = os.path.join(self.dir, "cairn.log")
        log = open(self.log, "w")
        env = dict(os.environ, RUST_LOG="info,cairn::discovery=debug")
        self.proc = subprocess.Popen(
            [binary, "run", "--config", path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        STARTED.append(self.proc)
        log.close()

    def ready(self):
        return http(f"http://127.0.0.1:{self.admin}/readyz", timeout=2.0)[0] == 200

    def applied_at(self, prefix_ok, revision):
        """When this node's log says it applied `revision`, as Unix seconds; None if not."""
        with open(self.log, errors="replace") as f:
            for line in f:
                m = APPLIED.match(ANSI.sub("", line))
                if m and int(m.group(3)) >= revision and prefix_ok(m.group(2)):
                    ts = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
                    return ts.timestamp()
        return None


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


class HealthProbe(threading.Thread):
    """Probes etcd's /health every 100 ms and keeps the slowest answer."""

    def __init__(self, endpoint):
        super().__init__(daemon=True)
        self.endpoint, self.worst, self.failed = endpoint, 0.0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            start = time.monotonic()
            status, _ = http(f"{self.endpoint}/health", timeout=5.0)
            took = time.monotonic() - start
            self.worst = max(self.worst, took)
            self.failed += status != 200
            self.done.wait(0.1)


def one_run(n, mode, etcd, proxy, binary, workdir, changes, puts):
    via = proxy.endpoint if mode == "routed+proxy" else etcd.endpoint
    scope_all = mode == "all"
    run_dir = os.path.join(workdir, f"{mode}-{n}")
    os.makedirs(run_dir)
    before = metrics(f"{etcd.endpoint}/metrics")
    probe = HealthProbe(etcd.endpoint)
    probe.start()
    started = time.monotonic()
    nodes = [Node(i, run_dir, binary, via, scope_all) for i in range(n)]
    pending = list(nodes)
    deadline = started + 300
    while pending and time.monotonic() < deadline:
        pending = [node for node in pending if not node.ready()]
        for node in pending:
            if node.proc.poll() is not None:
                sys.exit(f"bench-fleet: a node exited; its log:\n{open(node.log).read()[-2000:]}")
        if pending:
            time.sleep(0.1)
    storm = time.monotonic() - started
    probe.done.set()
    probe.join()
    if pending:
        sys.exit(f"bench-fleet: {len(pending)} of {n} nodes not ready after 300 s ({mode})")
    time.sleep(1.0)

    m = metrics(f"{etcd.endpoint}/metrics")
    row = {
        "n": n,
        "mode": mode,
        "ready_s": storm,
        "health_worst_ms": probe.worst * 1000,
        "health_failed": probe.failed,
        "watchers": m.get("etcd_debugging_mvcc_watcher_total", 0),
        "streams": m.get("etcd_debugging_mvcc_watch_stream_total", 0),
        "conns": established(etcd.port),
        "list_mib": (
            m.get("etcd_network_client_grpc_sent_bytes_total", 0)
            - before.get("etcd_network_client_grpc_sent_bytes_total", 0)
        )
        / 2**20,
    }
    rss = [rss_mib(node.proc.pid) for node in nodes]
    row["rss_mean"], row["rss_max"] = statistics.mean(rss), max(rss)
    row["anon_mean"] = statistics.mean(rss_mib(node.proc.pid, "RssAnon") for node in nodes)

    # etcd's work per change: a window of puts to random services beside an idle window.
    window = max(3.0, changes / 20 + 2.0)
    pids = [etcd.proc.pid] + ([proxy.proc.pid] if mode == "routed+proxy" else [])

    def sample():
        sent = metrics(f"{etcd.endpoint}/metrics").get("etcd_network_client_grpc_sent_bytes_total", 0)
        return [cpu_seconds(p) for p in pids], sent

    cpu0, sent0 = sample()
    time.sleep(window)
    cpu1, sent1 = sample()
    rng = random.Random(n)
    t0 = time.monotonic()
    for c in range(changes):
        s = rng.randrange(1, SERVICES)
        i = rng.randrange(PER_SERVICE)
        put(etcd.endpoint, f"{PREFIX}{service(s)}/{service(s)}-{i:03d}", f"10.99.{c % 250}.{i + 1}:8080")
        time.sleep(max(0.0, t0 + (c + 1) * 0.05 - time.monotonic()))
    time.sleep(max(0.0, t0 + window - time.monotonic()))
    cpu2, sent2 = sample()
    idle_cpu = [b - a for a, b in zip(cpu0, cpu1)]
    busy_cpu = [b - a for a, b in zip(cpu1, cpu2)]
    row["etcd_cpu_ms"] = max(0.0, busy_cpu[0] - idle_cpu[0]) * 1000 / changes
    row["proxy_cpu_ms"] = (
        max(0.0, busy_cpu[1] - idle_cpu[1]) * 1000 / changes if len(pids) > 1 else None
    )
    row["etcd_kib"] = max(0.0, (sent2 - sent1) - (sent1 - sent0)) / 1024 / changes

    # Propagation: a put to the service every node routes, until every node applied it.
    delays = []
    hot_prefix = f"{PREFIX}{HOT}/"
    for p in range(puts):
        key = f"{hot_prefix}fleet-{n}-{p}"
        wall = time.time()
        revision = put(etcd.endpoint, key, f"10.98.{p}.1:8080")
        end = time.time() + 15
        seen = {}
        while len(seen) < n and time.time() < end:
            time.sleep(0.2)
            for k, node in enumerate(nodes):
                if k not in seen:
                    at = node.applied_at(lambda pre: hot_prefix.startswith(pre), revision)
                    if at is not None:
                        seen[k] = at
        if len(seen) < n:
            sys.exit(f"bench-fleet: {n - len(seen)} nodes never applied revision {revision} ({mode})")
        delays.extend(max(0.0, at - wall) * 1000 for at in seen.values())
        # Leave the logs' next match to the next put.
        time.sleep(0.3)
    row["p50_ms"] = percentile(delays, 50)
    row["p99_ms"] = percentile(delays, 99)
    row["max_ms"] = max(delays)

    for node in nodes:
        node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.proc.kill()
    delete_prefix(etcd.endpoint, f"{hot_prefix}fleet-")
    shutil.rmtree(run_dir, ignore_errors=True)
    time.sleep(1.0)
    return row


def table(rows):
    print()
    print("| N | mode | all ready | etcd /health worst | etcd watchers | watch streams | conns to etcd "
          "| MiB sent to start | etcd CPU per change | etcd KiB per change | proxy CPU per change "
          "| RSS per node (mean / max; private) | put to every node routing: p50 / p99 / max |")
    print("|" + " --- |" * 13)
    for r in rows:
        proxy = "" if r["proxy_cpu_ms"] is None else f'{r["proxy_cpu_ms"]:.2f} ms'
        print(
            f'| {r["n"]} | {r["mode"]} | {r["ready_s"]:.1f} s | {r["health_worst_ms"]:.0f} ms'
            f'{" (" + str(r["health_failed"]) + " failed)" if r["health_failed"] else ""} '
            f'| {r["watchers"]:.0f} | {r["streams"]:.0f} | {r["conns"]} | {r["list_mib"]:.1f} '
            f'| {r["etcd_cpu_ms"]:.2f} ms | {r["etcd_kib"]:.1f} | {proxy} '
            f'| {r["rss_mean"]:.1f} / {r["rss_max"]:.1f} MiB; {r["anon_mean"]:.1f} MiB '
            f'| {r["p50_ms"]:.0f} / {r["p99_ms"]:.0f} / {r["max_ms"]:.0f} ms |'
        )
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="10,100,300", help="fleet sizes, comma-separated")
    ap.add_argument("--modes", default="routed,routed+proxy,all")
    ap.add_argument("--all-max", type=int, default=100,
                    help="largest N for mode all (each node holds the whole registry)")
    ap.add_argument("--changes", type=int, default=40, help="puts in the per-change window")
    ap.add_argument("--puts", type=int, default=5, help="puts timed to every node")
    ap.add_argument("--binary", default="target/release/cairn")
    args = ap.parse_args()
    for tool in ("etcd", "ss"):
        if shutil.which(tool) is None:
            sys.exit(f"bench-fleet: `{tool}` is missing (bash scripts/setup installs etcd)")
    binary = os.path.abspath(args.binary)
    workdir = tempfile.mkdtemp(prefix="cairn-fleet-")
    etcd = proxy = None
    try:
        etcd = Etcd(workdir)
        started = time.monotonic()
        fill(etcd.endpoint)
        print(f"registry: {SERVICES} services x {PER_SERVICE} instances written in "
              f"{time.monotonic() - started:.1f} s", flush=True)
        proxy = Proxy(workdir, etcd)
        rows = []
        for n in [int(x) for x in args.nodes.split(",")]:
            for mode in args.modes.split(","):
                if mode == "all" and n > args.all_max:
                    continue
                row = one_run(n, mode, etcd, proxy, binary, workdir, args.changes, args.puts)
                rows.append(row)
                print(json.dumps(row), flush=True)
        table(rows)
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for p in (proxy, etcd):
            if p is not None:
                p.proc.terminate()
                p.proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
