"""Experiment (stop 25): nginx against a minimal Python sendfile server (mini.py), one client.

usage: .venv/bin/python bench/cork/ab.py REPS fresh|ka [mini:MODE ...]
MODE: cork | nocork | cork2m | early | early2m | *-delay (cork = TCP_CORK after the headers,
early = before them, 2m = 2 MiB sendfile steps, -delay = no TCP_NODELAY). Env: NOPUSH=1 adds
an nginx with `tcp_nopush off`; SINK=trunc|splice|recv|curl; NC=clients; PIN=S:C (as
bench/serve.py --pin) puts the servers on CPUs S and the clients on CPUs C. The 200 MiB file
is /tmp/ab/big.whl (made if missing)."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import harness.servers as hs  # noqa: E402
from harness.clients import drain  # noqa: E402
from harness.procfs import set_affinity, split_cpus  # noqa: E402
from harness.timing import in_order  # noqa: E402
from harness.util import free_port, median  # noqa: E402


def big_file() -> Path:
    src, root = Path("/tmp/ab/big.whl"), Path("/tmp/ab/root")
    root.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        with open(src, "wb") as fh:
            for _ in range(200):
                fh.write(os.urandom(1 << 20))
    if not (root / src.name).exists():
        os.link(src, root / src.name)
    return root / src.name


def nginx(stack: contextlib.ExitStack, root: Path, logs: Path, *,
          tcp_nopush: bool) -> hs.NginxHandle:
    conf = hs.NGINX_CONF
    if not tcp_nopush:
        hs.NGINX_CONF = conf.replace("tcp_nopush on", "tcp_nopush off")
    try:
        handle = stack.enter_context(hs.nginx(root, log_dir=logs))
    finally:
        hs.NGINX_CONF = conf
    if handle is None:
        raise SystemExit("nginx did not start (apt-get install -y nginx-light)")
    return handle


def mini(stack: contextlib.ExitStack, f: Path, mode: str) -> tuple[str, list[int]]:
    port = free_port()
    p = subprocess.Popen([sys.executable, str(HERE / "mini.py"), str(f), str(port), mode],
                         stdout=subprocess.PIPE)
    stack.callback(p.wait)
    stack.callback(p.kill)
    p.stdout.readline()  # "ready"
    return f"http://127.0.0.1:{port}/{f.name}", [p.pid]


def main(argv: list[str]) -> None:
    reps, fresh, specs = int(argv[0]), argv[1] == "fresh", argv[2:]
    clients = int(os.environ.get("NC", "1"))
    sink = os.environ.get("SINK", "trunc")
    pin = split_cpus(os.environ.get("PIN", "off"))
    f = big_file()
    size = f.stat().st_size
    logs = Path("/tmp/ab/logs")
    logs.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[str, list[int]]] = {}
        ng = nginx(stack, f.parent, logs, tcp_nopush=True)
        servers["nginx"] = (f"{ng.url}/{f.name}", ng.pids())
        if os.environ.get("NOPUSH"):
            ng = nginx(stack, f.parent, logs, tcp_nopush=False)
            servers["nginx-nopush-off"] = (f"{ng.url}/{f.name}", ng.pids())
        for spec in specs:
            servers[spec] = mini(stack, f, spec.split(":", 1)[1])
        if pin:
            set_affinity([pid for _url, pids in servers.values() for pid in pids], pin[0])
        res: dict[str, list] = {n: [] for n in servers}
        for r in range(reps):
            for n in in_order(list(servers), r):
                url, pids = servers[n]
                res[n].append(drain(url, clients, count=max(4, 32 // clients), expect_size=size,
                                    server_pids=pids, timeout=120, fresh=fresh, sink=sink,
                                    affinity=pin[1] if pin else None))
    for n, runs in res.items():
        print(n, f"median MB/s {median([d.mbps for d in runs]):.0f}",
              f"cpu/GB {median([d.cpu_per_gb for d in runs]):.3f}",
              " ".join(f"{d.mbps:.0f}" for d in runs))
    for n, runs in list(res.items())[1:]:
        ratios = [a.mbps / b.mbps for a, b in zip(runs, res["nginx"], strict=True)]
        print(n, f"/nginx median {median(ratios):.3f}", " ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    main(sys.argv[1:])
