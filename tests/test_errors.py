import pytest

import mmprep
from mmprep.source import read_source

from .hostile import cases

CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_media_raises_media_error_naming_the_cause(name):
    data, kwargs, err = CASES[name]
    with pytest.raises(err) as e:
        mmprep.decode_video(data, device="cpu", **kwargs)
    assert isinstance(e.value, ValueError) and isinstance(e.value, mmprep.MediaError)
    assert len(str(e.value)) > 10


def test_messages_name_the_cause():
    msg = {n: "" for n in CASES}
    for name, (data, kwargs, _) in CASES.items():
        try:
            mmprep.decode_video(data, device="cpu", **kwargs)
        except mmprep.MediaError as e:
            msg[name] = str(e)
    assert "empty" in msg["empty"]
    assert "truncated" in msg["truncated_faststart"]
    assert "no video stream" in msg["no_video_stream"]
    assert "max_pixels" in msg["over_max_pixels"]
    assert "max_frames" in msg["over_max_frames"]


def test_oversized_input_refused_before_reading():
    with pytest.raises(mmprep.MediaTooLargeError, match="max_bytes"):
        read_source(b"x" * 101, max_bytes=100)


def test_auto_device_also_raises_media_error():
    data, kwargs, err = CASES["random"]
    with pytest.raises(mmprep.MediaError):
        mmprep.decode_video(data, device="auto", **kwargs)


def test_200_bad_inputs_in_a_row_then_a_good_one():
    names = sorted(CASES)
    for i in range(200):
        data, kwargs, err = CASES[names[i % len(names)]]
        with pytest.raises(err):
            mmprep.decode_video(data, device="cpu", **kwargs)
    good = CASES["over_max_frames"][0]
    assert mmprep.decode_video(good, num_frames=4, device="cpu").frames.shape[0] == 4


def test_decoder_stage_error_is_reached_and_is_corrupt_media():
    """An input the probe accepts fails inside the decoder, and still raises CorruptMediaError."""
    from mmprep.probe import probe

    data, _, _ = CASES["payload_zeroed"]
    probe(data, max_pixels=1 << 30)  # the container is fine
    with pytest.raises(mmprep.CorruptMediaError, match="decode failed|decoder produced"):
        mmprep.decode_video(data, num_frames=4, device="cpu")


@pytest.mark.parametrize("call", ["video", "images", "preprocess"])
def test_bad_device_is_one_error_naming_the_choices(call):
    """One parser behind every public ``device`` argument."""
    import torch

    fn = {"video": lambda: mmprep.decode_video(b"x" * 100, device="tpu"),
          "images": lambda: mmprep.decode_images([b"x" * 100], device="tpu"),
          "preprocess": lambda: mmprep.preprocess(images=[torch.zeros(3, 28, 28, dtype=torch.uint8)], device="tpu")}[call]
    with pytest.raises(ValueError, match='device must be "auto", "cpu", "cuda", "cuda:N" or a torch.device'):
        fn()
