"""Is c=1 decode slower in whichever process made its CUDA context on the GPU second, or in a process started by
``multiprocessing``? Each process decodes + Qwen2-VL preprocesses one clip in-process on GPU 0, one request at a time,
taking turns in blocks (the others idle); prints each block's median ms, its process's CPU-ms per request and the
CPUs its busy threads were last seen on (counts over the block's requests), as one JSON line.

- ``order``: two spawned processes A and B (this process never touches CUDA) take turns; then A exits and B runs
  alone; then a third, C, starts and B and C take turns.
- ``launch``: a ``multiprocessing`` spawned child S, a child P started by ``subprocess`` as a plain
  ``python3 bench/c1_contexts.py --child``, and this process M (its CUDA context made last) take turns.
- ``worker``: which of the service worker's differences from a plain child makes its decode slower? This process M
  and four ``multiprocessing`` children decoding in-process — S as above, H reading the clip from a shared-memory
  segment in place (as a worker does), T running each request on one of 8 threads that otherwise wait (as a worker's
  do), X both — and W, ``mmprep.service.MediaService`` on GPU 0 (two workers), take turns. Each block also gives
  the median ms of ``decode_video`` alone (for W: the worker's own count), which is what differed in the c=1 pairs.
  ``C1_WORKER_BLOCKS`` picks the children (default "SHTX"); with Q (X started as a worker is: torch's ``spawn``
  context, device set and kernels loaded first), E (Q that also lends its result by ``mmprep.ipc``) and 1 (a
  service with one worker on the GPU) the rest of the worker's differences are covered. E's parts (``LEND``): Y
  (the lease ended at once), I (only the memory's IPC handle), V (only an interprocess event), D (no IPC, result
  held 20 ms); and theirs: P (ipc's lease table and reaper thread only), O (an interprocess event of its own), N (a
  plain CUDA event), R (a timer thread per request, nothing held), L (result held 20 ms by one long-lived thread);
  B and C are Q and V with the CUDA context's waits blocking (CU_CTX_SCHED_BLOCKING_SYNC: a wait then costs no CPU,
  so CPU-ms tells the CPU's own work from waiting for the GPU); K waits (blocking) for the result instead of an event;
  U first starts a service of its own and opens its results (M, faster than every child in round 5, did so).
  Blocks end with the decoding process's page faults and context switches per request (W: its first worker's);
  ``C1_SHUFFLE=1`` shuffles each round's order. Round 6 found the slow ones fault in ~5,400 more pages a request
  (children ~6,700, M ~2): A, F, G, Z are Q, V, L, E that keep freed host memory for reuse as workers now do
  (``service.worker.keep_heap``), J is W with workers on glibc's default heap (``MMPREP_WORKER_HEAP_MB=0``).

    python3 bench/c1_contexts.py h264_1080p_gop250 11 [order|launch|worker]   # clip (bench/media.py), requests per block

Run from the repository root.
"""
import json, os, sys, time
import multiprocessing as mp

sys.path.insert(0, "bench")
import torch  # noqa: E402

from media import clip_path  # noqa: E402
from util import decode_preprocess, median, sample32_of, service_spent, wall_ms  # noqa: E402


def tasks(pid="self"):
    """{thread id: (CPU ticks used, CPU it last ran on)} for the threads of process ``pid`` (default: this one)."""

    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            f = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(f[11]) + int(f[12]), int(f[36]))  # utime + stime, processor (fields 14, 15, 39)
    return out


def count_cpus(before, after, cpus):
    """Add to ``cpus`` ({cpu: count}) the CPU each thread that ran between the ``tasks()`` snapshots was last on."""
    for tid, (ticks, cpu) in after.items():
        if ticks > before.get(tid, (0, 0))[0]:
            cpus[cpu] = cpus.get(cpu, 0) + 1


def rusage(pid=None):
    """The minor page faults and voluntary / involuntary context switches so far of this process (or ``pid``'s,
    summed over its live threads from /proc)."""
    import resource

    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_minflt, r.ru_nvcsw, r.ru_nivcsw
    flt = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])
    sw = [0, 0]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            st = dict(line.split(":", 1) for line in open(f"/proc/{pid}/task/{tid}/status") if ":" in line)
        except OSError:
            continue
        sw[0] += int(st["voluntary_ctxt_switches"])
        sw[1] += int(st["nonvoluntary_ctxt_switches"])
    return flt, *sw


