"""The feed figure of the load harness: `portcullis control` on a PostgreSQL
store (the setup several replicas share) and two `portcullis proxy`
processes following it, with 10,000 live grants; then grant extensions made
one at a time through the API, and for each the time from the change's
commit on the control plane to its application in each proxy's grant
table. The proxies measure that themselves (`portcullis_feed_lag_seconds`,
a histogram); p50 and p99 are read from its buckets, interpolated within
one, over the measured changes only. Everything targets 127.0.0.1.
"""

import os
import secrets
import subprocess
import time
import urllib.request

import sessions
from ssh_phase import free_port

RESOURCES = 100


def resources_yaml(pg):
    return "".join(f"""  - name: feed{i}
    kind: postgres
    host: 127.0.0.1
    port: {pg.port}
    database: bench
    tls: disable
    roles:
      rw: {{ user: bench, password_env: BENCH_PASSWORD }}
    policy:
      approvers: {{ users: [admin] }}
      max_duration: 8h
      default_duration: 1h
""" for i in range(RESOURCES))


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def wait_for(what, ok, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {seconds} s")


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def buckets(text):
    """The lag histogram's cumulative counts by upper bound."""
    out = {}
    for line in text.splitlines():
        if line.startswith("portcullis_feed_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(before, after, q):
    """The q-quantile (0..1) of what was observed between two readings, in ms."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return lower * 1000
            share = (rank - below) / (count - below) if count > below else 1.0
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, count
    return lower * 1000


def run(work, pg, binary, grants, changes, started):
    d = work / "phase-feed"
    d.mkdir()
    db = "portcullis_feed"
    pg.sql(f"CREATE DATABASE {db}")
    store = f"postgres://postgres:{pg.password}@127.0.0.1:{pg.port}/{db}"
    tokens = [secrets.token_hex(16) for _ in range(2)]
    api = free_port()
    (d / "control").mkdir()
    control_cfg = d / "control" / "portcullis.yaml"
    control_cfg.write_text(f"""data_dir: {d}/control/data
api: {{ listen: 127.0.0.1:{api} }}
store: {{ postgres_env: PORTCULLIS_STORE }}
proxies:
  - {{ name: p0, token_env: P0_TOKEN }}
  - {{ name: p1, token_env: P1_TOKEN }}
resources:
{resources_yaml(pg)}""")
    env = dict(os.environ, PORTCULLIS_STORE=store, P0_TOKEN=tokens[0], P1_TOKEN=tokens[1],
               BENCH_PASSWORD=pg.password, PORTCULLIS_LOG="warn")
    log = open(d / "control" / "portcullis.log", "w")
    control = subprocess.Popen([binary, "control", "-c", control_cfg], env=env, stdout=log, stderr=log)
    started.append(Stopper(control))
    token_file = d / "control" / "data" / "admin.token"
    wait_for("portcullis control", lambda: get(f"http://127.0.0.1:{api}/healthz")[0] == 200
             and token_file.exists() and token_file.read_text().strip(), control)
    admin = token_file.read_text().strip()

    health = []
    for i, token in enumerate(tokens):
        (d / f"p{i}").mkdir()
        cfg = d / f"p{i}" / "portcullis.yaml"
        health.append(free_port())
        cfg.write_text(f"""data_dir: {d}/p{i}/data
postgres: {{ listen: 127.0.0.1:{free_port()} }}
proxy: {{ name: p{i}, token_env: PORTCULLIS_PROXY_TOKEN, listen: 127.0.0.1:{health[i]} }}
resources:
{resources_yaml(pg)}""")
        plog = open(d / f"p{i}" / "portcullis.log", "w")
        proc = subprocess.Popen([binary, "proxy", "-c", cfg, "--control", f"http://127.0.0.1:{api}"],
                                env=dict(env, PORTCULLIS_PROXY_TOKEN=token), stdout=plog, stderr=plog)
        started.append(Stopper(proc))
        wait_for(f"portcullis proxy p{i}", lambda: get(f"http://127.0.0.1:{health[i]}/readyz")[0] == 200, proc)

    client = sessions.Api(api)
    users = max(1, grants // RESOURCES)
    names = [f"u{i}" for i in range(users)]
    user_tokens = {n: client.call("POST", "/v1/users", admin, {"name": n})["token"] for n in names}
    t0 = time.time()
    made = sessions.parallel(lambda g: client.grant(admin, user_tokens[g[0]], g[1], "1h"),
                             [(n, f"feed{r}") for n in names for r in range(RESOURCES)])
    setup_s = time.time() - t0
    listed = client.call("GET", "/v1/grants", admin)
    ids = [g["id"] for g in listed if g["state"] == "active"]

    proxies = [f"http://127.0.0.1:{h}/metrics" for h in health]

    def caught_up():
        latest = metric(get(f"http://127.0.0.1:{api}/metrics")[1], "portcullis_feed_revision")
        return all(metric(get(p)[1], "portcullis_feed_revision") >= latest for p in proxies)

    wait_for("the proxies' feeds", caught_up, control)
    before = [buckets(get(p)[1]) for p in proxies]
    for i in range(changes):
        client.call("POST", f"/v1/grants/{ids[i % len(ids)]}/extend", admin, {"by": "1m"})
        time.sleep(0.01)
    wait_for("the proxies' feeds", caught_up, control)
    after = [buckets(get(p)[1]) for p in proxies]
    per_proxy = []
    for b, a in zip(before, after):
        per_proxy.append({"p50_ms": quantile(b, a, 0.5), "p99_ms": quantile(b, a, 0.99),
                          "changes": (a.get(float("inf"), 0) - b.get(float("inf"), 0))})
    both_b = {k: sum(b.get(k, 0) for b in before) for k in after[0]}
    both_a = {k: sum(a.get(k, 0) for a in after) for k in after[0]}
    return {"grants": len(made), "live_grants": len(ids), "proxies": len(proxies), "changes": changes,
            "grant_setup_s": setup_s, "store": "postgres",
            "p50_ms": quantile(both_b, both_a, 0.5), "p99_ms": quantile(both_b, both_a, 0.99),
            "per_proxy": per_proxy,
            "bucket_bounds_ms": [b * 1000 for b in sorted(after[0]) if b != float("inf")]}


def report(f):
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"feed: control on a PostgreSQL store, {f['proxies']} proxies, {f['live_grants']:,} live grants; "
          f"{f['changes']} changes one at a time")
    print(f"  commit to each proxy's table: p50 {fmt(f['p50_ms'])} ms, p99 {fmt(f['p99_ms'])} ms "
          f"(per proxy p99: {', '.join(fmt(p['p99_ms']) for p in f['per_proxy'])} ms)")


class Stopper:
    """Stops a process started here when the harness ends."""

    def __init__(self, proc):
        self.proc = proc

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
