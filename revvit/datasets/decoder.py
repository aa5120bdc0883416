"""Decoding one clip from a video file with PyAV.

A clip is ``num_frames`` frames taken every ``sampling_rate`` frames of the video as if it played
at ``target_fps``: on a 60 fps file, 16x4 at 30 fps takes every 8th frame. Where the clip starts is
a fraction of the free room ``n_frames - 1 - span``: random in training, fixed for evaluation views.

Only the stretch of the file that holds the clip is decoded (seek to the keyframe before it, decode
until its last frame), and only the frames the clip uses are converted to RGB. Every failure
(missing file, not a video, damaged stream, fewer frames than the header promised, video shorter
than the clip) comes out as ``BadSampleError`` naming the file, for the skip-and-count policy.
"""

import math
import random

import av
import numpy as np
import torch

from .bad_samples import BadSampleError

__all__ = ["clip_frame_indices", "decode_clip", "eval_view_start"]


def eval_view_start(view, num_views, use_offset=False):
    """Start fraction of evaluation view ``view`` of ``num_views`` uniformly spaced clips.

    PySlowFast's default spacing (``delta * i / n``) starts the first clip at frame 0 and never
    reaches the end; ``use_offset`` (DATA.USE_OFFSET_SAMPLING) spreads the clips over the whole
    video instead, and centres a single one.
    """
    if use_offset:
        return 0.5 if num_views == 1 else view / (num_views - 1)
    return view / num_views


def clip_frame_indices(num_video_frames, num_frames, step, start_fraction, allow_short=False, path=""):
    """File frame indices of one clip.

    ``step`` is the distance between sampled frames in file frames (``sampling_rate * fps /
    target_fps``); ``start_fraction`` in [0, 1] places the clip in the free room, None draws it at
    random. A video shorter than the clip span raises ``BadSampleError`` unless ``allow_short``,
    where indices past the end repeat the last frame (PySlowFast's behaviour, kept for evaluation so
    that every test video is scored).
    """
    span = (num_frames - 1) * step
    room = num_video_frames - 1 - span
    if room < 0 and not allow_short:
        raise BadSampleError(
            path,
            f"video has {num_video_frames} frames, shorter than one clip ({num_frames} frames every "
            f"{step:.3g} file frames need {math.floor(span) + 1})",
        )
    room = max(room, 0.0)
    start = room * (random.random() if start_fraction is None else start_fraction)
    positions = start + step * np.arange(num_frames)
    return np.clip(np.round(positions), 0, num_video_frames - 1).astype(np.int64)


# What damaged or missing files raise inside PyAV (FFmpegError subclasses ValueError or OSError);
# anything else is a bug in our code and must not be counted as bad data.
_DATA_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)

# Header frame counts and timestamps can be off by a few frames (variable frame rate, edit lists);
# a wanted frame may be replaced by a decoded one this close to it. A truncated file misses far more.
_FRAME_TOLERANCE = 4


def _pick_frames(decoded, indices, num_video_frames, path):
    """RGB arrays of the decoded frames nearest to ``indices`` (each converted once), and their indices."""
    if not decoded:
        raise BadSampleError(path, f"no frame of the stretch {int(indices[0])}..{int(indices[-1])} could be decoded (truncated or damaged file?)")
    available = np.array(sorted(decoded))
    right = np.minimum(np.searchsorted(available, indices), len(available) - 1)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(indices - available[left]) <= np.abs(available[right] - indices), available[left], available[right])
    if np.abs(nearest - indices).max() > _FRAME_TOLERANCE:
        raise BadSampleError(
            path,
            f"wanted frames {int(indices[0])}..{int(indices[-1])} of {num_video_frames}, but the decodable "
            f"frames of that stretch are {int(available[0])}..{int(available[-1])} (truncated or damaged file?)",
        )
    rgb = {}
    clip = np.stack([rgb.setdefault(int(j), decoded[int(j)].to_ndarray(format="rgb24")) for j in nearest])
    return clip, nearest


def _frame_rate(stream, path):
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise BadSampleError(path, "video stream has no frame rate")
    return float(rate)


def _decode_range(container, stream, fps, first, last, path):
    """RGB frames with file index in [first, last], keyed by index; seeks to the keyframe before ``first``."""
    start_time = stream.start_time or 0
    time_base = float(stream.time_base)
    if first > 0:
        container.seek(start_time + int(first / fps / time_base), backward=True, any_frame=False, stream=stream)
    frames = {}
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                raise BadSampleError(path, "frames without timestamps")
            index = round((frame.pts - start_time) * time_base * fps)
            if index > last:
                break
            if index >= first:
                frames[index] = frame
    except av.FFmpegError:
        # A damaged stretch ends the decodable part; the frames before it are sound, and
        # _pick_frames decides whether they cover the clip.
        pass
    return frames


def _decode_all(container, stream):
    """Every frame in file order, for containers that do not say how many frames they hold."""
    return dict(enumerate(container.decode(stream)))


def decode_clip(path, num_frames, sampling_rate, target_fps, start_fraction=None, allow_short=False, threads=False):
    """One clip of ``path`` as uint8 ``[T, H, W, 3]`` RGB and the file frame indices it holds.

    ``start_fraction`` None samples the start at random (training); a number in [0, 1] fixes it
    (evaluation views, see ``eval_view_start``).
    """
    path = str(path)
    try:
        container = av.open(path)
    except _DATA_ERRORS as err:
        raise BadSampleError(path, f"cannot open as a video ({err.__class__.__name__}: {err})") from None
    try:
        with container:
            if not container.streams.video:
                raise BadSampleError(path, "no video stream")
            stream = container.streams.video[0]
            if threads:
                stream.thread_type = "AUTO"
            fps = _frame_rate(stream, path)
            step = sampling_rate * fps / target_fps
            num_video_frames = stream.frames
            if num_video_frames > 0:
                indices = clip_frame_indices(num_video_frames, num_frames, step, start_fraction, allow_short, path)
                decoded = _decode_range(container, stream, fps, int(indices[0]), int(indices[-1]), path)
            else:
                decoded = _decode_all(container, stream)
                if not decoded:
                    raise BadSampleError(path, "no frame could be decoded (truncated or damaged file?)")
                indices = clip_frame_indices(len(decoded), num_frames, step, start_fraction, allow_short, path)
            clip, indices = _pick_frames(decoded, indices, num_video_frames, path)
    except BadSampleError:
        raise
    except _DATA_ERRORS as err:
        raise BadSampleError(path, f"decoding failed ({err.__class__.__name__}: {err})") from None
    return torch.from_numpy(clip), indices
