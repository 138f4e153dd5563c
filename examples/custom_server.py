"""A small custom server: mmprep decodes and preprocesses media, vLLM's AsyncLLM generates.

    pip install -e ".[vllm]" fastapi uvicorn        # from the mmprep checkout
    python3 examples/custom_server.py --model Qwen/Qwen2.5-VL-3B-Instruct
    curl -F video=@clip.mp4 -F prompt="What happens here?" localhost:8000/describe

The video is decoded on NVDEC by mmprep; the request carries the GPU frames and vLLM's metadata.
vLLM's processor keeps its prompt and placeholder logic while mmprep's processor hook
(``MMPREP_PROCESSOR=on``, set below) turns the frames into Qwen2/2.5-VL pixel values on the same GPU.
Without a GPU, frames are decoded on the CPU and the hook runs its torch path.
Bad media answers 400 (mmprep.MediaError), never a crashed server.
"""

import argparse
import os

import mmprep

PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n"


def build_app(model: str, device: str, load_format: str = "auto", max_model_len: int | None = None):
    os.environ.setdefault("MMPREP_PROCESSOR", "on")  # read when vLLM loads the mmprep plugin
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, limit_mm_per_prompt={"video": 1},
                                                       load_format=load_format, max_model_len=max_model_len))
    app = FastAPI()
    counter = iter(range(1 << 62))

    @app.post("/describe")
    async def describe(video: UploadFile = File(...), prompt: str = Form("Describe the video.")):
        data = await video.read()
        try:
            clip = mmprep.decode_video(data, num_frames=16, device=device)
        except mmprep.MediaError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        # GPU frames straight to vLLM's processor: the hook resizes/normalizes/patchifies them on that GPU.
        request = {"prompt": PROMPT.format(q=prompt),
                   "multi_modal_data": {"video": [(clip.frames, clip.vllm_metadata())]}}
        text = ""
        async for out in engine.generate(request, SamplingParams(max_tokens=128), request_id=str(next(counter))):
            text = out.outputs[0].text
        return {"text": text, "frames": clip.indices, "decoder": clip.backend}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-VL-3B-Instruct")
    ap.add_argument("--device", default="auto", help="where mmprep decodes: auto, cuda, cuda:N, cpu")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--load-format", default="auto", help="vLLM's load format; dummy: random weights (a weightless test folder)")
    ap.add_argument("--max-model-len", type=int, default=None)
    a = ap.parse_args()
    import uvicorn

    uvicorn.run(build_app(a.model, a.device, a.load_format, a.max_model_len), host="0.0.0.0", port=a.port)


if __name__ == "__main__":
    main()
