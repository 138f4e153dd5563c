"""Why does H.264 decode slower in a service worker than in its caller? Per c=1 decode on GPU 0, in this process vs in
one service worker: wall ms, the CPU ms of the process doing it (all its threads, also the split's helper thread that
exits after each decode), and for its living threads the ms spent waiting for a CPU (run queue), context switches, and
the CPUs / NUMA nodes the busiest thread ran on. Arms take turns.

    python3 bench/c1_sched.py h264_1080p_gop250 11     # clip name (bench/media.py), rounds; prints JSON lines

Run from the repository root. CPU ms come from /proc/<pid>/stat (10 ms ticks): read them as sums over the rounds.
"""
import glob, json, os, sys, time

sys.path.insert(0, "bench")

import mmprep
from media import clip_path
from util import median, sample32_of, wall_ms
from mmprep.service import MediaService

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def node_of(cpu):
    hit = glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/node*")
    return int(hit[0].rsplit("node", 1)[1]) if hit else -1


def snapshot(pid):
    """(process CPU ms, {tid: (run ns, run-queue ns, slices, voluntary, involuntary, last cpu)})."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    cpu_ms = (int(st[11]) + int(st[12])) * TICK_MS  # utime + stime of the whole thread group, exited threads too
    threads = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            run, wait, slices = (int(x) for x in open(f"{task}/schedstat").read().split())
            stat = open(f"{task}/stat").read().rsplit(")", 1)[1].split()
            status = dict(line.split(":", 1) for line in open(f"{task}/status") if "ctxt_switches" in line)
            threads[task.rsplit("/", 1)[1]] = (run, wait, slices, int(status["voluntary_ctxt_switches"]),
                                              int(status["nonvoluntary_ctxt_switches"]), int(stat[36]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return cpu_ms, threads


def delta(a, b):
    """What changed between snapshots ``a`` and ``b`` of one process."""
    d = {"cpu_ms": b[0] - a[0], "runq_ms": 0.0, "slices": 0, "vol": 0, "invol": 0}
    busiest, most = None, -1
    for tid, t in b[1].items():
        s = a[1].get(tid, (0, 0, 0, 0, 0, t[5]))
        d["runq_ms"] += (t[1] - s[1]) / 1e6
        d["slices"] += t[2] - s[2]
        d["vol"] += t[3] - s[3]
        d["invol"] += t[4] - s[4]
        if t[0] - s[0] > most:
            busiest, most = t, t[0] - s[0]
    d["busiest_cpu"] = busiest[5] if busiest else -1
    return d


def main():
    clip, n = sys.argv[1], int(sys.argv[2])
    data = clip_path(clip).read_bytes()
    idx = sample32_of(data)
    me = os.getpid()
    with MediaService(gpus=[0], workers_per_gpu=1) as svc:
        worker = svc.stats()["workers"][0]["pid"]
        arms = {"here": (me, lambda: mmprep.decode_video(data, indices=idx, device="cuda:0")),
                "worker": (worker, lambda: svc.decode_video(data, gpu=0, indices=idx))}
        for _, f in arms.values():
            for _ in range(3):
                f()
        rows = {k: [] for k in arms}
        for _ in range(n):
            for k, (pid, f) in arms.items():
                s0 = snapshot(pid)
                wall = wall_ms(f)
                time.sleep(0.05)  # let the worker's thread states settle before reading them
                rows[k].append({"wall": wall, **delta(s0, snapshot(pid))})
    out = {"clip": clip, "affinity": sorted(os.sched_getaffinity(0))}
    for k, rs in rows.items():
        out[k] = {"wall_median": median([r["wall"] for r in rs], 2),
                  **{f"{m}_per_round": round(sum(r[m] for r in rs) / len(rs), 2)
                     for m in ("cpu_ms", "runq_ms", "slices", "vol", "invol")},
                  "cpus": sorted({r["busiest_cpu"] for r in rs}),
                  "nodes": sorted({node_of(r["busiest_cpu"]) for r in rs})}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
