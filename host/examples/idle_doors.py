#!/usr/bin/env python3
"""Idle connections against an agent's doors, ours beside Serf 0.9.4 (docs/benchmarks.md).

For each agent (target/debug/serf or target/release/serf, and /usr/bin/serf) and each door
(the RPC port, the gossip port): start the agent on 127.<net>.0.1, open N idle TCP
connections to the door and keep them, then time `serf members` through both CLIs and a join
of a fresh agent of the same kind (127.<net>.0.2) through `serf join` on the new agent, and
report how many of the N the agent still holds (connections it has not closed).

    python3 host/examples/idle_doors.py [N ...]     (default: 2000 10000)

Loopback only; every agent it starts is killed by PID at the end.
"""

import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = next(
    p
    for p in (os.path.join(ROOT, "target/release/serf"), os.path.join(ROOT, "target/debug/serf"))
    if os.path.exists(p)
)
SERF = "/usr/bin/serf"
NET = 251  # outside the test suite's 127.100-249 nets


def start(binary, n, tmp):
    ip = f"127.{NET}.0.{n}"
    log = open(os.path.join(tmp, f"{os.path.basename(binary)}-{n}.log"), "w")
    args = [binary, "agent", f"-node=n{n}", f"-bind={ip}:7946", f"-rpc-addr={ip}:7373"]
    if binary == OURS:
        args.append(f"-data-dir={tmp}/data{n}")
    child = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection((ip, 7373), timeout=1).close()
            return child, ip
        except OSError:
            time.sleep(0.05)
    child.kill()
    raise SystemExit(f"{binary} never opened RPC on {ip}")


def timed(args):
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, timeout=60)
    return time.monotonic() - start, done.returncode


def still_open(conns):
    """Connections the agent has not closed (no EOF or reset readable on them)."""
    alive = 0
    poller = select.poll()
    for conn in conns:
        poller.register(conn, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(0)}
    for conn in conns:
        if conn.fileno() not in ready:
            alive += 1
            continue
        try:
            if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                alive += 1
        except OSError:
            pass
    return alive


def run(binary, door, count, tmp):
    first, ip = start(binary, 1, tmp)
    second, ip2 = start(binary, 2, tmp)
    port = 7373 if door == "rpc" else 7946
    conns = []
    try:
        opening = time.monotonic()
        for _ in range(count):
            conns.append(socket.create_connection((ip, port), timeout=10))
        opened = time.monotonic() - opening
        time.sleep(0.5)
        rows = []
        for cli in (OURS, SERF):
            rows.append(timed([cli, "members", f"-rpc-addr={ip}:7373"]))
        join = timed([binary, "join", f"-rpc-addr={ip2}:7373", f"{ip}:7946"])
        held = still_open(conns)
        name = "ours" if binary == OURS else "serf 0.9.4"
        print(
            f"{name:10} {door:6} idle={count:5} opened in {opened:4.1f}s held={held:5} "
            f"members(ours)={rows[0][0] * 1000:6.1f}ms rc={rows[0][1]} "
            f"members(serf)={rows[1][0] * 1000:6.1f}ms rc={rows[1][1]} "
            f"join={join[0] * 1000:6.1f}ms rc={join[1]}",
            flush=True,
        )
    finally:
        for conn in conns:
            conn.close()
        for child in (first, second):
            child.kill()
            child.wait()


def main():
    counts = [int(a) for a in sys.argv[1:]] or [2000, 10000]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            for door in ("rpc", "gossip"):
                for binary in (OURS, SERF):
                    run(binary, door, count, tmp)


if __name__ == "__main__":
    main()
