#!/usr/bin/env bash
# Serve a Qwen2.5-VL model with media decoded on the GPU by mmprep (needs a GPU and `pip install -e ".[vllm]"` from a checkout).
#   VLLM_VIDEO_LOADER_BACKEND=mmprep : videos on NVDEC, the model's own frame sampling kept
#   VLLM_MEDIA_CONNECTOR=mmprep      : images on nvJPEG too
#   with either set, Qwen2/2.5/3-VL pixels (resize, normalize, patchify) run on the GPU too
#   --mm-ipc-gpu-memory-gb           : frontend GPU budget mmprep's frames and processor outputs count against
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
export VLLM_VIDEO_LOADER_BACKEND=mmprep VLLM_MEDIA_CONNECTOR=mmprep
exec vllm serve "$MODEL" \
  --media-io-kwargs '{"video": {"device": "cuda:0"}}' \
  --mm-ipc-gpu-memory-gb 2 \
  --limit-mm-per-prompt '{"image": 4, "video": 1}' "$@"
# frames_on (default auto) keeps frames on the GPU where mmprep's processor takes them (Qwen2/2.5/3-VL)
# and copies them to the host for other models' CPU processors; MMPREP_PROCESSOR=off turns the hook off.
# Unique videos (no repeats to cache)? Add --mm-processor-cache-gb 0: on vLLM 0.26 the processor outputs then reach
# the engine by CUDA IPC tickets instead of through host memory (MMPREP_ENGINE_IPC=auto; 0 turns it off), and
# OMP_NUM_THREADS=1 in the server's environment stops the engine process's OpenMP pool from keeping ~10 cores busy
# on a 64-core host (README, "vLLM").