def per_request(before, after, n):
    return dict(zip(("minflt", "nvcsw", "nivcsw"), (round((a - b) / n, 1) for a, b in zip(after, before))))


DEVICE = os.environ.get("C1_DEVICE", "cuda:0")  # "cpu": a smoke test of the script on a machine without a GPU


LEND = {
    "export": "all of ipc.share; the lease marked released at once (as a caller that opened and dropped it would), "
              "the reaper ends it",
    "exportsync": "the same, the lease ended here at once",
    "ipcmem": "only the memory's IPC handle (cuIpcGetMemHandle)",
    "ipcevent": "only an interprocess event from ipc's pool (its lease table and reaper thread made), recorded",
    "hold": "no IPC: the result kept 20 ms (the reaper's poll) by a threading.Timer made per request",
    "producer": "only ipc's lease table and reaper thread made (once)",
    "ownevent": "only an interprocess event of its own (made once, no lease table or reaper), recorded",
    "event": "only a plain CUDA event (made once), recorded",
    "timer": "only a threading.Timer per request that wakes 20 ms later and does nothing",
    "holdthread": "no IPC: the result kept 20 ms by one long-lived thread (no thread made per request)",
    "waitidle": "no IPC: a blocking wait until the result is done (what an export without an event would do)",
}
"""What variants ``+<key>`` do with each request's result after it: one part of a worker's export at a time."""


class Runner:
    """Decode + preprocess ``clip`` on GPU 0 in this process, warmed up at once; ``run(n)``: the median ms of n, the
    process's CPU-ms per request (all its threads) and the CPUs its busy threads were last on; with ``decode_ms``,
    the median ms of the decodes alone after them. ``variant`` (the ``worker`` mode): "shm" reads the clip from a
    shared-memory segment in place, "thread" runs each request on one of 8 waiting threads, "shm+thread" both;
    "export" also lends the result's pixels by ``mmprep.ipc.share`` and marks the lease released at once (as a caller
    that opened and dropped it would), so the lease reaper runs as in a worker."""

    def __init__(self, clip, variant=frozenset(), decode_ms=False):
        data = clip_path(clip).read_bytes()
        self.idx, self.decode_ms, self.pool = sample32_of(data), decode_ms, None
        if "shm" in variant:
            from multiprocessing import shared_memory

            self.shm = shared_memory.SharedMemory(create=True, size=len(data))
            self.shm.buf[: len(data)] = data
            data = self.shm.buf[: len(data)]
        if "thread" in variant:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(8)
            list(self.pool.map(lambda _: time.sleep(0.01), range(8)))  # all 8 threads started, then waiting
        self.data = data
        self.export = next((v for v in variant if v in LEND), "")
        for _ in range(3):
            self.one({})
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def close(self):
        """Give back the shared-memory segment and the threads."""
        if hasattr(self, "shm"):
            self.data.release()
            self.shm.close()
            self.shm.unlink()
        if self.pool:
            self.pool.shutdown()

    def one(self, spent):
        call = lambda: decode_preprocess(self.data, self.idx, DEVICE, spent)  # noqa: E731
        out = self.pool.submit(call).result() if self.pool else call()
        if self.export and out["pixel_values_videos"].is_cuda:
            self.lend(out["pixel_values_videos"])
        return out

    def lend(self, t):
        """One part of what a worker does with its result, by ``self.export`` (``LEND``)."""
        import ctypes
        import threading
        from mmprep import ipc

        if self.export == "producer":
            ipc._get_producer()
        elif self.export in ("ownevent", "event"):
            if not hasattr(self, "event"):
                self.event = torch.cuda.Event(interprocess=self.export == "ownevent")
            self.event.record(torch.cuda.current_stream(t.device))
        elif self.export == "waitidle":
            from mmprep.device import wait_idle

            wait_idle(torch.cuda.current_stream(t.device))
        elif self.export == "timer":
            threading.Timer(0.02, lambda: None).start()
        elif self.export == "holdthread":
            if not hasattr(self, "freer"):
                import queue

                self.freer = queue.SimpleQueue()

                def free_later():
                    while True:
                        held = self.freer.get()
                        time.sleep(0.02)
                        del held

                threading.Thread(target=free_later, daemon=True).start()
            self.freer.put(t)
        elif self.export in ("export", "exportsync"):
            h = ipc.share(t)
            ipc._get_producer().table.set_state(h.slot, ipc._RELEASED, pid=0)  # what the caller's release writes
            if self.export == "exportsync":
                ipc.wait_released(h)
        elif self.export == "ipcmem":
            with ipc._bound(t.device.index or 0):
                lib, base, size, hd = ipc._driver(), ctypes.c_uint64(), ctypes.c_size_t(), ipc._IpcMemHandle()
                ipc._check(lib.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size),
                                                       ctypes.c_uint64(t.data_ptr())), "cuMemGetAddressRange")
                ipc._check(lib.cuIpcGetMemHandle(ctypes.byref(hd), base), "cuIpcGetMemHandle")
        elif self.export == "ipcevent":
            p = ipc._get_producer()
            ev = p.event(t.device.index or 0)
            ev[1].record(torch.cuda.current_stream(t.device))
            with p.cond:
                p.events.append(ev)
        elif self.export == "hold":
            self.held = t
            threading.Timer(0.02, self.__dict__.pop, args=("held", None)).start()

    def run(self, n):
        ms, dec, c0, cpus, ru0 = [], [], time.process_time(), {}, rusage()
        for _ in range(n):
            before, spent = tasks(), {}
            ms.append(wall_ms(lambda: self.one(spent)))
            dec.append(1000 * spent["decode"])
            count_cpus(before, tasks(), cpus)
        out = median(ms), round(1000 * (time.process_time() - c0) / n, 1), dict(sorted(cpus.items()))
        return (*out, median(dec), per_request(ru0, rusage(), n)) if self.decode_ms else out


