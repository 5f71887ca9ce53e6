#!/usr/bin/env python3
"""CPU per acknowledged write, per node: one Raft group of 3 nodes against 2 regions x 3
(`async`, `us` primary), for one or more binaries, alternating, ROUNDS rounds. The figure
that matters for issue 13 is the primary region's CPU per write (its nodes' utime + stime
over the load, divided by the writes acknowledged): the overhead multi-region adds on the
primary region's own machines. Unlike `region_benchmark` (tests/multi_region.rs) it can A/B
two builds in one run.

Usage: bench/region_cpu.py BIN[,BIN2...] [seconds] [rounds]
  QUOTA=1     CPU budgets as in region_benchmark (root, cgroup v1): the single group and
              `us` 0.8 core, `eu` 0.6, this script and the load 0.6.
  DELAY_MS=N  paced load instead of `meridian bench`: wrk, 64 connections, each waiting N ms
              between requests (needs wrk), so both setups see about the same rate.
  PERF=1      perf record (dwarf call graphs) of the primary region's leader, into
              /tmp/perf-<g|us>.data.
Binds to 127.0.0.1 only; every node is stopped by its PID."""
import os, subprocess, sys, time, json, tempfile, urllib.request, socket, signal
BIN = sys.argv[1]; SECS = int(sys.argv[2]) if len(sys.argv) > 2 else 8; ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
PACED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paced.lua")
PUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "put.lua")
SECRET = "raft-test-secret-4f1c9a7d2e8b6035c1d7a9e4b2f8063d"
TCK = os.sysconf('SC_CLK_TCK')
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TCK
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r: return json.loads(r.read())
    except Exception: return None
def start(regions, dirp):
    procs = []
    ports = {r: [(port(), port()) for _ in range(3)] for r in regions}
    for r in regions:
        ids = [f"{r}{i+1}" for i in range(3)]
        peers = ",".join(f"{ids[i]}:127.0.0.1:{ports[r][i][1]}" for i in range(3))
        for i in range(3):
            env = {"MERIDIAN_HTTP_ADDR": f"127.0.0.1:{ports[r][i][0]}", "MERIDIAN_DATA_DIR": f"{dirp}/{ids[i]}",
                   "MERIDIAN_CLUSTER_NODE_ID": ids[i], "MERIDIAN_CLUSTER_BIND_ADDR": f"127.0.0.1:{ports[r][i][1]}",
                   "MERIDIAN_CLUSTER_RAFT_PEERS": peers, "MERIDIAN_CLUSTER_RAFT_BOOTSTRAP": str(i == 0).lower(),
                   "MERIDIAN_CLUSTER_SECRET": SECRET, "MERIDIAN_CLUSTER_HTTP_ADVERTISE_ADDR": f"http://127.0.0.1:{ports[r][i][0]}"}
            if len(regions) == 1:
                env["MERIDIAN_CLUSTER_MODE"] = "raft"
            else:
                env.update({"MERIDIAN_CLUSTER_MODE": "multi_region", "MERIDIAN_CLUSTER_REGION_ID": r,
                            "MERIDIAN_CLUSTER_REMOTE_REGIONS": ",".join(f"{q}:127.0.0.1:{ports[q][j][1]}" for q in regions if q != r for j in range(3)),
                            "MERIDIAN_CLUSTER_TOMBSTONE_GC_INTERVAL": "0", "MERIDIAN_CLUSTER_PRIMARY_REGION": regions[0]})
            log = open(f"{dirp}/{ids[i]}.log", "w")
            procs.append((ids[i], ports[r][i][0], subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=log)))
    deadline = time.time() + 30
    while time.time() < deadline:
        for name, hp, p in procs:
            h = get(f"http://127.0.0.1:{hp}/health")
            if h and h.get("replication", {}).get("is_leader") and name.startswith(regions[0]):
                time.sleep(1)
                return procs, hp
        time.sleep(0.2)
    raise SystemExit("no leader")
