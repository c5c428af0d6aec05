"""A real gRPC server for cairn's tests: grpcio with generic handlers, no generated code.

Usage: grpc_server.py ID

Listens on 127.0.0.1 on a free port, prints `listening <port>` once serving, and serves until
killed. Messages are raw bytes. Methods of service `test.Echo`:
  Who      unary: answers ID; sends initial metadata `x-server: ID` (and `x-echo` back when the
           call carries it) and trailing metadata `x-trailer: ID`.
  Echo     unary: answers the request's bytes.
  Tally    unary: answers how many Echo calls it has answered, in decimal.
  Sleep    unary: sleeps the request's seconds (a decimal), answers the caller's address (the
           connection it came on).
  Left     unary: answers the seconds left before the call's deadline, or `none`.
  Fail     unary: ends with the status code in the request and the message `failed on ID`.
  Count    server streaming: answers the request's number of messages, `0`, `1`, ...
  Flood    server streaming: the request is `N B`: answers N messages of B bytes.
  Sum      client streaming: answers the total bytes of the messages it got.
  Chat     bidirectional: answers each message with itself.
and `grpc.health.v1.Health/Check`, which answers SERVING, or NOT_SERVING while the file given
by the environment variable HEALTH_FILE holds `down`. MAX_STREAMS, when set, is the server's
MAX_CONCURRENT_STREAMS.
"""

import itertools
import os
import sys
import time
from concurrent import futures

import grpc

ID = sys.argv[1]


def who(request, context):
    echo = [v for k, v in context.invocation_metadata() if k == "x-echo"]
    context.send_initial_metadata([("x-server", ID)] + [("x-echo", v) for v in echo])
    context.set_trailing_metadata([("x-trailer", ID)])
    return ID.encode()


ECHOED = itertools.count(1)
echoed = 0


def echo(request, context):
    global echoed
    echoed = next(ECHOED)
    return request


def tally(request, context):
    return str(echoed).encode()


def sleep(request, context):
    time.sleep(float(request.decode()))
    return context.peer().encode()


def left(request, context):
    remaining = context.time_remaining()
    return b"none" if remaining is None else f"{remaining:.3f}".encode()


def fail(request, context):
    context.abort(_code(int(request.decode())), f"failed on {ID}")


def _code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c
    return grpc.StatusCode.UNKNOWN


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()


def flood(request, context):
    n, size = (int(x) for x in request.decode().split())
    block = b"f" * size
    for _ in range(n):
        yield block


def total(requests, context):
    return str(sum(len(r) for r in requests)).encode()


def chat(requests, context):
    for r in requests:
        yield r


def health(request, context):
    path = os.environ.get("HEALTH_FILE")
    down = False
    if path and os.path.exists(path):
        with open(path) as f:
            down = f.read().strip() == "down"
    # grpc.health.v1.HealthCheckResponse: field 1 (status), varint; 1 SERVING, 2 NOT_SERVING.
    return bytes([0x08, 2 if down else 1])


RAW = dict(request_deserializer=None, response_serializer=None)
ECHO = grpc.method_handlers_generic_handler("test.Echo", {
    "Who": grpc.unary_unary_rpc_method_handler(who, **RAW),
    "Echo": grpc.unary_unary_rpc_method_handler(echo, **RAW),
    "Tally": grpc.unary_unary_rpc_method_handler(tally, **RAW),
    "Sleep": grpc.unary_unary_rpc_method_handler(sleep, **RAW),
    "Fail": grpc.unary_unary_rpc_method_handler(fail, **RAW),
    "Left": grpc.unary_unary_rpc_method_handler(left, **RAW),
    "Count": grpc.unary_stream_rpc_method_handler(count, **RAW),
    "Flood": grpc.unary_stream_rpc_method_handler(flood, **RAW),
    "Sum": grpc.stream_unary_rpc_method_handler(total, **RAW),
    "Chat": grpc.stream_stream_rpc_method_handler(chat, **RAW),
})
HEALTH = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
    "Check": grpc.unary_unary_rpc_method_handler(health, **RAW),
})

LIMIT = 64 * 1024 * 1024
server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=32),
    handlers=[ECHO, HEALTH],
    options=[
        ("grpc.max_receive_message_length", LIMIT),
        ("grpc.max_send_message_length", LIMIT),
    ]
    + ([("grpc.max_concurrent_streams", int(os.environ["MAX_STREAMS"]))]
       if "MAX_STREAMS" in os.environ else []),
)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"listening {port}", flush=True)
server.wait_for_termination()
