"""A weightless Qwen2-VL model folder (config, tokenizer, processor configs) for vLLM's real processor."""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {chr(c): i for i, c in enumerate(range(32, 127))}
    for w in ["user", "assistant", "system", "Describe", "this", "video", "image", "\n"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=" "))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL)
    tok.save(str(path / "tokenizer.json"))


def _tokenizer_files(path: Path) -> tuple[dict[str, int], int]:
    """Create ``path`` with the tokenizer and its config; (special token ids, vocab size for the model)."""
    path.mkdir(parents=True, exist_ok=True)
    _tokenizer(path)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional_special_tokens": SPECIAL[1:],
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    }))
    return {t: tok.token_to_id(t) for t in SPECIAL}, tok.get_vocab_size() + 8


def make_tiny_qwen2_vl(path: Path) -> Path:
    """Write the folder; returns it. Token ids of the special tokens follow the vocabulary."""
    ids, vocab_size = _tokenizer_files(path)
    config = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 1,
        "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "vocab_size": vocab_size, "torch_dtype": "float32",
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, "num_heads": 2,
                          "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
    }
    (path / "config.json").write_text(json.dumps(config))
    proc = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "do_rescale": True, "do_normalize": True,
            "do_resize": True, "rescale_factor": 1 / 255}
    (path / "preprocessor_config.json").write_text(json.dumps(
        {**proc, "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}))
    (path / "video_preprocessor_config.json").write_text(json.dumps(
        {**proc, "video_processor_type": "Qwen2VLVideoProcessor", "processor_class": "Qwen2VLProcessor"}))
    return path


def make_tiny_qwen3_vl(path: Path) -> Path:
    """A weightless Qwen3-VL folder: same synthetic tokenizer, Qwen3-VL processor configs (patch 16)."""
    ids, vocab_size = _tokenizer_files(path)
    config = {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "text_config": {
            "model_type": "qwen3_vl_text", "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "torch_dtype": "float32",
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            "rope_theta": 5000000.0,
        },
        "vision_config": {
            "model_type": "qwen3_vl_vision", "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": 64, "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
        },
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config))
    half = [0.5, 0.5, 0.5]
    image = {"size": {"shortest_edge": 65536, "longest_edge": 16777216}, "patch_size": 16, "temporal_patch_size": 2,
             "merge_size": 2, "image_mean": half, "image_std": half, "image_processor_type": "Qwen2VLImageProcessor",
             "processor_class": "Qwen3VLProcessor"}
    video = {"size": {"shortest_edge": 4096, "longest_edge": 25165824}, "patch_size": 16, "temporal_patch_size": 2,
             "merge_size": 2, "image_mean": half, "image_std": half, "fps": 2, "min_frames": 4, "max_frames": 768,
             "do_sample_frames": True, "video_processor_type": "Qwen3VLVideoProcessor",
             "processor_class": "Qwen3VLProcessor"}
    (path / "preprocessor_config.json").write_text(json.dumps(image))
    (path / "video_preprocessor_config.json").write_text(json.dumps(video))
    return path
