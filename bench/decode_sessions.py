"""Does a split H.264 decode's speed depend on the decoder sessions it got? One clip on GPU 0, decoded with fresh NVDEC
sessions several times over (the pool dropped, its decoders destroyed, then made again): the median ms of each set of
sessions. Sessions made together (both at the first split decode) or apart (the main one first, in a decode with the
split off; the helper later). Done in this process, then in a spawned child.

    python3 bench/decode_sessions.py h264_1080p_gop250 6 7     # clip (bench/media.py), session sets, decodes per set

Run from the repository root; prints one JSON line per process.
"""
import gc, json, os, sys
import multiprocessing as mp

sys.path.insert(0, "bench")


def sets(data, idx, n_sets, n_dec, apart):
    import torch, mmprep
    from mmprep.config import settings
    from mmprep.decode import video_nvdec
    from util import median, wall_ms

    def split(on):
        os.environ["MMPREP_NVDEC_SPLIT"] = "1" if on else "0"
        settings.cache_clear()

    out = []
    for _ in range(n_sets):
        video_nvdec._pool = None
        gc.collect()
        torch.cuda.synchronize()
        if apart:
            split(False)
            mmprep.decode_video(data, indices=idx, device="cuda:0")
        split(True)
        mmprep.decode_video(data, indices=idx, device="cuda:0")
        ms = []
        for _ in range(n_dec):
            ms.append(wall_ms(lambda: mmprep.decode_video(data, indices=idx, device="cuda:0")))
        st = video_nvdec.get_pool().stats()
        out.append({"median": median(ms), "min": round(min(ms), 1), "max": round(max(ms), 1),
                    "created": st["created"]})
    return out


def run(data, idx, n_sets, n_dec):
    return {"together": sets(data, idx, n_sets, n_dec, False), "apart": sets(data, idx, n_sets, n_dec, True)}


def child(conn, data, idx, n_sets, n_dec):
    import torch
    torch.cuda.set_device(0)
    conn.send(run(data, idx, n_sets, n_dec))


def main():
    from media import clip_path
    from util import sample32_of
    clip, n_sets, n_dec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = clip_path(clip).read_bytes()
    idx = sample32_of(data)
    print(json.dumps({"clip": clip, "process": "parent", **run(data, idx, n_sets, n_dec)}), flush=True)
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=child, args=(b, data, idx, n_sets, n_dec), daemon=True)
    p.start()
    print(json.dumps({"clip": clip, "process": "child", **a.recv()}), flush=True)
    p.join()


if __name__ == "__main__":
    main()
