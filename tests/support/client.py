#!/usr/bin/env python3
"""A keep-alive HTTP/1.1 client for cairn's tests, built on Python's http.client.

Usage: client.py HOST PORT COUNT [--path P] [--method GET|POST]
                 [--kill-pid PID --kill-port PORT --kill-after N]

Sends COUNT requests over ONE connection and prints one JSON object per response:
{"status": 200, "body": "...", "conn": <times the connection was opened>}. POSTs carry a
unique X-Request-Id. With --kill-pid, kills that process with SIGKILL after N responses, then
waits until it has exited and the kernel has delivered its connections' FINs (no ESTABLISHED
TCP connection to PORT is left) before going on. A request already on its way to an instance
when it dies may fail: it reached the instance, so it is never sent again.
"""
import argparse
import http.client
import json
import os
import signal
import time


def established_to(port):
    """Whether any TCP connection to 127.0.0.1:port is still ESTABLISHED on this machine."""
    remote = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        next(f)
        return any(l.split()[2] == remote and l.split()[3] == "01" for l in f)


def dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


args = argparse.ArgumentParser()
args.add_argument("host")
args.add_argument("port", type=int)
args.add_argument("count", type=int)
args.add_argument("--path", default="/")
args.add_argument("--method", default="GET")
args.add_argument("--kill-pid", type=int)
args.add_argument("--kill-port", type=int)
args.add_argument("--kill-after", type=int, default=0)
opts = args.parse_args()

conn = http.client.HTTPConnection(opts.host, opts.port, timeout=10)
opened = 0
for i in range(opts.count):
    if opts.kill_pid and i == opts.kill_after:
        os.kill(opts.kill_pid, signal.SIGKILL)
        while not dead(opts.kill_pid) or (opts.kill_port and established_to(opts.kill_port)):
            time.sleep(0.001)
    if conn.sock is None:
        opened += 1
    headers = {}
    body = None
    if opts.method == "POST":
        headers["X-Request-Id"] = f"req-{i}"
        body = b"payload %d" % i
    conn.request(opts.method, opts.path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read().decode(errors="replace")
    print(json.dumps({"status": resp.status, "body": data, "conn": opened}), flush=True)
    if resp.getheader("Connection", "").lower() == "close":
        conn.close()