class Served:
    """W of the ``worker`` mode: the same requests through ``mmprep.service.MediaService`` on GPU 0 (two workers);
    ``run(n)``: median ms here, this process's CPU-ms per request, {} (the workers' CPUs are not read here) and the
    median of the workers' own decode ms; the CPUs are those the first worker's busy threads were last on."""

    def __init__(self, clip, workers_per_gpu=2):
        from mmprep.service import MediaService
        from util import PREPROCESS

        self.data = clip_path(clip).read_bytes()
        self.idx, self.kw = sample32_of(self.data), PREPROCESS
        gpus = [int(DEVICE.split(":")[1])] if DEVICE.startswith("cuda") else []
        self.svc = MediaService(gpus=gpus, workers_per_gpu=workers_per_gpu, cpu_workers=0 if gpus else 2).start()
        for _ in range(3):
            self.one()

    def one(self):
        return self.svc.preprocess_video(self.data, decode={"indices": self.idx}, **self.kw)

    def run(self, n):
        ms, dec, c0, cpus = [], [], time.process_time(), {}
        pid = self.svc._workers[0].process.pid  # at c=1 every request goes to the first (least loaded) worker
        ru0 = rusage(pid)
        for _ in range(n):
            d0, before = service_spent(self.svc)["decode"], tasks(pid)
            ms.append(wall_ms(self.one))
            dec.append(1000 * (service_spent(self.svc)["decode"] - d0))
            count_cpus(before, tasks(pid), cpus)
        return (median(ms), round(1000 * (time.process_time() - c0) / n, 1), dict(sorted(cpus.items())), median(dec),
                per_request(ru0, rusage(pid), n))

    def send(self, msg):
        self.out = self.run(msg[1])

    def recv(self):
        return self.out


def facts():
    """What a process inherits that could differ between a top-level and a child process: environment, signal
    dispositions and mask, CPUs allowed, timer slack, nice value and scheduling policy."""

    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    out = {f"env:{k}": v for k, v in os.environ.items() if k != "C1_KEY"}
    out.update({k: status[k].strip() for k in ("SigBlk", "SigIgn", "Cpus_allowed_list") if k in status})
    out.update(timerslack_ns=open("/proc/self/timerslack_ns").read().strip(), nice=os.nice(0),
               policy=os.sched_getscheduler(0))
    return out


