"""The SSH figures of the load harness: scp throughput straight to a
throwaway sshd and through Portcullis to the same sshd, in the same run,
alternating the order each round, both directions; the gateway's CPU per
GiB; and the RSS an idle SSH session holds in the gateway (each with its
upstream SSH connection). Everything targets 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

CLIENT = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
          "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sshd:
    """A throwaway OpenSSH server that accepts the upstream key for this user."""

    def __init__(self, d, upstream_pub):
        self.port = free_port()
        self.host_key = keygen(d / "host_ed25519")
        (d / "authorized_keys").write_text(upstream_pub + "\n")
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n")
        os.makedirs("/run/sshd", exist_ok=True)
        self.log = open(d / "sshd.log", "w")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def scp(port, key, src, dst):
    started = time.monotonic()
    subprocess.run(["scp", *CLIENT, "-q", "-P", str(port), "-i", str(key), str(src), str(dst)],
                   check=True, timeout=900, stdin=subprocess.DEVNULL)
    return time.monotonic() - started


def run(work, binary, args, started, make_gateway):
    d = work / "ssh"
    d.mkdir()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    upstream_pub = keygen(d / "upstream_ed25519")
    keygen(d / "engineer_ed25519")
    sshd = Sshd(d, upstream_pub)
    started.append(sshd)
    resource = (f"  - name: web1\n    kind: ssh\n    host: 127.0.0.1\n    port: {sshd.port}\n"
                f"    host_key: \"{sshd.host_key}\"\n    roles:\n"
                f"      deploy: {{ user: {user}, key_file: {d}/upstream_ed25519 }}\n"
                "    policy:\n      approvers: { users: [admin] }\n      max_duration: 8h\n"
                "      default_duration: 8h\n")
    gw = make_gateway(name="phase-ssh", ssh_resource=resource)
    started.append(gw)
    gw.cli(gw.admin, "user", "key", "add", "engineer", str(d / "engineer_ed25519.pub"))
    request = gw.cli(gw.password, "request", "web1", "--for", "8h", "--reason", "load harness")
    gw.cli(gw.admin, "approve", request)

    payload = d / "payload"
    with open(payload, "wb") as f:
        for _ in range(args.ssh_mib):
            f.write(os.urandom(1 << 20))
    size = payload.stat().st_size
    targets = {
        "direct": (sshd.port, d / "upstream_ed25519", f"{user}@127.0.0.1"),
        "portcullis": (gw.ssh_port, d / "engineer_ed25519", "engineer+web1@127.0.0.1"),
    }
    runs = {f"{t}-{way}": [] for t in targets for way in ("upload", "download")}
    cpu = []
    hz = os.sysconf("SC_CLK_TCK")
    for rnd in range(args.ssh_rounds):
        names = list(targets) if rnd % 2 == 0 else list(reversed(targets))
        for way in ("upload", "download"):
            for name in names:
                port, key, login = targets[name]
                copy = d / f"copy-{name}"
                if way == "upload":
                    src, dst = payload, f"{login}:{copy}"
                else:
                    src, dst = f"{login}:{payload}", copy
                before = ticks(gw.proc.pid)
                seconds = scp(port, key, src, dst)
                if name == "portcullis":
                    cpu.append((ticks(gw.proc.pid) - before) / hz / (size / (1 << 30)))
                if copy.stat().st_size != size:
                    raise RuntimeError(f"{name} {way}: {copy.stat().st_size} bytes arrived, not {size}")
                copy.unlink()
                mib_s = size / (1 << 20) / seconds
                runs[f"{name}-{way}"].append(mib_s)
                print(f"ssh round {rnd + 1}/{args.ssh_rounds} {way:8} {name:10} {mib_s:8.1f} MiB/s", flush=True)
    payload.unlink()

    # Idle sessions: each holds a channel (`sleep`) and its upstream connection.
    rss_before = rss_kib(gw.proc.pid)
    clients = [subprocess.Popen(["ssh", *CLIENT, "-p", str(gw.ssh_port), "-i", str(d / "engineer_ed25519"),
                                 "engineer+web1@127.0.0.1", "sleep 600"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(args.ssh_sessions)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            listed = json.loads(gw.cli(gw.admin, "sessions", "--json"))
            if sum(1 for x in listed if x.get("protocol") == "ssh") >= args.ssh_sessions:
                break
            time.sleep(0.5)
        time.sleep(2)
        rss_after = rss_kib(gw.proc.pid)
    finally:
        for c in clients:
            c.kill()
            c.wait()
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    return {
        "mib": args.ssh_mib,
        "rounds": args.ssh_rounds,
        "mib_per_s": mean,
        "runs": runs,
        "ratio_upload": mean["portcullis-upload"] / mean["direct-upload"],
        "ratio_download": mean["portcullis-download"] / mean["direct-download"],
        "gateway_cpu_s_per_gib": sum(cpu) / len(cpu),
        "idle_sessions": args.ssh_sessions,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_session": (rss_after - rss_before) / args.ssh_sessions,
    }


def report(s):
    m = s["mib_per_s"]
    print(f"\nssh: scp of {s['mib']} MiB, {s['rounds']} round(s), means")
    for way in ("upload", "download"):
        print(f"  {way:8} direct {m[f'direct-{way}']:8.1f} MiB/s, portcullis {m[f'portcullis-{way}']:8.1f} MiB/s "
              f"({s[f'ratio_{way}']:.2f}x direct)")
    print(f"  gateway CPU {s['gateway_cpu_s_per_gib']:.2f} s per GiB relayed")
    print(f"  {s['idle_sessions']} idle ssh sessions: {s['kib_per_session']:.1f} KiB per session "
          f"(RSS {s['rss_before_kib']:,} -> {s['rss_after_kib']:,} KiB)")
