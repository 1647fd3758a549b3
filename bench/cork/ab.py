"""Experiment (stop 25): nginx against a minimal Python sendfile server (mini.py), one client.

usage: .venv/bin/python bench/cork/ab.py REPS fresh|ka [mini:MODE ...]
MODE: cork | nocork | cork2m | early | early2m | *-delay (cork = TCP_CORK after the headers,
early = before them, 2m = 2 MiB sendfile steps, -delay = no TCP_NODELAY). Env: NOPUSH=1 adds
an nginx with `tcp_nopush off`; SINK=trunc|splice|recv|curl; NC=clients; PIN=S,C pins servers
to CPUs S and clients to CPUs C. Needs /tmp/ab/big.whl (200 MiB; made if missing)."""
import sys, subprocess, time, statistics, itertools, os
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from harness.servers import nginx
from harness.clients import drain
from harness.util import free_port, wait_http
root = Path("/tmp/ab/root"); root.mkdir(parents=True, exist_ok=True)
if not Path("/tmp/ab/big.whl").exists():
    with open("/tmp/ab/big.whl", "wb") as fh:
        for _ in range(200):
            fh.write(os.urandom(1 << 20))
f = root / "big.whl"
if not f.exists(): os.link("/tmp/ab/big.whl", f)
size = f.stat().st_size
reps = int(sys.argv[1]); fresh = sys.argv[2] == "fresh"; NC = int(os.environ.get("NC", "1"))
extra = sys.argv[3:]  # name=argv for other servers: "mini:cork" etc
logd = Path("/tmp/ab/logs"); logd.mkdir(exist_ok=True)
servers = {}
procs = []
import harness.servers as hs, contextlib
with contextlib.ExitStack() as st:
    ng = st.enter_context(nginx(root, log_dir=logd))
    servers["nginx"] = (ng.url + "/big.whl", ng.pids())
    if os.environ.get("NOPUSH"):
        orig = hs.NGINX_CONF
        hs.NGINX_CONF = orig.replace("tcp_nopush on", "tcp_nopush off")
        ng2 = st.enter_context(nginx(root, log_dir=logd))
        hs.NGINX_CONF = orig
        servers["nginx-nopush-off"] = (ng2.url + "/big.whl", ng2.pids())
    for spec in extra:
        name, mode = spec.split(":"); name = spec
        port = free_port()
        p = subprocess.Popen([sys.executable, str(HERE / "mini.py"), str(f), str(port), mode], stdout=subprocess.PIPE)
        p.stdout.readline(); procs.append(p)
        servers[name] = (f"http://127.0.0.1:{port}/big.whl", [p.pid])
    names = list(servers)
    PIN = os.environ.get("PIN")  # "S,C": server cpus, client cpus e.g. "0,1" or "0,0"
    if PIN:
        sc, cc = PIN.split(",")
        for n, (u, pids) in servers.items():
            for pid in pids:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(tid), {int(x) for x in sc})
        os.sched_setaffinity(0, {int(x) for x in cc})
    res = {n: [] for n in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            url, pids = servers[n]
            d = drain(url, NC, count=max(4, 32 // NC), expect_size=size, server_pids=pids, timeout=120, fresh=fresh, sink=os.environ.get("SINK", "trunc"))
            res[n].append((d.mbps, d.cpu_per_gb, d.client_cores_max))
    for p in procs: p.kill()
for n in names:
    m = [x[0] for x in res[n]]
    print(n, "median MB/s %.0f" % statistics.median(m), "cpu/GB %.3f" % statistics.median(x[1] for x in res[n]), " ".join("%.0f" % x for x in m))
for n in names[1:]:
    rat = [a[0] / b[0] for a, b in zip(res[n], res["nginx"])]
    print(n, "/nginx median %.3f" % statistics.median(rat), " ".join("%.2f" % x for x in rat))