def proc(conn, clip, variant=frozenset(), decode_ms=False):
    """Child: warm up, then answer ("run", n) with the median ms of n requests, until ("quit",). Variant "init"
    starts as a worker does: current device set, fused kernels loaded before anything else; "heap" keeps freed host
    memory for reuse as a worker does (``keep_heap``); "blocksync" makes the
    GPU's primary context with blocking waits; "consumer" first starts a one-worker service and opens its results
    (as M, the process that started W, does)."""
    if "heap" in variant:  # what a service worker does first (``MMPREP_WORKER_HEAP_MB``'s default)
        from mmprep.service.worker import keep_heap

        assert keep_heap(256)
    if "blocksync" in variant and DEVICE.startswith("cuda"):  # before torch makes the primary context
        import ctypes

        cu = ctypes.CDLL("libcuda.so.1")
        assert cu.cuInit(0) == 0 and cu.cuDevicePrimaryCtxSetFlags(int(DEVICE.split(":")[1]), 0x04) == 0
    if "init" in variant and DEVICE.startswith("cuda"):
        from mmprep import kernels

        torch.cuda.set_device(torch.device(DEVICE))
        kernels.fused(wait=True)
    svc = Served(clip, workers_per_gpu=1) if "consumer" in variant else None  # opens a worker's results, as M does
    r = Runner(clip, variant, decode_ms)
    conn.send(("ready", facts()))
    while True:
        msg = conn.recv()
        if msg[0] == "quit":
            if svc:
                svc.svc.close()
            return r.close()
        conn.send(r.run(msg[1]))


def start(ctx, clip, variant=frozenset(), decode_ms=False):
    if "tmp" in variant:  # started as the service starts its workers
        import torch.multiprocessing as tmp

        ctx = tmp.get_context("spawn")
    here, there = ctx.Pipe()
    # a "consumer" child starts service workers of its own, which a daemonic process may not
    p = ctx.Process(target=proc, args=(there, clip, variant, decode_ms), daemon="consumer" not in variant)
    p.start()
    p.facts = here.recv()[1]
    return p, here


def popen(clip):
    """A child started as a plain ``python3`` process, talking over a local socket."""
    import subprocess
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

    def __init__(self, clip, decode_ms=False):
        self.r, self.out = Runner(clip, decode_ms=decode_ms), None

    def send(self, msg):
        self.out = self.r.run(msg[1])

    def recv(self):
        return self.out


def main():
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

    if mode == "worker":
        q = "shm+thread+tmp+init"
        kids = {"S": "", "H": "shm", "T": "thread", "X": "shm+thread", "Q": q, "E": q + "+export",
                "Y": q + "+exportsync", "I": q + "+ipcmem", "V": q + "+ipcevent", "D": q + "+hold",
                "P": q + "+producer", "O": q + "+ownevent", "N": q + "+event", "R": q + "+timer",
                "L": q + "+holdthread", "B": q + "+blocksync", "C": q + "+ipcevent+blocksync",
                "K": q + "+waitidle", "U": q + "+consumer", "A": q + "+heap", "F": q + "+ipcevent+heap",
                "G": q + "+holdthread+heap", "Z": q + "+export+heap"}
        picked = os.environ.get("C1_WORKER_BLOCKS", "SHTX")
        kids = {k: frozenset(v.split("+")) - {""} for k, v in kids.items() if k in picked}  # a variant's parts
        for name, variant in list(kids.items()):
            try:
                procs[name] = start(ctx, clip, variant, decode_ms=True)
            except (EOFError, OSError) as e:  # the child died warming up: the others still run
                out.setdefault("failed", {})[name] = f"{type(e).__name__}: {e}"
                del kids[name]
        procs["W"] = (None, Served(clip))
        if "1" in os.environ.get("C1_WORKER_BLOCKS", ""):
            procs["1"] = (None, Served(clip, workers_per_gpu=1))
        if "J" in os.environ.get("C1_WORKER_BLOCKS", ""):  # W with workers on glibc's default heap
            was = os.environ.get("MMPREP_WORKER_HEAP_MB")
            os.environ["MMPREP_WORKER_HEAP_MB"] = "0"  # the workers read it when they start
            try:
                procs["J"] = (None, Served(clip))
            finally:
                if was is None:
                    del os.environ["MMPREP_WORKER_HEAP_MB"]
                else:
                    os.environ["MMPREP_WORKER_HEAP_MB"] = was
        procs["M"] = (None, Here(clip, decode_ms=True))
        names = list("M" + "".join(kids) + "W" + "".join(k for k in "1J" if k in procs))
        for r in range(int(os.environ.get("C1_ROUNDS", "3"))):
            if os.environ.get("C1_SHUFFLE"):  # each round in another order: no block always follows the same one
                import random

                random.Random(r).shuffle(names)
            for name in names:
                block(name)
            print(json.dumps({**out, "rounds_done": r + 1}), flush=True)  # kept if a later round runs out of time
        for name in kids:
            procs[name][1].send(("quit",)); procs[name][0].join()
        for name in "W1J":
            if name in procs:
                procs[name][1].svc.close()
        print(json.dumps(out), flush=True)
        return
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
