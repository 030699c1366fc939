"""Tests of the synthetic captioned-video generator and the video-folder datasets (diffusers_evdit.data)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_evdit.data import (
    BACKGROUNDS,
    COLORS,
    HELDOUT_COMBOS,
    MOTIONS,
    SHAPES,
    CaptionAttributes,
    ObjectAttributes,
    ObjectSpec,
    SceneSpec,
    SyntheticVideoDataset,
    SyntheticVideoStream,
    VideoFolderDataset,
    caption,
    caption_vocabulary,
    collate_videos,
    frames_to_tensor,
    heldout_prompts,
    is_heldout,
    parse_caption,
    render,
    sample_scene,
    save_video,
    save_video_folder,
    tensor_to_frames,
    trajectory,
    video_grid,
)

T, H, W = 29, 128, 128


def color_mask(frames: np.ndarray, color: str) -> np.ndarray:
    """Pixels exactly equal to a palette colour, (T, H, W) bool (hard-edged rendering)."""
    return (frames == np.array(COLORS[color], np.uint8)).all(-1)


def colour_set(frames: np.ndarray) -> set[tuple[int, int, int]]:
    """Distinct RGB triples of a uint8 video."""
    packed = np.unique(frames.reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1]))
    return {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in packed}


def centroids(mask: np.ndarray) -> np.ndarray:
    """(T, 2) pixel centroid (x, y) using pixel centres at +0.5."""
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        out.append((xs.mean() + 0.5, ys.mean() + 0.5))
    return np.array(out)


# ---------------------------------------------------------------------------
# determinism, shapes, ranges
# ---------------------------------------------------------------------------


def test_sampling_and_rendering_are_deterministic():
    for seed in range(5):
        a, b = sample_scene(seed), sample_scene(seed)
        assert a == b
        np.testing.assert_array_equal(render(a), render(b))
        np.testing.assert_array_equal(render(a, antialias=3), render(b, antialias=3))
    assert len({sample_scene(s).caption() for s in range(50)}) > 20


def test_dataset_items_depend_only_on_seed_and_index():
    ds = SyntheticVideoDataset(num_samples=6, seed=3)
    ds2 = SyntheticVideoDataset(num_samples=100, seed=3)
    other = SyntheticVideoDataset(num_samples=6, seed=4)
    for i in (0, 5):
        a, b = ds[i], ds2[i]
        assert a["caption"] == b["caption"] and a["scene"] == b["scene"]
        assert torch.equal(a["video"], b["video"])
    assert [ds[i]["caption"] for i in range(6)] != [other[i]["caption"] for i in range(6)]
    assert ds[-1]["caption"] == ds[5]["caption"]
    with pytest.raises(IndexError):
        ds[6]
    # the unlimited stream yields the same items in index order
    items = list(SyntheticVideoStream(seed=3, max_items=3))
    assert [it["caption"] for it in items] == [ds[i]["caption"] for i in range(3)]
    assert torch.equal(items[2]["video"], ds[2]["video"])


def test_dataset_shapes_and_ranges():
    item = SyntheticVideoDataset(num_samples=2, seed=0)[1]
    video = item["video"]
    assert video.shape == (3, T, H, W) and video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert item["caption"] == item["scene"].caption()
    # defaults give >= 8 latent frames and >= 64 tokens per latent frame for a
    # 4x temporal / 8x spatial VAE with patch size 2
    assert (T - 1) // 4 + 1 >= 8 and (H // 16) * (W // 16) >= 64
    small = SyntheticVideoDataset(num_samples=1, num_frames=9, height=48, width=80)[0]["video"]
    assert small.shape == (3, 9, 48, 80)
    frames = render(item["scene"])
    assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(tensor_to_frames(frames_to_tensor(frames)), frames)
    np.testing.assert_array_equal(tensor_to_frames(video), frames)


def test_collate_with_dataloader():
    loader = torch.utils.data.DataLoader(
        SyntheticVideoDataset(num_samples=4, num_frames=5, height=32, width=32), batch_size=2, collate_fn=collate_videos
    )
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 5, 32, 32)
    assert len(batch["caption"]) == 2 and isinstance(batch["scene"][0], SceneSpec)


# ---------------------------------------------------------------------------
# rendered pixels agree with the spec / caption
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("motion", ["left", "right", "up", "down"])
@pytest.mark.parametrize("shape", SHAPES)
def test_object_moves_in_captioned_direction_by_speed(motion, shape):
    start = {"left": (0.7, 0.5), "right": (0.3, 0.5), "up": (0.5, 0.7), "down": (0.5, 0.3)}[motion]
    obj = ObjectSpec(shape, "blue", motion, x=start[0], y=start[1], size=0.12, speed=0.35)
    frames = render(SceneSpec((obj,), "light"), T, H, W)
    assert parse_caption(caption(SceneSpec((obj,), "light"))).objects[0].motion == motion
    c = centroids(color_mask(frames, "blue"))
    disp = c[-1] - c[0]
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[motion]
    expected = 0.35 * np.array([W * dx, H * dy])  # speed * frames in pixels/frame
    np.testing.assert_allclose(disp, expected, atol=1.5)
    assert obj.pixels_per_frame(T, H, W) * (T - 1) == pytest.approx(0.35 * W)
    # monotone motion along the axis (up to rasterisation jitter)
    axis = 0 if dx else 1
    steps = np.diff(c[:, axis]) * (dx + dy)
    assert (steps > -0.75).all()


def test_sampled_linear_motion_matches_speed_and_caption():
    checked = 0
    for seed in range(120):
        scene = sample_scene(seed, num_objects=1, split="all")
        obj = scene.objects[0]
        if obj.motion not in ("left", "right", "up", "down") or obj.shape == "triangle":
            continue
        c = centroids(color_mask(render(scene), obj.color))
        np.testing.assert_allclose(c, trajectory(obj, T, H, W), atol=0.75)
        sign = 1 if obj.motion in ("right", "down") else -1
        axis = 0 if obj.motion in ("left", "right") else 1
        assert sign * (c[-1, axis] - c[0, axis]) == pytest.approx(obj.speed * (W, H)[axis], abs=1.5)
        assert obj.speed >= 0.25  # a clearly visible motion
        checked += 1
    assert checked > 20


def test_rendered_colours_are_the_prompted_colours_and_objects_stay_visible():
    for seed in range(40):
        scene = sample_scene(seed, split="all")
        frames = render(scene)
        bg = np.array(BACKGROUNDS[scene.background], np.uint8)
        attrs = parse_caption(scene.caption())
        prompted = {o.color for o in attrs.objects}
        assert colour_set(frames) == {tuple(int(v) for v in bg)} | {tuple(COLORS[c]) for c in prompted}
        for obj in scene.objects:
            area = color_mask(frames, obj.color).reshape(T, -1).sum(1)
            r = obj.size * min(H, W)
            full = {"circle": math.pi * r * r, "square": 4 * r * r, "triangle": 2 * r * r}[obj.shape]
            # fully visible (not clipped, not occluded) in every frame
            np.testing.assert_allclose(area, full, rtol=0.15)


def test_antialiased_rendering_blends_edges_only():
    scene = sample_scene(7, num_objects=1)
    hard, soft = render(scene), render(scene, antialias=4)
    assert np.abs(hard.astype(int) - soft.astype(int)).mean() < 2.0
    assert len(colour_set(soft)) > 2


def test_bouncing_reverses_and_stays_inside():
    found = 0
    for seed in range(400):
        scene = sample_scene(seed, num_objects=1, split="all")
        obj = scene.objects[0]
        if obj.motion != "bouncing":
            continue
        mask = color_mask(render(scene), obj.color)
        axis = 0 if obj.heading in ("left", "right") else 1
        p = centroids(mask)[:, axis] / (W, H)[axis]
        # a reversal: the path covers clearly more than the net displacement
        assert (p.max() - p.min()) - abs(p[-1] - p[0]) > 0.2
        assert mask.reshape(T, -1).sum(1).min() > 0.85 * mask.reshape(T, -1).sum(1).max()
        found += 1
        if found == 10:
            break
    assert found == 10


def test_still_objects_do_not_move():
    obj = ObjectSpec("triangle", "green", "still", x=0.4, y=0.6, size=0.1)
    frames = render(SceneSpec((obj,), "gray"))
    assert (frames == frames[0]).all()


# ---------------------------------------------------------------------------
# captions, vocabulary, held-out split
# ---------------------------------------------------------------------------


def test_caption_parse_roundtrip():
    for seed in range(500):
        scene = sample_scene(seed, split="all")
        text = caption(scene)
        attrs = parse_caption(text)
        assert attrs == scene.attributes()
        assert caption(attrs) == text
        assert len(attrs.objects) == len(scene.objects)
        for o, a in zip(scene.objects, attrs.objects):
            assert (o.color, o.shape, o.motion) == (a.color, a.shape, a.motion)
            assert o.color in text and o.shape in text
    assert parse_caption("  A Red Circle moving left on a dark background. ") == CaptionAttributes(
        (ObjectAttributes("red", "circle", "left"),), "dark"
    )
    two = "a red circle moving left and a blue square moving up on a light background"
    assert parse_caption(two).objects[1] == ObjectAttributes("blue", "square", "up")
    for bad in ("a red circle", "a purple circle moving left on a dark background", "hello on a dark background"):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_vocabulary_covers_all_captions():
    vocab = caption_vocabulary()
    assert vocab == sorted(set(vocab))
    words = set()
    for seed in range(1000):
        words.update(sample_scene(seed, split="all").caption().split())
    assert words <= set(vocab)
    assert set(COLORS) | set(SHAPES) | set(BACKGROUNDS) <= set(vocab)


def test_heldout_combos_never_in_train_split():
    heldout = set(HELDOUT_COMBOS)
    seen_pairs: set[tuple[str, str]] = set()
    for seed in range(2000):
        scene = sample_scene(seed, split="train")
        for o in scene.objects:
            assert (o.color, o.shape, o.motion) not in heldout
            seen_pairs.update({("cs", o.color + o.shape), ("sm", o.shape + o.motion), ("cm", o.color + o.motion)})
        assert not is_heldout(scene)
    # every pair of attributes still occurs in training (compositional split)
    expected = (
        {("cs", c + s) for c, s in itertools.product(COLORS, SHAPES)}
        | {("sm", s + m) for s, m in itertools.product(SHAPES, MOTIONS)}
        | {("cm", c + m) for c, m in itertools.product(COLORS, MOTIONS)}
    )
    assert seen_pairs == expected
    for seed in range(300):
        scene = sample_scene(seed, split="heldout")
        assert any((o.color, o.shape, o.motion) in heldout for o in scene.objects)


def test_heldout_prompts():
    prompts = heldout_prompts()
    assert len(prompts) >= 16
    assert prompts == heldout_prompts()  # fixed
    assert len({c for c, _ in prompts}) == len(prompts)
    covered = set()
    for text, scene in prompts:
        assert text == scene.caption()
        triples = {(o.color, o.shape, o.motion) for o in parse_caption(text).objects}
        assert triples & set(HELDOUT_COMBOS)
        covered |= triples & set(HELDOUT_COMBOS)
        assert len({o.color for o in scene.objects}) == len(scene.objects)
    assert covered == set(HELDOUT_COMBOS)


def test_scene_dict_roundtrip_and_validation():
    scene = sample_scene(11, num_objects=2)
    assert SceneSpec.from_dict(scene.to_dict()) == scene
    with pytest.raises(ValueError):
        ObjectSpec("hexagon", "red", "left", 0.5, 0.5, 0.1, 0.3)
    with pytest.raises(ValueError):
        SceneSpec((), "dark")
    with pytest.raises(ValueError):
        sample_scene(0, split="test")


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


def test_save_gif_and_grid(tmp_path):
    frames = render(sample_scene(0), 9, 32, 48)
    path = tmp_path / "clip.gif"
    save_video(frames, path, fps=8)
    with Image.open(path) as im:
        assert im.n_frames == 9 and im.size == (48, 32)
    save_video(frames.astype(np.float32) / 255.0, tmp_path / "clip2.gif")
    grid = video_grid([frames] * 3, ncols=2, pad=1)
    assert grid.shape == (9, 2 * 32 + 3, 2 * 48 + 3, 3)
    np.testing.assert_array_equal(grid[:, 1:33, 1:49], frames)
    with pytest.raises(ValueError):
        save_video(frames, tmp_path / "clip.avi")
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError):
            save_video(frames, tmp_path / "clip.mp4")


# ---------------------------------------------------------------------------
# evaluation splits: validation for choices, test for reported numbers
# ---------------------------------------------------------------------------


def test_validation_and_test_prompts_never_overlap():
    from diffusers_evdit.data import SPLITS, eval_prompts, prompt_split

    test, val = eval_prompts(96), eval_prompts(96, split="validation")
    test_caps, val_caps = [c for c, _ in test], [c for c, _ in val]
    assert len(set(test_caps)) == len(set(val_caps)) == 96  # distinct prompts
    assert not set(test_caps) & set(val_caps)
    assert all(prompt_split(c) == "test" for c in test_caps) and all(prompt_split(c) == "validation" for c in val_caps)
    assert all(s.is_heldout and s.caption() == c for c, s in test + val)
    # another seed gives other scenes but never crosses the split
    other = eval_prompts(32, split="validation", seed=7)
    assert other != val[:32] and not set(c for c, _ in other) & set(test_caps)
    # seeded and prefix-stable
    assert eval_prompts(10) == test[:10]
    assert sorted(SPLITS) == ["test", "validation"]
    with pytest.raises(ValueError, match="split"):
        eval_prompts(2, split="train")


def test_prompt_split_partitions_heldout_captions_evenly():
    from diffusers_evdit.data import prompt_split

    caps = {sample_scene(np.random.default_rng([3, i]), split="heldout").caption() for i in range(400)}
    share = sum(prompt_split(c) == "test" for c in caps) / len(caps)
    assert 0.35 < share < 0.65


def test_video_folder_dataset_layouts_and_errors(tmp_path):
    ds = SyntheticVideoDataset(3, num_frames=9, height=32, width=32)
    folder = save_video_folder(ds, tmp_path / "meta")
    vf = VideoFolderDataset(folder, num_frames=5, height=16, width=24, frame_stride=2)
    item = vf[1]
    assert len(vf) == 3 and item["video"].shape == (3, 5, 16, 24) and item["caption"] == ds[1]["caption"]
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    # videos.txt + prompts.txt, and sidecar captions
    pair = tmp_path / "pair"
    (pair / "clips").mkdir(parents=True)
    side = tmp_path / "side" / "videos"
    side.mkdir(parents=True)
    for i in range(2):
        frames = ((ds[i]["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        save_video(frames, pair / "clips" / f"{i}.gif")
        save_video(frames, side / f"{i}.gif")
        (side / f"{i}.txt").write_text(ds[i]["caption"])
    (pair / "videos.txt").write_text("clips/0.gif\nclips/1.gif\n")
    (pair / "prompts.txt").write_text(f"{ds[0]['caption']}\n{ds[1]['caption']}\n")
    for root in (pair, side.parent):
        vf = VideoFolderDataset(root, num_frames=9, height=32, width=32)
        assert [vf[i]["caption"] for i in range(2)] == [ds[0]["caption"], ds[1]["caption"]]
        assert np.abs(vf[0]["video"].numpy() - ds[0]["video"].numpy()).mean() < 0.05  # GIF palette only
    with pytest.raises(ValueError, match="frames"):
        VideoFolderDataset(pair, num_frames=13, height=32, width=32)[0]
    (side / "2.gif").write_bytes((side / "0.gif").read_bytes())
    with pytest.raises(ValueError, match="no caption file"):
        VideoFolderDataset(side.parent)
    mp4 = tmp_path / "mp4"
    mp4.mkdir()
    (mp4 / "a.mp4").write_bytes(b"")
    (mp4 / "a.txt").write_text("a red circle moving left on a dark background")
    try:
        import imageio  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="imageio"):
            VideoFolderDataset(mp4, num_frames=9, height=32, width=32)[0]
