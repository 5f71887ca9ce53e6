#!/usr/bin/env python3
"""CPU per acknowledged write, per node: one Raft group of 3 nodes against 2 regions x 3
(`async`, `us` primary), for one or more binaries, alternating, ROUNDS rounds. The figure
that matters for issue 13 is the primary region's CPU per write (its nodes' utime + stime
over the load, divided by the writes acknowledged): the overhead multi-region adds on the
primary region's own machines. Unlike `region_benchmark` (tests/multi_region.rs) it can A/B
two builds in one run.

Usage: bench/region_cpu.py BIN[,BIN2...] [seconds] [rounds]
  QUOTA=1     CPU budgets as in region_benchmark (root, cgroup v1): the single group and
              `us` 0.8 core, `eu` 0.6, this script and the load 0.6; BUDGETS=0.5,0.4,0.3
              sets other ones (primary region and single group, eu, load).
  DELAY_MS=N  paced load instead of `meridian bench`: wrk, 64 connections, each waiting N ms
              between requests (needs wrk), so both setups see about the same rate.
  PERF=1      perf record (dwarf call graphs) of the primary region's leader, into
              /tmp/perf-<g|us>.data; PERF=region records all three of its nodes (no call
              graphs).
  SLICES=N    both setups run side by side and the load alternates between them, N pairs
              of `seconds` each (order A B B A ...), for the first binary only: a host whose
              speed drifts within a minute then weighs on both alike. With QUOTA=1 the single
              group gets a budget of its own (only one setup is loaded at a time). With PERF
              set, each slice is profiled (flat) into /tmp/perf-<g|us>-<pair>.data.
              NO_REMOTE=1 stops eu first: `us` stamps every write and ships nothing.
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
    for name in ("primary", "remote", "load", "anchor"):
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
    # BUDGETS=primary,remote,load (cores) overrides the defaults, e.g. on a host whose steal
    # time leaves less than two cores: a budget only stands in for a machine if it is always there.
    PB, RB, LB = map(float, os.environ.get("BUDGETS", "0.8,0.6,0.6").split(","))
    cg("primary", PB); cg("remote", RB); cg("load", LB); cg("anchor", PB); cg_add("load", os.getpid())
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
                # PERF=region: every node of the primary region, not only its leader.
                pids = [p.pid for n, hp, p in procs if (hp == leader if os.environ["PERF"] != "region" else n.startswith(regions[0]))]
                graph = ["-g", "--call-graph", "dwarf,8192"] if os.environ["PERF"] != "region" else []  # flat for three processes
                perf = subprocess.Popen(["perf", "record", "-F", "1999", *graph, "-p", ",".join(map(str, pids)), "-o", f"/tmp/perf-{regions[0]}.data", "--", "sleep", str(SECS - 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if os.environ.get("DELAY_MS"):
                out = subprocess.run(["wrk", "-t2", "-c64", f"-d{SECS}s", "--latency", "-s", PACED, f"http://127.0.0.1:{leader}"], capture_output=True, text=True, env={**os.environ, "PUT_LUA": PUT}).stdout
                rps = float([l for l in out.splitlines() if l.startswith("Requests/sec:")][0].split()[1])
                p99 = [l for l in out.splitlines() if l.strip().startswith("99%")][0].split()[1]
                p99 = float(p99[:-2]) if p99.endswith("ms") else float(p99[:-1]) * 1000 if p99.endswith("s") and not p99.endswith("us") else float(p99[:-2]) / 1000
                put = rps
            else:
                put, p99 = load(leader)
            after = {n: cpu(p.pid) for n, _, p in procs}
            if perf: perf.wait()
            ops = put * SECS
            per = {n: (after[n] - before[n]) * 1e6 / ops for n in before}
            if len(regions) > 1:
                time.sleep(1)
                st = get(f"http://127.0.0.1:{leader}/admin/region/status")
                print("   status:", json.dumps(st)[:600])
            return put, p99, per
        finally:
            for _, _, p in procs: p.send_signal(signal.SIGTERM)
            for _, _, p in procs: p.wait()
def load(leader):
    """SECS seconds of PUT load on `leader`: (PUT/s, p99 ms)."""
    out = subprocess.run([BIN, "bench", "--url", f"http://127.0.0.1:{leader}", "--clients", "64", "--duration", f"{SECS}s"], capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.strip().startswith("64 ")][-1].split()
    return float(line[1]), float(line[3])
def wchar(pid):
    """Bytes written so far (write calls, any file or socket) by `pid`, a process or, as
    "PID/task/TID", one of its threads."""
    return int([l for l in open(f"/proc/{pid}/io") if l.startswith("wchar:")][0].split()[1])
def threads(pid):
    """wchar per thread name of a process (threads of one name summed)."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
            out[name] = out.get(name, 0) + wchar(f"{pid}/task/{t}")
        except OSError: pass
    return out
def throttled(group):
    """(periods, throttled periods) of a budget, (0, 0) without QUOTA."""
    if not QUOTA: return (0, 0)
    st = dict(l.split() for l in open(f"/sys/fs/cgroup/cpu/meridian-bench-{group}/cpu.stat"))
    return (int(st["nr_periods"]), int(st["nr_throttled"]))