QUOTA = os.environ.get("QUOTA") == "1"
def cg(name, cores):
    for h in ("cpu", "cpuacct"):
        os.makedirs(f"/sys/fs/cgroup/{h}/meridian-bench-{name}", exist_ok=True)
    open(f"/sys/fs/cgroup/cpu/meridian-bench-{name}/cpu.cfs_period_us", "w").write("100000")
    open(f"/sys/fs/cgroup/cpu/meridian-bench-{name}/cpu.cfs_quota_us", "w").write(str(int(cores * 100000)))
def cg_add(name, pid):
    for h in ("cpu", "cpuacct"):
        open(f"/sys/fs/cgroup/{h}/meridian-bench-{name}/cgroup.procs", "w").write(str(pid))
def cg_remove():
    for name in ("primary", "remote", "load"):
        for h in ("cpu", "cpuacct"):
            d = f"/sys/fs/cgroup/{h}/meridian-bench-{name}"
            if os.path.isdir(d):
                for pid in open(f"{d}/cgroup.procs").read().split():
                    try: open(f"/sys/fs/cgroup/{h}/cgroup.procs", "w").write(pid)
                    except OSError: pass
                try: os.rmdir(d)
                except OSError: pass
if QUOTA:
    import atexit
    cg("primary", 0.8); cg("remote", 0.6); cg("load", 0.6); cg_add("load", os.getpid())
    atexit.register(cg_remove)
def run(regions):
    with tempfile.TemporaryDirectory() as d:
        procs, leader = start(regions, d)
        if QUOTA:
            for n, _, p in procs: cg_add("primary" if n.startswith(regions[0]) else "remote", p.pid)
        try:
            before = {n: cpu(p.pid) for n, _, p in procs}
            perf = None
            if os.environ.get("PERF"):
                pid = [p.pid for n, hp, p in procs if hp == leader][0]
                perf = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "--call-graph", "dwarf,8192", "-p", str(pid), "-o", f"/tmp/perf-{regions[0]}.data", "--", "sleep", str(SECS - 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if os.environ.get("DELAY_MS"):
                out = subprocess.run(["wrk", "-t2", "-c64", f"-d{SECS}s", "--latency", "-s", PACED, f"http://127.0.0.1:{leader}"], capture_output=True, text=True, env={**os.environ, "PUT_LUA": PUT}).stdout
                rps = float([l for l in out.splitlines() if l.startswith("Requests/sec:")][0].split()[1])
                p99 = [l for l in out.splitlines() if l.strip().startswith("99%")][0].split()[1]
                p99 = float(p99[:-2]) if p99.endswith("ms") else float(p99[:-1]) * 1000 if p99.endswith("s") and not p99.endswith("us") else float(p99[:-2]) / 1000
                line = ["64", str(rps), "0", str(p99)]
            else:
                out = subprocess.run([BIN, "bench", "--url", f"http://127.0.0.1:{leader}", "--clients", "64", "--duration", f"{SECS}s"], capture_output=True, text=True).stdout
                line = [l for l in out.splitlines() if l.strip().startswith("64 ")][-1].split()
            after = {n: cpu(p.pid) for n, _, p in procs}
            if perf: perf.wait()
            ops = float(line[1]) * SECS
            per = {n: (after[n] - before[n]) * 1e6 / ops for n in before}
            if len(regions) > 1:
                time.sleep(1)
                st = get(f"http://127.0.0.1:{leader}/admin/region/status")
                print("   status:", json.dumps(st)[:600])
            return float(line[1]), float(line[3]), per
        finally:
            for _, _, p in procs: p.send_signal(signal.SIGTERM)
            for _, _, p in procs: p.wait()
BINS = BIN.split(",")
for rnd in range(ROUNDS):
  for BIN in BINS:
    for regions in (["g"], ["us", "eu"]):
        put, p99, per = run(regions)
        prim = {n: v for n, v in per.items() if n.startswith(regions[0])}
        print(f"{os.path.basename(BIN)[:16]:16} {'+'.join(regions):6} PUT/s {put:8.0f} p99 {p99:6.2f} ms  primary CPU us/write {sum(prim.values()):6.1f}  " + " ".join(f"{n}={v:.1f}" for n, v in per.items()), flush=True)
