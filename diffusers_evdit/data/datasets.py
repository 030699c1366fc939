"""Torch datasets: seeded synthetic clips (map-style and streaming) and folders of real captioned videos."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .render import frames_to_tensor, render, tensor_to_frames
from .sampling import sample_scene
from .scenes import DEFAULT_HEIGHT, DEFAULT_NUM_FRAMES, DEFAULT_WIDTH, SceneSpec
from .video_io import VIDEO_EXTENSIONS, read_video_frames, save_video

# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


def _make_item(
    seed: int, index: int, split: str, num_frames: int, height: int, width: int,
    two_object_prob: float, antialias: int,
) -> dict[str, Any]:
    gen = np.random.default_rng([int(seed), int(index)])
    scene = sample_scene(gen, split=split, two_object_prob=two_object_prob, aspect_ratio=width / height)
    frames = render(scene, num_frames, height, width, antialias=antialias)
    return {"video": frames_to_tensor(frames), "caption": scene.caption(), "scene": scene, "index": int(index)}


def collate_videos(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate dataset items: stack ``video`` to ``(B, 3, T, H, W)``, keep the rest as lists.

    Example::

        >>> loader = torch.utils.data.DataLoader(SyntheticVideoDataset(4), batch_size=2, collate_fn=collate_videos)
    """
    out: dict[str, Any] = {"video": torch.stack([b["video"] for b in batch])} if "video" in batch[0] else {}
    for key in batch[0]:
        if key != "video":
            out[key] = [b[key] for b in batch]
    return out


class CaptionDataset(Dataset):
    """The captions and indices of a video dataset, without its videos: for training loops whose clean latents
    are all cached already (``--latent_cache`` of the distillation examples), so no clip is rendered or decoded.
    ``dataset`` needs a ``caption(index)`` method (:class:`SyntheticVideoDataset`, :class:`VideoFolderDataset`).

    Example::

        >>> ds = SyntheticVideoDataset(num_samples=8, seed=0)
        >>> CaptionDataset(ds)[3] == {"caption": ds[3]["caption"], "index": 3}
        True
    """

    def __init__(self, dataset: Dataset):
        if not callable(getattr(dataset, "caption", None)):
            raise TypeError(f"{type(dataset).__name__} has no caption(index) method")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        return {"caption": self.dataset.caption(index), "index": int(index)}


