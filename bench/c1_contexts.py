"""Is c=1 decode slower in whichever process made its CUDA context on the GPU second, or in a process started by
``multiprocessing``? Each process decodes + Qwen2-VL preprocesses one clip in-process on GPU 0, one request at a time,
taking turns in blocks (the others idle); prints each block's median ms, its process's CPU-ms per request and the
CPUs its busy threads were last seen on (counts over the block's requests), as one JSON line.

- ``order``: two spawned processes A and B (this process never touches CUDA) take turns; then A exits and B runs
  alone; then a third, C, starts and B and C take turns.
- ``launch``: a ``multiprocessing`` spawned child S, a child P started by ``subprocess`` as a plain
  ``python3 bench/c1_contexts.py --child``, and this process M (its CUDA context made last) take turns.

    python3 bench/c1_contexts.py h264_1080p_gop250 11 [order|launch]   # clip (bench/media.py), requests per block

Run from the repository root.
"""
import json, sys, time
import multiprocessing as mp

sys.path.insert(0, "bench")
import torch  # noqa: E402

from media import clip_path  # noqa: E402
from util import decode_preprocess, median, sample32_of, wall_ms  # noqa: E402


def tasks():
    """{thread id: (CPU ticks used, CPU it last ran on)} for this process's threads."""
    import os

    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(f[11]) + int(f[12]), int(f[36]))  # utime + stime, processor (fields 14, 15, 39)
    return out


class Runner:
    """Decode + preprocess ``clip`` on GPU 0 in this process, warmed up at once; ``run(n)``: the median ms of n, the
    process's CPU-ms per request (all its threads) and the CPUs its busy threads were last on."""

    def __init__(self, clip):
        self.data = clip_path(clip).read_bytes()
        self.idx = sample32_of(self.data)
        for _ in range(3):
            decode_preprocess(self.data, self.idx, "cuda:0")
        torch.cuda.synchronize()

    def run(self, n):
        ms, c0, cpus = [], time.process_time(), {}
        for _ in range(n):
            before = tasks()
            ms.append(wall_ms(lambda: decode_preprocess(self.data, self.idx, "cuda:0")))
            for tid, (ticks, cpu) in tasks().items():  # the CPU each thread that ran during the request was last on
                if ticks > before.get(tid, (0, 0))[0]:
                    cpus[cpu] = cpus.get(cpu, 0) + 1
        return median(ms), round(1000 * (time.process_time() - c0) / n, 1), dict(sorted(cpus.items()))


def facts():
    """What a process inherits that could differ between a top-level and a child process: environment, signal
    dispositions and mask, CPUs allowed, timer slack, nice value and scheduling policy."""
    import os

    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    out = {f"env:{k}": v for k, v in os.environ.items() if k != "C1_KEY"}
    out.update({k: status[k].strip() for k in ("SigBlk", "SigIgn", "Cpus_allowed_list") if k in status})
    out.update(timerslack_ns=open("/proc/self/timerslack_ns").read().strip(), nice=os.nice(0),
               policy=os.sched_getscheduler(0))
    return out


def proc(conn, clip):
    """Child: warm up, then answer ("run", n) with the median ms of n requests, until ("quit",)."""
    r = Runner(clip)
    conn.send(("ready", facts()))
    while True:
        msg = conn.recv()
        if msg[0] == "quit":
            return
        conn.send(r.run(msg[1]))


def start(ctx, clip):
    here, there = ctx.Pipe()
    p = ctx.Process(target=proc, args=(there, clip), daemon=True)
    p.start()
    p.facts = here.recv()[1]
    return p, here


def popen(clip):
    """A child started as a plain ``python3`` process, talking over a local socket."""
    import os, subprocess
    from multiprocessing.connection import Listener

    key = os.urandom(16)
    with Listener(("127.0.0.1", 0), authkey=key) as ls:
        p = subprocess.Popen([sys.executable, __file__, "--child", clip, str(ls.address[1])],
                             env={**os.environ, "C1_KEY": key.hex()})
        conn = ls.accept()
    p.facts = conn.recv()[1]
    p.join = p.wait
    return p, conn


class Here:
    """This process (its main thread), answering the same messages as a child."""

    def __init__(self, clip):
        self.r, self.out = Runner(clip), None

    def send(self, msg):
        self.out = self.r.run(msg[1])

    def recv(self):
        return self.out


def main():
    import os
    if sys.argv[1] == "--child":
        from multiprocessing.connection import Client
        return proc(Client(("127.0.0.1", int(sys.argv[3])), authkey=bytes.fromhex(os.environ["C1_KEY"])), sys.argv[2])
    clip, n = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "order"
    clip_path(clip)  # make the clip once, before the children race to
    ctx = mp.get_context("spawn")
    procs = {}
    out = {"clip": clip, "mode": mode, "blocks": []}

    def block(name):
        procs[name][1].send(("run", n))
        out["blocks"].append([name, *procs[name][1].recv()])

    if mode == "launch":
        procs["S"] = start(ctx, clip)
        procs["P"] = popen(clip)
        procs["M"] = (None, Here(clip))
        mine = facts()
        out["siblings"] = sorted({open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read().strip()
                                  for c in range(os.cpu_count())})
        out["differs"] = {name: {k: [mine.get(k), procs[name][0].facts.get(k)] for k in set(mine) | set(procs[name][0].facts)
                                 if mine.get(k) != procs[name][0].facts.get(k)} for name in "SP"}
        for name in "MSP" * 4:
            block(name)
        for name in "SP":
            procs[name][1].send(("quit",)); procs[name][0].join()
        print(json.dumps(out), flush=True)
        return
    procs["A"] = start(ctx, clip)
    procs["B"] = start(ctx, clip)
    for name in "ABABAB":
        block(name)
    procs["A"][1].send(("quit",)); procs["A"][0].join()
    for _ in range(2):
        block("B")
    procs["C"] = start(ctx, clip)
    for name in "BCBCBC":
        block(name)
    for name in "BC":
        procs[name][1].send(("quit",)); procs[name][0].join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
