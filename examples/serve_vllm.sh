#!/usr/bin/env bash
# Serve a Qwen2.5-VL model with media decoded on the GPU by mmprep (needs a GPU and `pip install "mmprep[vllm]"`).
#   VLLM_VIDEO_LOADER_BACKEND=mmprep : videos on NVDEC, the model's own frame sampling kept
#   VLLM_MEDIA_CONNECTOR=mmprep      : images on nvJPEG too
#   --mm-ipc-gpu-memory-gb           : frontend GPU budget mmprep's decoded frames are counted against
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
export VLLM_VIDEO_LOADER_BACKEND=mmprep VLLM_MEDIA_CONNECTOR=mmprep
exec vllm serve "$MODEL" \
  --media-io-kwargs '{"video": {"device": "cuda:0", "frames_on": "host"}}' \
  --mm-ipc-gpu-memory-gb 2 \
  --limit-mm-per-prompt '{"image": 4, "video": 1}' "$@"
# frames_on=host hands host frames to vLLM's CPU processor (the default deployment); with an
# encode-only instance and --mm-processor-device cuda, use "frames_on": "device".