@dataclass
class SyntheticVideoDataset(Dataset):
    """Map-style dataset of ``num_samples`` synthetic clips; item ``i`` depends only on ``(seed, i)``.

    Each item is a dict with ``video`` (float tensor ``(3, T, H, W)`` in [-1, 1]),
    ``caption`` (str), ``scene`` (:class:`SceneSpec`) and ``index`` (int). Use
    :func:`collate_videos` with a ``DataLoader`` (scenes are not tensors).

    Example::

        >>> ds = SyntheticVideoDataset(num_samples=8, seed=0)
        >>> item = ds[3]
        >>> item["video"].shape, item["caption"] == item["scene"].caption()
        (torch.Size([3, 29, 128, 128]), True)
    """

    num_samples: int = 1000
    seed: int = 0
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    split: str = "train"
    two_object_prob: float = 0.5
    antialias: int = 1

    def __post_init__(self) -> None:
        if self.split not in ("train", "heldout", "all"):
            raise ValueError(f"unknown split {self.split!r}")

    def __len__(self) -> int:
        return self.num_samples

    def caption(self, index: int) -> str:
        """The caption of item ``index`` without rendering it (equal to ``self[index]["caption"]``)."""
        return self.scene(index % self.num_samples).caption()

    def scene(self, index: int) -> SceneSpec:
        """The scene of item ``index`` without rendering it."""
        gen = np.random.default_rng([int(self.seed), int(index)])
        return sample_scene(
            gen, split=self.split, two_object_prob=self.two_object_prob, aspect_ratio=self.width / self.height
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(index)
        index = index % self.num_samples
        return _make_item(
            self.seed, index, self.split, self.num_frames, self.height, self.width,
            self.two_object_prob, self.antialias,
        )


@dataclass
class SyntheticVideoStream(IterableDataset):
    """Unlimited stream of synthetic clips: yields item ``i = start, start+1, ...``.

    Item ``i`` equals ``SyntheticVideoDataset(seed=seed, ...)[i]`` for the same
    settings. With several ``DataLoader`` workers, worker ``w`` of ``n`` yields
    the indices ``i`` with ``i % n == w`` so no item is duplicated.
    ``max_items`` bounds the stream (``None`` = infinite).

    Example::

        >>> stream = iter(SyntheticVideoStream(seed=0, max_items=2))
        >>> next(stream)["caption"] == SyntheticVideoDataset(seed=0)[0]["caption"]
        True
    """

    seed: int = 0
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    split: str = "train"
    two_object_prob: float = 0.5
    antialias: int = 1
    start: int = 0
    max_items: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start + wid
        end = None if self.max_items is None else self.start + self.max_items
        while end is None or i < end:
            yield _make_item(
                self.seed, i, self.split, self.num_frames, self.height, self.width,
                self.two_object_prob, self.antialias,
            )
            i += nw



def _resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop ``(T, H, W, 3)`` frames to the target aspect ratio, then resize (bicubic) to ``height x width``."""
    from PIL import Image

    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    target = width / height
    if w / h > target:  # too wide
        cw, ch = max(1, round(h * target)), h
    else:
        cw, ch = w, max(1, round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    out = np.empty((t, height, width, 3), np.uint8)
    for i in range(t):
        img = Image.fromarray(frames[i, y0 : y0 + ch, x0 : x0 + cw])
        out[i] = np.asarray(img.resize((width, height), Image.BICUBIC))
    return out


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f if line.strip()]


@dataclass
class VideoFolderDataset(Dataset):
    """Map-style dataset of captioned videos in a folder; items like :class:`SyntheticVideoDataset`'s.

    Three layouts are recognised, in this order:

    1. ``metadata.jsonl`` (the Hugging Face ``videofolder`` / ``imagefolder`` convention): one JSON object a line
       with ``"file_name"`` (path relative to the folder) and ``"text"`` (or ``"caption"`` / ``"prompt"``)::

           folder/metadata.jsonl   {"file_name": "videos/0001.mp4", "text": "a red panda eating bamboo"}
           folder/videos/0001.mp4

    2. ``videos.txt`` + ``prompts.txt`` (the CogVideoX fine-tuning layout): line ``i`` of ``videos.txt`` is a path
       relative to the folder, line ``i`` of ``prompts.txt`` its caption.
    3. Sidecar captions: every video in the folder or its ``videos/`` subfolder with a ``<same name>.txt`` caption
       next to it (videos without one are an error).

    Each item has ``video`` (float ``(3, num_frames, height, width)`` in [-1, 1]: frames ``0, s, 2s, ...`` with
    ``s = frame_stride``, centre-cropped to the aspect ratio and resized), ``caption``, ``index`` and ``path``. A
    video with too few frames raises ``ValueError`` naming it. ``.gif`` needs only Pillow; other formats need
    ``imageio`` (see :func:`read_video_frames`). Use :func:`collate_videos` with a ``DataLoader``.

    Example::

        >>> folder = save_video_folder(SyntheticVideoDataset(3, num_frames=9, height=32, width=32), "/tmp/vf")
        >>> ds = VideoFolderDataset(folder, num_frames=9, height=32, width=32)
        >>> len(ds), ds[0]["video"].shape, ds[0]["caption"] == SyntheticVideoDataset(3)[0]["caption"]
        (3, torch.Size([3, 9, 32, 32]), True)
    """

    root: str
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    frame_stride: int = 1

    def __post_init__(self) -> None:
        self.root = os.fspath(self.root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"video folder {self.root!r} does not exist")
        if self.num_frames < 1 or self.frame_stride < 1:
            raise ValueError("num_frames and frame_stride must be >= 1")
        self.samples: list[tuple[str, str]] = self._index()
        if not self.samples:
            raise ValueError(f"no captioned videos found in {self.root!r}; see VideoFolderDataset for the layouts")
        for path, _ in self.samples:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{self.root}: listed video {path!r} does not exist")

    def _index(self) -> list[tuple[str, str]]:
        import json

        meta = os.path.join(self.root, "metadata.jsonl")
        if os.path.isfile(meta):
            out = []
            with open(meta, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{meta}:{n}: not valid JSON ({err})") from None
                    text = next((row[k] for k in ("text", "caption", "prompt") if k in row), None)
                    if "file_name" not in row or text is None:
                        raise ValueError(f"{meta}:{n}: each line needs 'file_name' and 'text' (or 'caption')")
                    out.append((os.path.join(self.root, row["file_name"]), str(text)))
            return out
        videos_txt, prompts_txt = os.path.join(self.root, "videos.txt"), os.path.join(self.root, "prompts.txt")
        if os.path.isfile(videos_txt) or os.path.isfile(prompts_txt):
            if not (os.path.isfile(videos_txt) and os.path.isfile(prompts_txt)):
                raise ValueError(f"{self.root}: videos.txt and prompts.txt must both exist")
            videos, prompts = _read_lines(videos_txt), _read_lines(prompts_txt)
            if len(videos) != len(prompts):
                raise ValueError(
                    f"{self.root}: videos.txt has {len(videos)} lines but prompts.txt has {len(prompts)}"
                )
            return [(os.path.join(self.root, v.strip()), p.strip()) for v, p in zip(videos, prompts)]
        out = []
        for sub in (self.root, os.path.join(self.root, "videos")):
            if not os.path.isdir(sub):
                continue
            for name in sorted(os.listdir(sub)):
                path = os.path.join(sub, name)
                if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS or not os.path.isfile(path):
                    continue
                caption_file = os.path.splitext(path)[0] + ".txt"
                if not os.path.isfile(caption_file):
                    raise ValueError(
                        f"{path} has no caption file {os.path.basename(caption_file)}; add one, or index the folder "
                        "with metadata.jsonl"
                    )
                with open(caption_file, encoding="utf-8") as f:
                    out.append((path, f.read().strip()))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def caption(self, index: int) -> str:
        """The caption of item ``index`` without reading its video."""
        return self.samples[index % len(self)][1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        path, text = self.samples[index]
        need = (self.num_frames - 1) * self.frame_stride + 1
        frames = read_video_frames(path, max_frames=need)
        if frames.shape[0] < need:
            raise ValueError(
                f"{path} has {frames.shape[0]} frames; {self.num_frames} frames with stride {self.frame_stride} "
                f"need {need}"
            )
        frames = _resize_center_crop(frames[: need : self.frame_stride], self.height, self.width)
        return {"video": frames_to_tensor(frames), "caption": text, "index": int(index), "path": path}


def save_video_folder(dataset: Sequence[Mapping[str, Any]], folder: str | os.PathLike, fps: int = 8,
                      ext: str = ".gif") -> str:
    """Write a dataset's clips as ``folder/videos/NNNNNN<ext>`` + ``folder/metadata.jsonl``; returns ``folder``.

    The result loads with :class:`VideoFolderDataset` (layout 1). Handy to export synthetic clips.

    Example::

        >>> folder = save_video_folder(SyntheticVideoDataset(2, num_frames=5, height=16, width=16), "/tmp/vf2")
        >>> sorted(os.listdir(folder))
        ['metadata.jsonl', 'videos']
    """
    import json

    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "videos"), exist_ok=True)
    rows = []
    for i in range(len(dataset)):
        item = dataset[i]
        name = f"videos/{i:06d}{ext}"
        save_video(tensor_to_frames(item["video"]), os.path.join(folder, name), fps=fps)
        rows.append({"file_name": name, "text": item["caption"]})
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return folder
