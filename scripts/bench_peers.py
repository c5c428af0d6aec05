#!/usr/bin/env python3
"""cairn beside its peers, in one interleaved run: direct, HAProxy, nginx and cairn, each proxy
with the same number of workers, in front of the same upstreams.

Measured for every target, in rounds whose order rotates (so the machine's drift hits all alike),
then the median of the rounds:
  (a) TCP ping-pong latency, 64 B (sockperf, p50), over a TCP listener;
  (b) new TCP connections per second (wrk, `Connection: close`) through a TCP listener;
  (c) HTTP latency at 1 connection (wrk --latency, p50);
  (d) HTTP requests per second at 32 connections (wrk);
  (e) HTTP/2 prior-knowledge requests per second (h2load, 32 connections, 10 streams each);
  (f) gRPC unary calls per second on one connection, 32 streams at once (h2load, gRPC-framed
      POSTs with `content-type: application/grpc`), through HAProxy (`proto h2` servers), nginx
      (`grpc_pass`) and cairn (`protocol = "grpc"`) to an HTTP/2 upstream answering with a
      `grpc-status` trailer;
  (g) gRPC latency, one call at a time (h2load's per-call log, p50);
and cairn's peak RSS. With --baseline, a second cairn build is measured in the same rounds, as a
column of its own (an A/B of a change); --only picks measurements.

Two placements: every thread of every process (upstreams and load generators included) pinned
to one CPU with `taskset -a -p`, and unpinned. Run it through `scripts/bench-peers`, which
installs the peers and builds cairn.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench-peers: {what} did not listen on {port}")


class Procs:
    """Every process the run starts, killed at the end."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def start(self, name, argv, **kw):
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.procs.append((name, p))
        return p

    def stop(self):
        for _, p in reversed(self.procs):
            p.terminate()
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def pin_all(pids, cpu):
    """Pins every thread of every process in `pids` (and their children) to `cpu`."""
    for pid in pids:
        for p in [pid] + children(pid):
            subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(p)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in children(k)]


