"""Writing mp4 files with PyAV, for the demo set, the tests and the loading benchmark.

They all need real H.264 mp4s (the format of the Kinetics files) so that decoding is exercised the
way real data exercises it, and none of them may download anything.
"""

import av
import numpy as np

__all__ = ["write_video"]


def write_video(path, frames, fps=30, crf=18, gop=None, preset="veryfast"):
    """Write ``frames`` (uint8 ``[T, H, W, 3]`` RGB, even H and W) as an H.264 mp4 at ``fps``.

    ``gop`` is the keyframe interval (None: libx264's default, as for typical downloads).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video needs uint8 [T, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 in yuv420p needs even frame sizes, got {width}x{height}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        options = {"crf": str(crf), "preset": preset}
        if gop is not None:
            options["g"] = str(gop)
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
