"""Tests of the analytic video metrics (diffusers_evdit.metrics) against ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffusers_evdit.data import (
    COLORS,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    eval_prompts,
    heldout_prompts,
    render,
    sample_scene,
)
from diffusers_evdit.metrics import (
    VIDEO_FEATURE_DIM,
    MetricConfig,
    as_frames,
    classify_color,
    classify_motion,
    classify_shape,
    evaluate,
    evaluate_video,
    frechet_distance,
    frechet_distance_gaussians,
    frechet_video_feature_distance,
    video_features,
)

ACCURACIES = ("color_accuracy", "shape_accuracy", "motion_accuracy")
START = {"left": (0.7, 0.5), "right": (0.3, 0.5), "up": (0.5, 0.7), "down": (0.5, 0.3), "still": (0.4, 0.6)}


def make_scene(shape="circle", color="red", motion="left", background="dark", speed=0.4) -> SceneSpec:
    """A single-object scene built explicitly from attributes."""
    if motion == "bouncing":
        obj = ObjectSpec(shape, color, "bouncing", x=0.5, y=0.45, size=0.12, speed=1.2, heading="right")
    else:
        x, y = START[motion]
        obj = ObjectSpec(shape, color, motion, x=x, y=y, size=0.12, speed=0.0 if motion == "still" else speed)
    return SceneSpec((obj,), background)


def noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames / 255.0 + rng.normal(0.0, sigma, frames.shape), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# ground truth scores perfectly
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("motion", ["left", "right", "up", "down", "still", "bouncing"])
def test_ground_truth_single_object_scores_perfectly(motion):
    for shape, bg in zip(SHAPES, ("dark", "gray", "light")):
        scene = make_scene(shape, "yellow" if bg == "light" else "magenta", motion, bg)
        s = evaluate_video(render(scene), scene.caption())
        assert all(getattr(s, k) == 1.0 for k in ACCURACIES), s
        assert s.detected_motions == (motion,) and s.detected_shapes == (shape,)
        assert s.temporal_flickering == 1.0
        assert s.subject_consistency > 0.9 and s.motion_smoothness > 0.85
        assert s.prompt_alignment == 1.0 and s.final_score > 0.85
        assert all(0.0 <= v <= 1.0 for v in s.as_dict().values())


def test_ground_truth_sampled_scenes_score_perfectly():
    scenes = [sample_scene(i, split="all") for i in range(8)] + [s for _, s in heldout_prompts()[:6]]
    videos = [render(s) for s in scenes]
    for scene, video in zip(scenes, videos):
        s = evaluate_video(video, scene)
        assert all(getattr(s, k) == 1.0 for k in ACCURACIES), (scene.caption(), s)
        assert s.final_score > 0.85
    res = evaluate(videos, [s.caption() for s in scenes])
    assert res["num_videos"] == len(scenes)
    assert res["color_accuracy"] == res["shape_accuracy"] == res["motion_accuracy"] == 1.0
    assert res["final_score"] > 0.93


def test_accepts_uint8_float_torch_and_antialiased():
    scene = make_scene("triangle", "cyan", "down", "gray")
    frames = render(scene)
    ref = evaluate_video(frames, scene).as_dict()
    assert evaluate_video(frames.astype(np.float32) / 255.0, scene).as_dict() == pytest.approx(ref)
    assert evaluate_video(torch.from_numpy(frames), scene).as_dict() == pytest.approx(ref)
    np.testing.assert_allclose(as_frames(torch.from_numpy(frames)), frames / 255.0, atol=1e-6)
    aa = evaluate_video(render(scene, antialias=4), scene)
    assert all(getattr(aa, k) == 1.0 for k in ACCURACIES)


def test_mild_noise_keeps_semantic_accuracy():
    scene = sample_scene(3, num_objects=2, split="all")
    s = evaluate_video(noisy(render(scene), 0.04), scene)
    assert all(getattr(s, k) == 1.0 for k in ACCURACIES), s


# ---------------------------------------------------------------------------
# wrong attributes drop the matching accuracy to 0
# ---------------------------------------------------------------------------


def test_wrong_colour_drops_colour_accuracy():
    scene = make_scene("square", "red", "right", "gray")
    video = render(scene)
    for other in COLORS:
        if other == "red":
            continue
        s = evaluate_video(video, scene.caption().replace("red", other))
        assert s.color_accuracy == 0.0
        assert s.shape_accuracy == 1.0 and s.motion_accuracy == 1.0


def test_wrong_colour_of_one_of_two_objects():
    a = ObjectSpec("circle", "red", "right", x=0.25, y=0.25, size=0.1, speed=0.4)
    b = ObjectSpec("square", "blue", "up", x=0.75, y=0.85, size=0.1, speed=0.3)
    scene = SceneSpec((a, b), "light")
    video = render(scene)
    assert evaluate_video(video, scene).color_accuracy == 1.0
    s = evaluate_video(video, scene.caption().replace("blue", "yellow"))
    assert s.color_accuracy == 0.5


@pytest.mark.parametrize("true_shape,prompt_shape", [(a, b) for a in SHAPES for b in SHAPES if a != b])
def test_wrong_shape_drops_shape_accuracy(true_shape, prompt_shape):
    prompt = make_scene(prompt_shape, "green", "up", "dark")
    video = render(dataclasses.replace(prompt, objects=(dataclasses.replace(prompt.objects[0], shape=true_shape),)))
    s = evaluate_video(video, prompt)
    assert s.shape_accuracy == 0.0
    assert s.color_accuracy == 1.0 and s.motion_accuracy == 1.0


@pytest.mark.parametrize("motion", ["left", "right", "up", "down"])
def test_reversed_motion_drops_motion_accuracy(motion):
    scene = make_scene("circle", "blue", motion, "light")
    video = render(scene)
    s = evaluate_video(video[::-1], scene)
    assert s.motion_accuracy == 0.0
    assert s.color_accuracy == 1.0 and s.shape_accuracy == 1.0


def test_still_versus_moving_prompt():
    moving, still = make_scene(motion="left"), make_scene(motion="still")
    assert evaluate_video(render(still), moving).motion_accuracy == 0.0
    assert evaluate_video(render(moving), still).motion_accuracy == 0.0
    bouncing = make_scene(motion="bouncing")
    assert evaluate_video(render(bouncing), moving).motion_accuracy == 0.0
    assert evaluate_video(render(moving), bouncing).motion_accuracy == 0.0


def test_missing_object_scores_zero():
    scene = make_scene("circle", "red", "left", "dark")
    blank = np.broadcast_to(render(scene)[:, :2, :2].mean((1, 2), keepdims=True), (29, 128, 128, 3))
    s = evaluate_video(blank.astype(np.uint8), scene)
    assert s.color_accuracy == s.shape_accuracy == s.motion_accuracy == 0.0
    assert s.detected_motions == ("none",) and s.final_score < 0.2


# ---------------------------------------------------------------------------
# temporal quality dimensions
# ---------------------------------------------------------------------------


def test_dynamic_degree():
    still = evaluate_video(render(make_scene(motion="still")), make_scene(motion="still"))
    moving = evaluate_video(render(make_scene(motion="right")), make_scene(motion="right"))
    assert still.dynamic_degree == pytest.approx(0.0, abs=1e-9)
    assert moving.dynamic_degree > 0.5
    assert still.dynamic_agreement == 1.0 and moving.dynamic_agreement > 0.5
    slow = make_scene(motion="right", speed=0.05)
    assert 0.0 < evaluate_video(render(slow), slow).dynamic_degree < moving.dynamic_degree


def test_noise_lowers_temporal_flickering():
    scene = make_scene("square", "magenta", "down", "gray")
    frames = render(scene)
    clean = evaluate_video(frames, scene).temporal_flickering
    light = evaluate_video(noisy(frames, 0.03), scene).temporal_flickering
    heavy = evaluate_video(noisy(frames, 0.08), scene).temporal_flickering
    assert clean == 1.0 > light > heavy


def test_shuffled_frames_lower_motion_smoothness():
    scene = make_scene("circle", "red", "right", "dark", speed=0.5)
    frames = render(scene)
    smooth = evaluate_video(frames, scene).motion_smoothness
    perm = np.random.default_rng(0).permutation(len(frames))
    shuffled = evaluate_video(frames[perm], scene).motion_smoothness
    assert smooth > 0.9 and shuffled < smooth - 0.3


def test_shape_change_lowers_subject_consistency():
    scene = make_scene("circle", "red", "right", "dark")
    frames = render(scene)
    ref = evaluate_video(frames, scene).subject_consistency
    square = render(dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], shape="square"),)))
    alternating = frames.copy()
    alternating[1::2] = square[1::2]
    assert evaluate_video(alternating, scene).subject_consistency < ref - 0.1


def test_classifiers():
    assert classify_shape(np.pi / 4) == "circle"
    assert classify_shape(0.97) == "square" and classify_shape(0.55) == "triangle"
    for name, rgb in COLORS.items():
        assert classify_color(np.array(rgb) / 255.0) == name
    t = np.linspace(0, 1, 29)
    const = np.full(29, 0.5)
    assert classify_motion(np.stack([0.8 - 0.4 * t, const], 1)) == "left"
    assert classify_motion(np.stack([const, 0.2 + 0.4 * t], 1)) == "down"
    assert classify_motion(np.stack([const, const + 0.01 * np.sin(9 * t)], 1)) == "still"
    assert classify_motion(np.stack([0.5 + 0.3 * np.sin(2 * np.pi * t), const], 1)) == "bouncing"
    with pytest.raises(ValueError):
        evaluate([render(make_scene())], [])
    with pytest.raises(ValueError):
        evaluate_video(render(make_scene()), "not a caption")


def test_custom_weights_of_the_legacy_score():
    scene = make_scene()
    cfg = MetricConfig(weights=(("color_accuracy", 1.0),))
    s = evaluate_video(render(scene), scene.caption().replace("red", "blue"), cfg)
    assert s.legacy_final_score == 0.0 and s.final_score == 0.0
    assert evaluate_video(render(scene), scene, cfg).legacy_final_score == 1.0


# ---------------------------------------------------------------------------
# the final score punishes degenerate videos
# ---------------------------------------------------------------------------

DIRECTIONAL = ("left", "right", "up", "down")


def _degenerate_cases(video, seed):
    rng = np.random.default_rng(seed)
    return {
        "noise": rng.integers(0, 256, video.shape, dtype=np.uint8),
        "blank": np.broadcast_to(video[:1, :1, :1], video.shape).copy(),
        "frozen": np.repeat(video[:1], len(video), axis=0),
        "shuffled": video[rng.permutation(len(video))],
        "reversed": video[::-1],
    }


def test_degenerate_videos_score_far_below_real_ones():
    """Several test prompts x seeds: noise and blank near 0.1, frozen and shuffled at most half of the real video,
    time-reversed far below it. Frozen needs a moving object and reversed a directional one (a still or bouncing
    object looks the same backwards), so those cases use such prompts only."""
    reals, checked = [], {"noise": 0, "blank": 0, "frozen": 0, "shuffled": 0, "reversed": 0}
    for caption, scene in eval_prompts(10):
        video = render(scene)
        real = evaluate_video(video, caption).final_score
        assert real > 0.85, caption
        reals.append(real)
        motions = {o.motion for o in scene.objects}
        for seed in (0, 1):
            for case, bad in _degenerate_cases(video, seed).items():
                if case == "frozen" and motions <= {"still"}:
                    continue
                if case in ("reversed", "shuffled") and (seed or not motions & set(DIRECTIONAL)):
                    continue
                score = evaluate_video(bad, caption).final_score
                limit = {"noise": 0.1, "blank": 0.1, "frozen": 0.5 * real, "shuffled": 0.5 * real,
                         "reversed": 0.1}[case]
                assert score <= limit, (case, caption, score, real)
                checked[case] += 1
    assert np.mean(reals) > 0.93
    assert min(checked.values()) >= 4, checked


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_frames_of_a_moving_object_score_at_most_half(seed):
    for motion in ("left", "down", "bouncing"):
        scene = make_scene("square", "cyan", motion, "dark", speed=0.45)
        video = render(scene)
        real = evaluate_video(video, scene).final_score
        shuffled = evaluate_video(video[np.random.default_rng(seed).permutation(len(video))], scene).final_score
        assert shuffled <= 0.5 * real, (motion, shuffled, real)


def test_legacy_score_did_not_punish_degenerate_videos():
    """The old weighted mean gave a frozen or reversed clip most of the credit; the final score gives none."""
    scene = make_scene("circle", "red", "right", "gray")
    video = render(scene)
    for bad in (video[::-1], np.repeat(video[:1], len(video), axis=0)):
        s = evaluate_video(bad, scene)
        assert s.legacy_final_score > 0.65 and s.final_score == 0.0


def test_final_score_is_alignment_times_temporal_quality():
    a = ObjectSpec("circle", "red", "right", x=0.25, y=0.25, size=0.1, speed=0.4)
    b = ObjectSpec("square", "blue", "up", x=0.75, y=0.85, size=0.1, speed=0.3)
    scene = SceneSpec((a, b), "light")
    s = evaluate_video(render(scene), scene)
    assert s.prompt_alignment == 1.0 and s.final_score == pytest.approx(s.temporal_quality) and s.final_score > 0.9
    # one of the two objects moves the wrong way: the prompt is not followed, whatever the other object does
    wrong = SceneSpec((a, dataclasses.replace(b, motion="down", y=0.15)), "light")
    w = evaluate_video(render(wrong), scene)
    assert w.color_accuracy == w.shape_accuracy == 1.0 and w.motion_accuracy == 0.5
    assert w.prompt_alignment == 0.0 and w.final_score == 0.0
    # a wrong shape in half of the frames halves the alignment of that object
    square = render(dataclasses.replace(scene, objects=(dataclasses.replace(a, shape="square"), b)))
    half = render(scene).copy()
    half[::2] = square[::2]
    h = evaluate_video(half, scene)
    assert h.prompt_alignment == pytest.approx(np.sqrt(14 / 29), abs=1e-9)
    assert h.final_score == pytest.approx(h.prompt_alignment * h.temporal_quality)


# ---------------------------------------------------------------------------
# Frechet distance and features
# ---------------------------------------------------------------------------


def test_frechet_identity_and_symmetry():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 1.0
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-8)
    assert frechet_distance(x, y) > 1.0


def test_frechet_matches_closed_forms():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance_gaussians(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # proportional full covariances: tr(S + cS - 2 sqrt(c) S)
    a = rng.normal(size=(5, 5))
    s = a @ a.T + 0.1 * np.eye(5)
    c = 2.5
    expected = np.sum((mu1 - mu2) ** 2) + (1 + c - 2 * np.sqrt(c)) * np.trace(s)
    assert frechet_distance_gaussians(mu1, s, mu2, c * s) == pytest.approx(expected, rel=1e-8)
    # sample-based estimate converges to the closed form
    x = rng.normal(size=(20000, 3)) * np.sqrt([1.0, 2.0, 0.5])
    y = rng.normal(size=(20000, 3)) * np.sqrt([2.0, 1.0, 0.5]) + np.array([1.0, 0.0, -1.0])
    closed = 2.0 + (3 - 2 * np.sqrt(2)) * 2
    assert frechet_distance(x, y) == pytest.approx(closed, abs=0.08)


def test_video_features_separate_real_from_corrupted_sets():
    real_a = [render(sample_scene(i), 17, 64, 64) for i in range(24)]
    real_b = [render(sample_scene(100 + i), 17, 64, 64) for i in range(24)]
    corrupted = [noisy(v, 0.15, seed=i)[np.random.default_rng(i).permutation(17)] for i, v in enumerate(real_b)]
    f = video_features(real_a[0])
    assert f.shape == (VIDEO_FEATURE_DIM,) and np.isfinite(f).all()
    np.testing.assert_array_equal(f, video_features(real_a[0]))
    assert frechet_video_feature_distance(real_a, real_a) == pytest.approx(0.0, abs=1e-8)
    d_real = frechet_video_feature_distance(real_a, real_b)
    d_bad = frechet_video_feature_distance(real_a, corrupted)
    assert d_bad > 3 * d_real
