#!/usr/bin/env python3
"""An HTTP/1.1 upstream for cairn's integration tests: a real program, killable like any other.

Usage: upstream.py NAME [--port P] [--delay-ms N]
  binds 127.0.0.1:P (0 by default) and prints the port on the first line of stdout; with
  --delay-ms, waits N ms before every answer (a slow instance).

  GET  /              -> "NAME\n"
  GET  /headers       -> the request headers as JSON ({"name": ["value", ...]})
  GET  /slow?ms=N     -> waits N ms before answering "NAME\n"
  GET  /stats         -> {"posts": {"<X-Request-Id>": times received}}
  GET  /ws            -> WebSocket handshake, then echoes each text frame back
  HEAD any GET path   -> the GET headers, no body
  POST /echo          -> streams the body back (same Content-Length, or chunked if sent chunked)
  POST /post          -> counts the X-Request-Id header, answers "NAME\n"
  GET  /healthz       -> 200 "ok", or 503 once POST /healthz/fail was sent (until /healthz/pass)
"""
import base64
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

NAME = sys.argv[1]
OPTS = dict(zip(sys.argv[2::2], sys.argv[3::2]))
PORT = int(OPTS.get("--port", "0"))
DELAY = int(OPTS.get("--delay-ms", "0")) / 1000
HEALTHY = [True]
POSTS = {}
LOCK = threading.Lock()
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", NAME)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body_chunks(self):
        """Yields the request body, whether sized or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    left -= len(data)
                    yield data
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    return
                left -= len(data)
                yield data

    def do_GET(self):
        url = urlparse(self.path)
        if DELAY:
            time.sleep(DELAY)
        if url.path == "/healthz":
            if HEALTHY[0]:
                self.reply(200, b"ok\n")
            else:
                self.reply(503, b"failing\n")
        elif url.path == "/headers":
            headers = {}
            for k, v in self.headers.items():
                headers.setdefault(k.lower(), []).append(v)
            self.reply(200, json.dumps(headers).encode(), "application/json")
        elif url.path == "/slow":
            time.sleep(int(parse_qs(url.query).get("ms", ["1000"])[0]) / 1000)
            self.reply(200, (NAME + "\n").encode())
        elif url.path == "/stats":
            with LOCK:
                body = json.dumps({"posts": POSTS}).encode()
            self.reply(200, body, "application/json")
        elif url.path == "/ws":
            self.websocket()
        else:
            self.reply(200, (NAME + "\n").encode())

    do_HEAD = do_GET

    def do_POST(self):
        url = urlparse(self.path)
        if url.path == "/echo":
            chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
            self.send_response(200)
            self.send_header("X-Upstream", NAME)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", self.headers.get("Content-Length", "0"))
            self.end_headers()
            for data in self.body_chunks():
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                else:
                    self.wfile.write(data)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        elif url.path in ("/healthz/fail", "/healthz/pass"):
            HEALTHY[0] = url.path.endswith("pass")
            self.reply(200, b"ok\n")
        elif url.path == "/post":
            for _ in self.body_chunks():
                pass
            rid = self.headers.get("X-Request-Id", "")
            with LOCK:
                POSTS[rid] = POSTS.get(rid, 0) + 1
            self.reply(200, (NAME + "\n").encode())
        else:
            self.reply(404, b"no such path\n")

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(self.rfile.read(2), "big")
            elif length == 127:
                length = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                return
            reply = (NAME + ": ").encode() + data
            self.wfile.write(bytes([0x81, len(reply)]) + reply)
            self.wfile.flush()


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
