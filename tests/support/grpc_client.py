"""A real gRPC client for cairn's tests: grpcio, one channel, raw-bytes messages.

Usage: grpc_client.py TARGET JOB

JOB is a JSON object; what it asks for, and what is printed (one JSON object):
  {"calls": N, "method": "Who", "payload": "", "size": B?, "timeout": S?,
   "metadata": [[k, v]]?, "concurrency": C?}
      N unary calls of /test.Echo/METHOD on one channel (C at a time, default 1), each with
      the payload, or B bytes of `x`. Prints {"results": [{"code": int, "details": str,
      "response": str?, "length": int?, "initial": [[k, v]], "trailing": [[k, v]],
      "seconds": float}]} in the order the calls were made.
  {"stream": "Count", "payload": "10000"}
      server streaming: prints {"code", "details", "messages": count, "bytes": total}.
      "Flood" (payload "N B") likewise.
  {"stream": "Sum", "messages": N, "size": B}
      client streaming of N messages of B bytes: prints {"code", "details", "response"}.
  {"stream": "Chat", "messages": N, "size": B}
      bidirectional: sends N messages of B bytes while reading the answers; prints
      {"code", "details", "messages": answers, "bytes": total}.
Any job may carry "authority": the `:authority` the channel sends (its target's by default).
Responses are printed as text when they are UTF-8 and short, else by their length.
"""

import json
import sys
import time
from concurrent import futures

import grpc

TARGET = sys.argv[1]
JOB = json.loads(sys.argv[2])
LIMIT = 64 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", LIMIT),
    ("grpc.max_send_message_length", LIMIT),
    # One connection for every call: cairn must balance the calls, not the connections.
    ("grpc.use_local_subchannel_pool", 1),
]
if "authority" in JOB:
    OPTIONS.append(("grpc.default_authority", JOB["authority"]))
channel = grpc.insecure_channel(TARGET, options=OPTIONS)


def text(b):
    try:
        return b.decode() if len(b) <= 4096 else f"<{len(b)} bytes>"
    except UnicodeDecodeError:
        return f"<{len(b)} bytes>"


def one(method, payload, timeout, metadata):
    call = channel.unary_unary(f"/test.Echo/{method}")
    start = time.monotonic()
    try:
        response, state = call.with_call(payload, timeout=timeout, metadata=metadata)
        return {
            "code": 0,
            "details": "",
            "response": text(response),
            "length": len(response),
            "initial": [list(m) for m in state.initial_metadata()],
            "trailing": [list(m) for m in state.trailing_metadata()],
            "seconds": time.monotonic() - start,
        }
    except grpc.RpcError as e:
        return {
            "code": e.code().value[0],
            "details": e.details() or "",
            "initial": [list(m) for m in (e.initial_metadata() or [])],
            "trailing": [list(m) for m in (e.trailing_metadata() or [])],
            "seconds": time.monotonic() - start,
        }


def failure(e):
    return {"code": e.code().value[0], "details": e.details() or ""}


def main():
    if "calls" in JOB:
        payload = b"x" * JOB["size"] if "size" in JOB else JOB.get("payload", "").encode()
        metadata = [tuple(m) for m in JOB.get("metadata", [])]
        args = (JOB["method"], payload, JOB.get("timeout"), metadata)
        with futures.ThreadPoolExecutor(max_workers=JOB.get("concurrency", 1)) as pool:
            results = list(pool.map(lambda _: one(*args), range(JOB["calls"])))
        return {"results": results}
    kind = JOB["stream"]
    if kind in ("Count", "Flood"):
        call = channel.unary_stream(f"/test.Echo/{kind}")
        n = size = 0
        try:
            for m in call(JOB["payload"].encode()):
                n += 1
                size += len(m)
        except grpc.RpcError as e:
            return dict(failure(e), messages=n, bytes=size)
        return {"code": 0, "details": "", "messages": n, "bytes": size}
    messages = (b"x" * JOB["size"] for _ in range(JOB["messages"]))
    if kind == "Sum":
        call = channel.stream_unary("/test.Echo/Sum")
        try:
            return {"code": 0, "details": "", "response": text(call(messages))}
        except grpc.RpcError as e:
            return failure(e)
    if kind == "Chat":
        call = channel.stream_stream("/test.Echo/Chat")
        n = size = 0
        try:
            for m in call(messages):
                n += 1
                size += len(m)
        except grpc.RpcError as e:
            return dict(failure(e), messages=n, bytes=size)
        return {"code": 0, "details": "", "messages": n, "bytes": size}
    raise SystemExit(f"unknown job {JOB}")


print(json.dumps(main()), flush=True)