def usage():
    """CPU seconds used so far by each budget (QUOTA only)."""
    if not QUOTA: return {}
    return {g: int(open(f"/sys/fs/cgroup/cpuacct/meridian-bench-{g}/cpuacct.usage").read()) / 1e9 for g in ("anchor", "primary", "remote", "load")}
def steal():
    """Host steal time so far, in % of one CPU x seconds."""
    return int(open("/proc/stat").readline().split()[8]) * 100 / TCK
def sliced(pairs):
    dirs = [tempfile.TemporaryDirectory() for _ in range(2)]
    setups = []
    try:
        for regions, d, group in ((["g"], dirs[0], "anchor"), (["us", "eu"], dirs[1], "primary")):
            procs, leader = start(regions, d.name)
            if os.environ.get("NO_REMOTE") and len(regions) > 1:
                # Diagnostic: eu stopped, so `us` stamps every write but ships nothing (its
                # shipper retries with backoff): what stamping costs apart from shipping.
                for n, _, p in procs:
                    if not n.startswith(regions[0]): p.kill(); p.wait()
                procs = [x for x in procs if x[0].startswith(regions[0])]
            setups.append((regions, procs, leader))
            if QUOTA:
                for n, _, p in procs: cg_add(group if n.startswith(regions[0]) else "remote", p.pid)
        rates = {"g": [], "us": []}; cpus = {"g": [], "us": []}
        for i in range(pairs):
            for regions, procs, leader in (setups if i % 2 == 0 else setups[::-1]):
                prim = [p for n, _, p in procs if n.startswith(regions[0])]
                before = sum(cpu(p.pid) for p in prim); w0 = [wchar(p.pid) for p in prim]
                t0 = threads(prim[1].pid) if os.environ.get("THREADS") else None
                group = "anchor" if regions[0] == "g" else "primary"
                thr0 = throttled(group); steal0 = steal(); use0 = usage()
                perf = None
                if os.environ.get("PERF"):  # every node of the measured setup's primary region, flat
                    perf = subprocess.Popen(["perf", "record", "-F", "999", "-p", ",".join(str(p.pid) for p in prim), "-o", f"/tmp/perf-{regions[0]}-{i}.data", "--", "sleep", str(SECS - 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                put, p99 = load(leader)
                if perf: perf.wait()
                wr = " ".join(f"{(wchar(p.pid) - w) / (put * SECS):.0f}" for p, w in zip(prim, w0))
                if t0 is not None:  # bytes written per write by thread name, second node (a follower)
                    t1 = threads(prim[1].pid)
                    print("   follower threads, bytes/write:", " ".join(f"{k}={(v - t0.get(k, 0)) / (put * SECS):.0f}" for k, v in sorted(t1.items())))
                thr1 = throttled(group); st = (steal() - steal0) / SECS; use = {k: (v - use0[k]) / SECS for k, v in usage().items()}
                rates[regions[0]].append(put); cpus[regions[0]].append((sum(cpu(p.pid) for p in prim) - before) * 1e6 / (put * SECS))
                print(f"  slice {i + 1:2} {regions[0]:2} PUT/s {put:7.0f} p99 {p99:6.2f} ms  primary CPU us/write {cpus[regions[0]][-1]:6.1f}  throttled {(thr1[1] - thr0[1]) * 100 / max(1, thr1[0] - thr0[0]):3.0f}%  steal {st:.0f}%  bytes written/write {wr}  cores used " + " ".join(f"{k} {v:.2f}" for k, v in use.items()), flush=True)
                time.sleep(0.5)
        ratios = sorted(u / g for u, g in zip(rates["us"], rates["g"]))
        med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2
        print(f"one group {sum(rates['g']) / pairs:.0f} PUT/s, us under async {sum(rates['us']) / pairs:.0f}: ratio of totals {sum(rates['us']) / sum(rates['g']):.2f}x, "
              f"median of pair ratios {med(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}); CPU us/write median g {med(cpus['g']):.1f}, us {med(cpus['us']):.1f}", flush=True)
    finally:
        for _, procs, _ in setups:
            for _, _, p in procs: p.send_signal(signal.SIGTERM)
            for _, _, p in procs: p.wait()
        for d in dirs: d.cleanup()
BINS = BIN.split(",")
if os.environ.get("SLICES"):
    BIN = BINS[0]
    sliced(int(os.environ["SLICES"]))
    sys.exit(0)
for rnd in range(ROUNDS):
  for BIN in BINS:
    for regions in (["g"], ["us", "eu"]):
        put, p99, per = run(regions)
        prim = {n: v for n, v in per.items() if n.startswith(regions[0])}
        print(f"{os.path.basename(BIN)[:16]:16} {'+'.join(regions):6} PUT/s {put:8.0f} p99 {p99:6.2f} ms  primary CPU us/write {sum(prim.values()):6.1f}  " + " ".join(f"{n}={v:.1f}" for n, v in per.items()), flush=True)
