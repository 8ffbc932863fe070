"""Many concurrent sessions through Portcullis, for the figures pgbench cannot
give: how late cuts land after the deadline, how long a revoke takes to end
a session, and how much memory an idle session holds.

The sessions are a minimal asyncio Postgres client (startup, SCRAM-SHA-256,
optional TLS), so a thousand of them cost the harness little. Everything
targets 127.0.0.1.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import ssl
import struct
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


class Api:
    """The gateway's HTTP API, called from a few threads at once."""

    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method, path, token, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def grant(self, admin, token, resource, duration):
        """Request and approve: answers the request id."""
        req = self.call("POST", "/v1/requests", token,
                        {"resource": resource, "duration": duration, "reason": "load harness"})
        self.call("POST", f"/v1/requests/{req['id']}/approve", admin, {})
        return req["id"]


def parallel(fn, items, workers=8):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


class Session:
    """One idle Postgres session; `ended` is when the gateway's FATAL (or EOF) arrived."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.ended = None
        self.fatal = None

    async def wait_end(self):
        try:
            while True:
                tag, body = await read_message(self.reader)
                if tag == b"E":
                    self.ended = self.ended or time.time()
                    self.fatal = body
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended = self.ended or time.time()

    def close(self):
        try:
            self.writer.write(b"X\0\0\0\4")
            self.writer.close()
        except (ConnectionError, RuntimeError):
            pass


async def read_message(reader):
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], await reader.readexactly(length - 4)


def message(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


_KEYS = {}


def scram_keys(password, salt, iterations):
    key = (password, salt, iterations)
    if key not in _KEYS:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        _KEYS[key] = (hmac.digest(salted, b"Client Key", "sha256"), hmac.digest(salted, b"Server Key", "sha256"))
    return _KEYS[key]


async def connect(port, user, password, dbname, tls=False):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if tls:
        writer.write(struct.pack("!ii", 8, 80877103))
        await writer.drain()
        if await reader.readexactly(1) != b"S":
            raise RuntimeError("the gateway refused TLS")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await writer.start_tls(ctx)
    params = f"user\0{user}\0database\0{dbname}\0\0".encode()
    writer.write(struct.pack("!ii", len(params) + 8, 196608) + params)
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    auth = None
    while True:
        tag, body = await read_message(reader)
        if tag == b"E":
            raise RuntimeError(f"refused: {body!r}")
        if tag == b"Z":
            return Session(reader, writer)
        if tag != b"R":
            continue
        (code,) = struct.unpack("!i", body[:4])
        if code == 10:
            first = ("n,," + first_bare).encode()
            writer.write(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        elif code == 11:
            server_first = body[4:].decode()
            attrs = dict(a.split("=", 1) for a in server_first.split(","))
            client_key, server_key = scram_keys(password, base64.b64decode(attrs["s"]), int(attrs["i"]))
            without_proof = f"c=biws,r={attrs['r']}"
            auth = f"{first_bare},{server_first},{without_proof}".encode()
            signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            writer.write(message(b"p", f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
        elif code == 12:
            want = base64.b64encode(hmac.digest(server_key, auth, "sha256")).decode()
            if body[4:].decode() != f"v={want}":
                raise RuntimeError("the gateway's SCRAM signature is wrong")
        await writer.drain()


async def connect_many(port, logins, dbname, tls=False, concurrency=32):
    """Sessions for each (user, password), a few logins at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(login):
        async with gate:
            return await connect(port, login[0], login[1], dbname, tls)

    return await asyncio.gather(*(one(l) for l in logins))


def parse_time(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def enforcement(gw, admin, sessions, grants_per_user, expiring, revokes, short="20s"):
    """Cut lateness and revoke-to-disconnect with `sessions` users each holding
    `grants_per_user` grants (one per resource bench0..), all connected to bench0."""
    api = Api(gw.api)
    names = [f"eng{i:04}" for i in range(sessions)]
    tokens = dict(zip(names, parallel(
        lambda n: api.call("POST", "/v1/users", admin, {"name": n, "groups": [], "admin": False})["token"], names)))
    doomed = names[:expiring]
    steady = names[expiring:]
    long_grants = [(n, f"bench{r}") for n in names for r in range(grants_per_user) if not (r == 0 and n in doomed)]
    t0 = time.time()
    parallel(lambda g: api.grant(admin, tokens[g[0]], g[1], "8h"), long_grants)
    setup_s = time.time() - t0

    async def run():
        live = await connect_many(gw.port, [(n, tokens[n]) for n in steady], "bench0")
        # The expiring ones: approved together so their deadlines fall close together.
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: parallel(lambda n: api.grant(admin, tokens[n], "bench0", short), doomed, workers=16))
        dying = await connect_many(gw.port, [(n, tokens[n]) for n in doomed], "bench0")
        grants = api.call("GET", "/v1/grants?all=true", admin)
        by_user = {(g["user"], g["resource"]): g for g in grants if g["state"] in ("active", "scheduled")}
        waits = [asyncio.create_task(s.wait_end()) for s in dying]
        await asyncio.wait_for(asyncio.gather(*waits), timeout=120)
        lateness = [(s.ended - parse_time(by_user[(n, "bench0")]["expires_at"])) * 1000 for n, s in zip(doomed, dying)]
        deadlines = [parse_time(by_user[(n, "bench0")]["expires_at"]) for n in doomed]

        revoke_ms = []
        for n, s in list(zip(steady, live))[:revokes]:
            gid = by_user[(n, "bench0")]["id"]
            waiter = asyncio.create_task(s.wait_end())
            sent = time.time()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: api.call("POST", f"/v1/grants/{gid}/revoke", admin, {"reason": "load harness"}))
            await asyncio.wait_for(waiter, timeout=30)
            revoke_ms.append((s.ended - sent) * 1000)
        connected = len(live) + len(dying)
        for s in live:
            s.close()
        return lateness, max(deadlines) - min(deadlines), revoke_ms, connected

    lateness, spread, revoke_ms, connected = asyncio.run(run())
    return {
        "grants": len(long_grants) + len(doomed), "sessions": connected, "grant_setup_s": setup_s,
        "expiring_at_once": len(lateness), "deadline_spread_ms": spread * 1000,
        "cut_lateness_ms": {"p50": percentile(lateness, 50), "p99": percentile(lateness, 99),
                            "max": max(lateness)},
        "revokes": len(revoke_ms),
        "revoke_to_disconnect_ms": {"p50": percentile(revoke_ms, 50), "p99": percentile(revoke_ms, 99),
                                    "max": max(revoke_ms)},
    }


def idle_memory(gw, user, password, count, tls):
    """RSS the gateway gains per idle session, `count` sessions held open at once."""

    async def run():
        warm = await connect_many(gw.port, [(user, password)] * 8, gw.dbname, tls)
        for s in warm:
            s.close()
        await asyncio.sleep(0.5)
        before = rss_kib(gw.proc.pid)
        held = await connect_many(gw.port, [(user, password)] * count, gw.dbname, tls)
        await asyncio.sleep(1)
        after = rss_kib(gw.proc.pid)
        for s in held:
            s.close()
        return before, after

    before, after = asyncio.run(run())
    return {"sessions": count, "tls": tls, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_session": (after - before) / count}