def nginx_conf(workdir, name, workers, body, stream=""):
    path = os.path.join(workdir, f"{name}.conf")
    with open(path, "w") as f:
        f.write(f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes {workers};
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
{stream}
http {{
  access_log off;
  client_body_temp_path {workdir}/{name}-body;
  proxy_temp_path {workdir}/{name}-proxy;
  fastcgi_temp_path {workdir}/{name}-fastcgi;
  uwsgi_temp_path {workdir}/{name}-uwsgi;
  scgi_temp_path {workdir}/{name}-scgi;
  keepalive_requests 1000000;
  {body}
}}
""")
    return path


def start_all(procs, workdir, workers, cairn_bins):
    """Upstreams, etcd and the three proxies. Returns the targets' ports and the pids."""
    ports = {k: free_port() for k in ["up_http", "up_pp", "up_grpc"]}
    up = nginx_conf(workdir, "upstream", 1, f"""
  server {{ listen 127.0.0.1:{ports['up_http']} reuseport backlog=4096;
    location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{ports['up_grpc']} http2 backlog=4096;
    http2_max_concurrent_streams 1024;
    location / {{ default_type application/grpc; add_trailer grpc-status 0 always;
      return 200 "ok"; }} }}""")
    procs.start("upstream", ["nginx", "-c", up, "-e", f"{workdir}/upstream.error.log"])
    procs.start("sockperf", ["sockperf", "server", "--tcp", "-i", "127.0.0.1", "-p", str(ports["up_pp"])])

    targets = {"direct": {"pp": ports["up_pp"], "conn": ports["up_http"], "http": ports["up_http"],
                          "h2": None, "grpc": ports["up_grpc"]}}
    # HAProxy
    hp = {k: free_port() for k in ["pp", "conn", "http", "h2", "grpc"]}
    cfg = os.path.join(workdir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""
global
  nbthread {workers}
  maxconn 8000
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend pp
  mode tcp
  bind 127.0.0.1:{hp['pp']}
  default_backend pp
backend pp
  mode tcp
  server s 127.0.0.1:{ports['up_pp']}
frontend conn
  mode tcp
  bind 127.0.0.1:{hp['conn']}
  default_backend conn
backend conn
  mode tcp
  server s 127.0.0.1:{ports['up_http']}
frontend http
  mode http
  bind 127.0.0.1:{hp['http']}
  bind 127.0.0.1:{hp['h2']} proto h2
  default_backend http
backend http
  mode http
  http-reuse always
  server s 127.0.0.1:{ports['up_http']}
frontend grpc
  mode http
  bind 127.0.0.1:{hp['grpc']} proto h2
  default_backend grpc
backend grpc
  mode http
  http-reuse always
  server s 127.0.0.1:{ports['up_grpc']} proto h2
""")
    procs.start("haproxy", ["haproxy", "-db", "-f", cfg])
    targets["haproxy"] = hp
    # nginx
    ng = {k: free_port() for k in ["pp", "conn", "http", "h2", "grpc"]}
    conf = nginx_conf(workdir, "proxy", workers, f"""
  upstream u {{ server 127.0.0.1:{ports['up_http']}; keepalive 64; }}
  server {{ listen 127.0.0.1:{ng['http']} backlog=4096;
    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
  server {{ listen 127.0.0.1:{ng['h2']} http2 backlog=4096;
    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
  upstream g {{ server 127.0.0.1:{ports['up_grpc']}; keepalive 64; }}
  server {{ listen 127.0.0.1:{ng['grpc']} http2 backlog=4096;
    http2_max_concurrent_streams 1024;
    location / {{ grpc_pass grpc://g; }} }}""",
                      stream=f"""
stream {{
  server {{ listen 127.0.0.1:{ng['pp']}; proxy_pass 127.0.0.1:{ports['up_pp']}; }}
  server {{ listen 127.0.0.1:{ng['conn']} backlog=4096; proxy_pass 127.0.0.1:{ports['up_http']}; }}
}}""")
    procs.start("nginx", ["nginx", "-c", conf, "-e", f"{workdir}/proxy.error.log"])
    targets["nginx"] = ng
    # etcd and cairn
    ec, ep = free_port(), free_port()
    procs.start("etcd", ["etcd", "--data-dir", f"{workdir}/etcd",
                         "--listen-client-urls", f"http://127.0.0.1:{ec}",
                         "--advertise-client-urls", f"http://127.0.0.1:{ec}",
                         "--listen-peer-urls", f"http://127.0.0.1:{ep}",
                         "--initial-advertise-peer-urls", f"http://127.0.0.1:{ep}",
                         "--initial-cluster", f"default=http://127.0.0.1:{ep}"])
    wait_port(ec, "etcd")
    for key, port in [("pp/s", ports["up_pp"]), ("conn/s", ports["up_http"]),
                      ("web/s", ports["up_http"]), ("grpc/s", ports["up_grpc"])]:
        subprocess.run(["etcdctl", "--endpoints", f"127.0.0.1:{ec}", "put", f"/services/{key}",
                        f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, ETCDCTL_API="3"))
    cairn_pids = {}
    for name, binary in cairn_bins.items():
        targets[name], cairn_pids[name] = start_cairn(procs, workdir, name, binary, ec, workers)
    for t in targets.values():
        for port in t.values():
            if port:
                wait_port(port, "a target")
    pids = [p.pid for _, p in procs.procs]
    return targets, pids, cairn_pids


def start_cairn(procs, workdir, name, binary, etcd_port, workers):
    """One cairn with a TCP listener per TCP target and one HTTP listener; returns its ports."""
    cp = {k: free_port() for k in ["pp", "conn", "http", "grpc"]}
    cp["h2"] = cp["http"]  # HTTP/1.1 and h2c share one cairn port
    admin = free_port()
    ccfg = os.path.join(workdir, f"{name}.toml")
    with open(ccfg, "w") as f:
        f.write(f"""
[etcd]
endpoints = ["http://127.0.0.1:{etcd_port}"]
[admin]
listen = "127.0.0.1:{admin}"
[runtime]
workers = {workers}
[[service]]
name = "pp"
listen = "127.0.0.1:{cp['pp']}"
[[service]]
name = "conn"
listen = "127.0.0.1:{cp['conn']}"
[[service]]
name = "web"
listen = "127.0.0.1:{cp['http']}"
protocol = "http"
[[service]]
name = "grpc"
listen = "127.0.0.1:{cp['grpc']}"
protocol = "grpc"
""")
    cairn = procs.start(name, [binary, "run", "-c", ccfg], env=dict(os.environ, RUST_LOG="warn"))
    wait_ready(admin)
    return cp, cairn.pid


def wait_ready(admin):
    end = time.time() + 20
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", admin), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                if b" 200 " in s.recv(100).split(b"\r\n")[0]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("bench-peers: cairn did not get ready")


def run_client(argv, cpu):
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout


def wrk_rps(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else float("nan")


def to_us(value, unit):
    return float(value) * {"us": 1, "ms": 1000, "s": 1e6}[unit]


def measure(kind, port, seconds, cpu):
    url = f"http://127.0.0.1:{port}/"
    if kind == "pp":
        out = run_client(["sockperf", "ping-pong", "--tcp", "-i", "127.0.0.1", "-p", str(port),
                          "-m", "64", "-t", str(seconds)], cpu)
        m = re.search(r"percentile 50.000 =\s+([\d.]+)", out)
        return float(m.group(1)) if m else float("nan")
    if kind == "conn":
        return wrk_rps(run_client(["wrk", "-t1", "-c32", f"-d{seconds}s",
                                   "-H", "Connection: close", url], cpu))
    if kind == "http1":
        out = run_client(["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", url], cpu)
        m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
        return to_us(m.group(1), m.group(2)) if m else float("nan")
    if kind == "http32":
        return wrk_rps(run_client(["wrk", "-t1", "-c32", f"-d{seconds}s", url], cpu))
    if kind in ("grpc", "grpc1"):
        # One gRPC unary call: an empty message, framed; h2load counts the 200s.
        frame = os.path.join(tempfile.gettempdir(), "cairn-bench-grpc-frame")
        with open(frame, "wb") as f:
            f.write(b"\0\0\0\0\0")
        log = os.path.join(tempfile.gettempdir(), "cairn-bench-grpc-log")
        # Rates over a duration; latencies over a count (h2load paces one stream at a time
        # when given a duration).
        if os.path.exists(log):
            os.remove(log)
        how = (["-m32", "-D", str(seconds)] if kind == "grpc"
               else ["-m1", "-n", str(1000 * seconds), "--log-file", log])
        out = run_client(["h2load", "-c1", "-t1", *how,
                          "-d", frame, "-H", "content-type: application/grpc",
                          "-H", "te: trailers",
                          f"http://127.0.0.1:{port}/bench.Echo/Call"], cpu)
        if kind == "grpc":
            m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
            return float(m.group(1)) if m else float("nan")
        # Each line: start (µs since the epoch), status, duration (µs).
        with open(log) as f:
            times = [int(line.split()[2]) for line in f if line.split()[1:2] == ["200"]]
        return statistics.median(times) if times else float("nan")
    if kind == "h2":
        out = run_client(["h2load", "-c32", "-m10", "-t1", "-D", str(seconds), url], cpu)
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
        return float(m.group(1)) if m else float("nan")
    raise ValueError(kind)


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


KINDS = [
    ("pp", "pp", "TCP ping-pong, 64 B: p50 (µs)", "latency"),
    ("conn", "conn", "new TCP connections/s (wrk, Connection: close, 32 conns)", "rate"),
    ("http1", "http", "HTTP, 1 connection: p50 (µs)", "latency"),
    ("http32", "http", "HTTP requests/s, 32 connections", "rate"),
    ("h2", "h2", "HTTP/2 (h2c) requests/s, 32 conns x 10 streams", "rate"),
    ("grpc", "grpc", "gRPC unary calls/s, 1 connection x 32 streams", "rate"),
    ("grpc1", "grpc", "gRPC, one call at a time: p50 (µs)", "latency"),
]
PEERS = ["direct", "haproxy", "nginx"]


def placement(name, pinned, args, cairn_bins):
    workdir = tempfile.mkdtemp(prefix="cairn-peers-")
    procs = Procs(workdir)
    try:
        targets, pids, cairn_pids = start_all(procs, workdir, args.workers, cairn_bins)
        order_all = PEERS + list(cairn_bins)
        kinds = [k for k in KINDS if k[0] in args.only]
        cpu = 0 if pinned else None
        if pinned:
            pin_all(pids, 0)
        results = {(k, t): [] for k, *_ in kinds for t in order_all}
        for r in range(args.rounds):
            for k, port_kind, *_ in kinds:
                n = r % len(order_all)
                order = order_all[n:] + order_all[:n]
                for t in order:
                    port = targets[t][port_kind]
                    if port is None:
                        continue
                    results[(k, t)].append(measure(k, port, args.seconds, cpu))
            print(f"  {name}: round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
        rss = {name: peak_rss_mib(pid) for name, pid in cairn_pids.items()}
        return results, rss
    except BaseException:
        for name, _ in procs.procs:
            path = os.path.join(workdir, f"{name}.log")
            with open(path) as f:
                tail = f.read()[-1500:]
            print(f"--- {name} ---\n{tail}", file=sys.stderr)
        raise
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def table(name, results, rss, args, cairns):
    med = {key: statistics.median(v) for key, v in results.items() if v}
    spread = {key: (min(v), max(v)) for key, v in results.items() if v}
    print(f"\n### {name}, {args.workers} worker(s) each, {args.rounds} rounds of {args.seconds} s "
          "(median; min to max)\n")
    heads = ["direct", "HAProxy", "nginx"] + cairns
    print("| | " + " | ".join(heads) + " | cairn vs best peer |")
    print("|" + " --- |" * (len(heads) + 2))
    for k, _, label, how in KINDS:
        if k not in args.only:
            continue
        cells = []
        for t in PEERS + cairns:
            if (k, t) not in med:
                cells.append("-")
                continue
            lo, hi = spread[(k, t)]
            v = med[(k, t)]
            if how == "latency" and t != "direct":
                added = v - med[(k, "direct")]
                cells.append(f"{v:.1f} (+{added:.1f})")
            elif how == "latency":
                cells.append(f"{v:.1f}")
            else:
                cells.append(f"{v:,.0f} ({lo:,.0f}–{hi:,.0f})")
        if how == "latency":
            added = {t: med[(k, t)] - med[(k, "direct")] for t in ["haproxy", "nginx", "cairn"]}
            best = min(added["haproxy"], added["nginx"])
            ratio = f"{added['cairn'] / best:.2f}x the added latency" if best > 0 else "-"
        else:
            best = max(med[(k, "haproxy")], med[(k, "nginx")])
            ratio = f"{med[(k, 'cairn')] / best:.2f}x" if best > 0 else "-"
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    for c in cairns:
        print(f"\n{c}'s peak RSS over the run: {rss[c]:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--placement", choices=["both", "pinned", "unpinned"], default="both")
    ap.add_argument("--cairn", default=os.path.join(ROOT, "target/release/cairn"))
    ap.add_argument("--baseline", metavar="PATH",
                    help="another cairn binary, measured in the same rounds as 'baseline' (A/B)")
    ap.add_argument("--only", default=",".join(k for k, *_ in KINDS),
                    help="comma-separated measurements: " + ", ".join(k for k, *_ in KINDS))
    args = ap.parse_args()
    args.only = args.only.split(",")
    unknown = set(args.only) - {k for k, *_ in KINDS}
    if unknown:
        ap.error(f"--only: unknown measurement(s) {', '.join(sorted(unknown))}")
    cairn_bins = {"cairn": args.cairn}
    if args.baseline:
        cairn_bins["baseline"] = args.baseline
    versions = [
        subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
        subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        subprocess.run([args.cairn, "--version"], capture_output=True, text=True).stdout.strip(),
    ]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({cpu}); " + "; ".join(versions))
    placements = {"both": [("everything pinned to one CPU", True), ("unpinned", False)],
                  "pinned": [("everything pinned to one CPU", True)],
                  "unpinned": [("unpinned", False)]}[args.placement]
    for name, pinned in placements:
        results, rss = placement(name, pinned, args, cairn_bins)
        table(name, results, rss, args, list(cairn_bins))


if __name__ == "__main__":
    main()
