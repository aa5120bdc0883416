import numpy as np
import pytest
import torch

from dataset_media import FPS, HEIGHT, NUM_VIDEO_FRAMES, WIDTH, gray_ramp_video, truncate
from revvit.datasets.bad_samples import BadSampleError
from revvit.datasets.decoder import clip_frame_indices, decode_clip, eval_view_start


@pytest.fixture(scope="module")
def ramp(tmp_path_factory):
    return gray_ramp_video(tmp_path_factory.mktemp("dec") / "ramp.mp4")


def test_clip_is_uint8_thwc_and_holds_the_wanted_frames(ramp):
    clip, indices = decode_clip(ramp, num_frames=4, sampling_rate=2, target_fps=FPS, start_fraction=0.0)
    assert clip.dtype == torch.uint8 and tuple(clip.shape) == (4, HEIGHT, WIDTH, 3)
    assert indices.tolist() == [0, 2, 4, 6]
    levels = clip.float().mean(dim=(1, 2, 3))
    # Each sampled frame is ~20 gray levels brighter than the one before (10 per file frame).
    assert torch.all((levels[1:] - levels[:-1] - 20).abs() < 4), levels


def test_target_fps_rescales_the_step(ramp):
    # The file plays at 30 fps; sampling every 2 frames "at 15 fps" means every 4 file frames.
    _, indices = decode_clip(ramp, num_frames=4, sampling_rate=2, target_fps=FPS / 2, start_fraction=0.0)
    assert indices.tolist() == [0, 4, 8, 12]


def test_views_are_uniform_and_deterministic(ramp):
    # 24 frames, span 6 -> free room 17; 3 views start at 0, 17/3, 34/3 (PySlowFast spacing).
    starts = [int(decode_clip(ramp, 4, 2, FPS, eval_view_start(v, 3))[1][0]) for v in range(3)]
    assert starts == [0, 6, 11]
    again = [int(decode_clip(ramp, 4, 2, FPS, eval_view_start(v, 3))[1][0]) for v in range(3)]
    assert starts == again
    # With offsets the last view ends on the last frame.
    assert int(decode_clip(ramp, 4, 2, FPS, eval_view_start(2, 3, use_offset=True))[1][-1]) == NUM_VIDEO_FRAMES - 1


def test_decoded_pixels_match_the_decoded_index(ramp):
    clip, indices = decode_clip(ramp, 4, 2, FPS, start_fraction=1.0)
    assert indices.tolist() == [17, 19, 21, 23]
    levels = clip.float().mean(dim=(1, 2, 3)).numpy()
    expected = np.array(indices) * 10.0  # frame t was written at gray level 10 * t
    assert np.abs(levels - expected).max() < 4, (levels, expected)


def test_random_start_stays_inside_the_video(ramp):
    for _ in range(5):
        _, indices = decode_clip(ramp, 4, 2, FPS)
        assert 0 <= indices[0] and indices[-1] <= NUM_VIDEO_FRAMES - 1 and np.all(np.diff(indices) == 2)


def test_short_video_is_bad_in_training_and_padded_for_evaluation(ramp):
    with pytest.raises(BadSampleError, match="shorter than one clip"):
        decode_clip(ramp, num_frames=8, sampling_rate=4, target_fps=FPS)
    clip, indices = decode_clip(ramp, num_frames=8, sampling_rate=4, target_fps=FPS, start_fraction=0.0, allow_short=True)
    assert clip.shape[0] == 8 and indices.tolist() == [0, 4, 8, 12, 16, 20, 23, 23]


def test_missing_garbage_and_truncated_files_are_bad_samples(tmp_path):
    with pytest.raises(BadSampleError, match="missing.mp4"):
        decode_clip(tmp_path / "missing.mp4", 4, 2, FPS, 0.0)
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 50)
    with pytest.raises(BadSampleError, match="garbage.mp4"):
        decode_clip(tmp_path / "garbage.mp4", 4, 2, FPS, 0.0)
    # moov at the end (the default): a cut file cannot even be opened.
    cut = truncate(gray_ramp_video(tmp_path / "cut.mp4"), 0.6)
    with pytest.raises(BadSampleError, match="cut.mp4"):
        decode_clip(cut, 4, 2, FPS, 0.0)
    # moov first: the cut file opens and announces 24 frames, but the late ones are gone.
    cut_fast = truncate(gray_ramp_video(tmp_path / "cut_fast.mp4", faststart=True, noise=20), 0.5)
    decode_clip(cut_fast, 4, 2, FPS, 0.0)  # the start is still there
    with pytest.raises(BadSampleError, match="truncated or damaged"):
        decode_clip(cut_fast, 4, 2, FPS, 1.0)


def test_frame_index_arithmetic():
    assert clip_frame_indices(100, 16, 4.0, 0.0).tolist() == list(range(0, 64, 4))
    # A 60 fps file at target 30 fps: step 8 file frames.
    assert clip_frame_indices(300, 4, 8.0, 1.0).tolist() == [275, 283, 291, 299]
