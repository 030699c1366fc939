"""Attention Tile diagnostics: analytic statistics, model capture, plots + JSON, CLI, input helpers."""

import json
import math
import time

import numpy as np
import pytest
import torch

from diffusers_evdit import MaskPlan, TileLayout, apply_mask_plan, get_mask_plan
from diffusers_evdit.analysis import (
    attention_mass_overlap,
    instrument,
    latent_size,
    load_transformer,
    profile_attention,
    random_inputs,
    record_transformer_inputs,
    tile_statistics,
)
from diffusers_evdit.cli import main
from diffusers_evdit.processors import family_for
from diffusers_evdit.tiny import TINY_FAMILIES, tiny_inputs, tiny_transformer


def _frame_of(layout):
    return [None] * layout.num_text_tokens + [f for f in range(layout.num_frames) for _ in range(layout.tokens_per_frame)]


def _quadratic_qk(layout, gammas, batch=1):
    """q.k = -gamma (i - j)^2 between video tokens of frames i, j; text q = k = 0 (score 0 with everything)."""
    frames = _frame_of(layout)
    n, h = len(frames), len(gammas)
    q = torch.zeros(batch, h, n, 4, dtype=torch.float64)
    k = torch.zeros(batch, h, n, 4, dtype=torch.float64)
    for pos, f in enumerate(frames):
        if f is None:
            continue
        for head, g in enumerate(gammas):
            q[:, head, pos, :3] = torch.tensor([2 * g * f, -g * f * f, -g], dtype=torch.float64)
            k[:, head, pos, :3] = torch.tensor([f, 1.0, f * f], dtype=torch.float64)
    return q, k


def _closed_form(layout, gammas):
    """Per head: probability of one (frame-i query, frame-j key) element, and of one text key, from the formula."""
    F, T, n_text = layout.num_frames, layout.tokens_per_frame, layout.num_text_tokens
    i, j = np.meshgrid(np.arange(F), np.arange(F), indexing="ij")
    p, p_text = [], []
    for g in gammas:
        e = np.exp(-g * (i - j) ** 2)
        z = T * e.sum(1, keepdims=True) + n_text
        p.append(e / z)
        p_text.append(1.0 / z[:, 0])
    return np.array(p), np.array(p_text)  # [H, F, F], [H, F]


def test_tile_statistics_match_closed_form():
    layout = TileLayout(num_frames=5, tokens_per_frame=6, num_text_tokens=3, text_position="first")
    gammas = [0.3, 1.1]
    q, k = _quadratic_qk(layout, gammas, batch=2)
    stats = tile_statistics(q, k, layout, scale=1.0, query_chunk=7)  # chunks straddle frames

    p, p_text = _closed_form(layout, gammas)
    F = layout.num_frames
    m = p.mean(0)  # the tile mean of an element, averaged over heads
    off = ~np.eye(F, dtype=bool)
    assert np.allclose(stats["tile_map"], m, rtol=1e-9)
    assert stats["diag_offdiag_ratio"] == pytest.approx(np.diag(m).mean() / m[off].mean(), rel=1e-9)
    dist = np.abs(np.subtract.outer(np.arange(F), np.arange(F)))
    assert stats["mass_by_distance"] == pytest.approx([m[dist == d].mean() / np.diag(m).mean() for d in range(F)])
    # blocks are constant, so ||B[i,d] - B[i,0]||^2 = T^2 (p[i,d] - p[i,0])^2, summed over heads
    expected = []
    for d in range(1, F):
        rows = [i for i in range(F) if i not in (0, d)]
        expected.append(np.mean([math.sqrt(((p[:, i, d] - p[:, i, 0]) ** 2).sum() / (p[:, i, 0] ** 2).sum())
                                 for i in rows]))
    assert stats["locality_curve"] == pytest.approx(expected, rel=1e-9)
    assert stats["text_mass"] == pytest.approx(3 * p_text.mean(), rel=1e-9)


def test_in_frame_boost_gives_ratio_e_to_the_a():
    # score a within a frame, 0 across frames and with text: the diagonal tiles are exactly e^a times the others
    layout = TileLayout(num_frames=4, tokens_per_frame=5, num_text_tokens=2, text_position="last")
    a = 1.7
    frames = _frame_of(TileLayout(4, 5))  # video first, text last
    q = torch.zeros(1, 1, layout.seq_len, 4)
    for pos, f in enumerate(frames):
        q[0, 0, pos, f] = math.sqrt(a)
    stats = tile_statistics(q, q.clone(), layout, scale=1.0)
    assert stats["diag_offdiag_ratio"] == pytest.approx(math.exp(a), rel=1e-5)
    assert stats["locality_curve"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # off-diagonal tiles all alike


def test_sampled_queries_and_key_padding():
    layout = TileLayout(num_frames=4, tokens_per_frame=6, num_text_tokens=3, text_position="first")
    q, k = _quadratic_qk(layout, [0.5])
    full = tile_statistics(q, k, layout, scale=1.0)
    sampled = tile_statistics(q, k, layout, scale=1.0, max_queries=8)  # >= 1 query per frame; rows of a frame agree
    assert sampled["diag_offdiag_ratio"] == pytest.approx(full["diag_offdiag_ratio"], rel=1e-9)
    # hide 2 of the 3 text keys: 1 text key with score 0 stays
    kpm = torch.ones(1, layout.seq_len, dtype=torch.bool)
    kpm[0, :2] = False
    masked = tile_statistics(q, k, layout, key_padding_mask=kpm, scale=1.0)
    e = np.exp(-0.5 * np.subtract.outer(np.arange(4), np.arange(4)) ** 2)
    assert masked["text_mass"] == pytest.approx(np.mean(1.0 / (6 * e.sum(1) + 1)), rel=1e-9)


def _reference_overlap(pa, pb, level):
    """Loop-by-loop definition: per row, the fewest largest keys holding `level` of the mass; Jaccard; mean."""
    out = []
    for ra, rb in zip(pa, pb):
        sets = []
        for r in (ra, rb):
            order = np.argsort(-r)
            total, chosen = 0.0, set()
            for idx in order:
                chosen.add(int(idx))
                total += r[idx]
                if total >= level * r.sum():
                    break
            sets.append(chosen)
        out.append(len(sets[0] & sets[1]) / len(sets[0] | sets[1]))
    return float(np.mean(out))


def test_mass_overlap_known_answers():
    layout = TileLayout(num_frames=3, tokens_per_frame=4)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 12, 8, generator=g, dtype=torch.float64), torch.randn(1, 2, 12, 8, generator=g, dtype=torch.float64)
    assert attention_mass_overlap(q, k, q, k, layout) == {"0.9": 1.0, "0.95": 1.0, "0.99": 1.0}

    # A attends (almost) only to frame 0, B only to frame 1: the top-mass sets are disjoint
    qa = torch.zeros(1, 1, 12, 3, dtype=torch.float64)
    qa[..., 0] = 30.0
    qb = torch.zeros_like(qa)
    qb[..., 1] = 30.0
    kk = torch.zeros_like(qa)
    for pos in range(12):
        kk[0, 0, pos, pos // 4] = 1.0
    assert attention_mass_overlap(qa, kk, qb, kk, layout, scale=1.0)["0.9"] == 0.0

    # random inputs against the definition written out
    q2, k2 = torch.randn(1, 2, 12, 8, generator=g, dtype=torch.float64), torch.randn(1, 2, 12, 8, generator=g, dtype=torch.float64)
    got = attention_mass_overlap(q, k, q2, k2, layout, query_chunk=5)
    pa = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1).reshape(-1, 12).numpy()
    pb = torch.softmax(q2 @ k2.transpose(-1, -2) / math.sqrt(8), -1).reshape(-1, 12).numpy()
    for level in (0.9, 0.95, 0.99):
        assert got[f"{level:g}"] == pytest.approx(_reference_overlap(pa, pb, level), abs=1e-12)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_model_capture_uniform_attention_known_answer(family):
    # zero the query projection of one layer: every video query attends uniformly to all valid keys
    t = tiny_transformer(family, num_layers=2)
    x = tiny_inputs(t)  # HunyuanVideo: 2 of 7 text tokens are padding
    layer = 1
    module = family_for(t).attention_modules(t)[layer][1]
    with torch.no_grad():
        module.to_q.weight.zero_()
        module.to_q.bias.zero_() if module.to_q.bias is not None else None
    prof = profile_attention(t, [x, x], layers=[layer])
    stats = prof.layers[layer]
    n_video = 6 * 16
    n_text = {"cogvideox": 7, "wan": 0, "hunyuan_video": 5}[family]
    assert stats["diag_offdiag_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert stats["mass_by_distance"] == pytest.approx([1.0] * 6, rel=1e-5)
    assert stats["locality_curve"] == pytest.approx([0.0] * 5, abs=1e-5)
    if n_text:
        assert stats["text_mass"] == pytest.approx(n_text / (n_video + n_text), rel=1e-5)
    else:
        assert stats["text_mass"] is None
    assert np.allclose(stats["tile_map"], 1.0 / (n_video + n_text), rtol=1e-5)


def test_profile_same_input_twice_is_fully_data_independent_and_restores_plan():
    t = tiny_transformer("cogvideox", num_layers=3)
    apply_mask_plan(t, MaskPlan([2, None, 1]))
    x = tiny_inputs(t, seed=3)
    with torch.no_grad():
        before = t(**x).sample
    prof = profile_attention(t, [x, x], layers=[0, 2])
    assert sorted(prof.layers) == [0, 2]
    for stats in prof.layers.values():
        assert stats["overlap"] == {"0.9": 1.0, "0.95": 1.0, "0.99": 1.0}
    assert get_mask_plan(t).layers == [2, None, 1]
    with torch.no_grad():
        assert torch.equal(t(**x).sample, before)


def test_profile_writes_plots_and_json_quickly(tmp_path):
    pytest.importorskip("matplotlib")
    start = time.perf_counter()
    for family in TINY_FAMILIES:
        t = tiny_transformer(family)
        inputs = [random_inputs(t, 6, 8, 8, timestep=ts, seed=s, text_tokens=7) for ts in (200, 800) for s in (0, 1)]
        prof = profile_attention(t, inputs, max_queries=40)
        out = tmp_path / family
        paths = prof.save(out)
        n = len(prof.layers)
        assert len(paths) == 1 + n + 1
        for path in paths[1:]:
            assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["meta"]["pairs"] == [[0, 1], [2, 3]]
        assert summary["meta"]["timesteps"] == [200.0, 200.0, 800.0, 800.0]
        assert len(summary["layers"]) == n
        for stats in summary["layers"].values():
            assert len(stats["tile_map"]) == 6 and len(stats["locality_curve"]) == 5
            assert set(stats["overlap"]) == {"0.9", "0.95", "0.99"}
            assert all(0.0 <= v <= 1.0 for v in stats["overlap"].values())
    assert time.perf_counter() - start < 60


def test_profile_cli(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "prof"
    assert main(["profile", "--model", "tiny:wan", "--out", str(out), "--timesteps", "300,800", "--layers", "1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "diag/off" in text and "summary.json" in text
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["layers"]) == ["1"] and summary["meta"]["pairs"] == [[0, 1], [2, 3]]
    assert (out / "heatmap_layer1.png").exists() and (out / "curves.png").exists()
    assert main(["profile", "--model", "tiny:wan", "--out", str(out), "--layers", "7", "--no-plots"]) == 2
    assert "Unknown layer index 7" in capsys.readouterr().err


def test_profile_takes_the_size_a_model_folder_is_meant_for(tmp_path, capsys):
    """Without --frames/--height/--width, a pipeline folder is profiled at its generation defaults; a flag given
    overrides only its own value."""
    from diffusers_evdit import EfficientVDiTPipeline
    from diffusers_evdit.analysis import latent_size
    from diffusers_evdit.tiny import tiny_pipeline

    folder = tmp_path / "model"
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"))
    pipe.set_generation_defaults(num_frames=9, height=32, width=48)
    pipe.save_pretrained(folder)
    for flags, size in (([], (9, 32, 48)), (["--frames", "5"], (5, 32, 48))):
        assert main(["profile", "--model", str(folder), "--out", str(tmp_path / "p"), "--layers", "0", "--no-plots",
                     "--no-progress", *flags]) == 0
        frames, h, w = latent_size(pipe.transformer, *size)
        p_t, p_h, p_w = pipe.transformer.config.patch_size
        assert f"{frames // p_t} latent frames x {(h // p_h) * (w // p_w)} tokens" in capsys.readouterr().out


def test_profile_errors():
    t = tiny_transformer("wan", num_layers=2)
    x = tiny_inputs(t)
    with pytest.raises(ValueError, match="Unknown layer index 5.*indices 0..1"):
        profile_attention(t, [x], layers=[5])
    with pytest.raises(ValueError, match="empty"):
        profile_attention(t, [x], layers=[])
    with pytest.raises(ValueError, match="non-empty list"):
        profile_attention(t, [])
    with pytest.raises(ValueError, match="disjoint"):
        profile_attention(t, [x, x, x], pairs=[(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="levels"):
        profile_attention(t, [x], levels=(0.0,))
    assert get_mask_plan(t) is None


def test_instrument_sees_every_layer_in_plan_order():
    t = tiny_transformer("hunyuan_video", num_layers=2)  # 2 double-stream + 2 single-stream blocks
    seen = []
    with torch.no_grad(), instrument(t, lambda p, q, k, v, layout, kpm: seen.append((p.layer_index, layout.seq_len))):
        t(**tiny_inputs(t))
    assert seen == [(i, 96 + 7) for i in range(4)]
    assert get_mask_plan(t) is None


def test_input_helpers(tmp_path):
    cog, wan = tiny_transformer("cogvideox"), tiny_transformer("wan")
    assert latent_size(cog, 49, 480, 720) == (13, 60, 90)
    assert latent_size(wan, 81, 480, 832) == (21, 60, 104)
    # random_inputs reproduce the tiny inputs of the same latent size and seed for CogVideoX (same RoPE, same draws)
    a, b = random_inputs(cog, 6, 8, 8, timestep=500, seed=0), tiny_inputs(cog)
    for key in ("hidden_states", "encoder_hidden_states"):
        assert torch.equal(a[key], b[key])
    assert all(torch.allclose(x, y) for x, y in zip(a["image_rotary_emb"], b["image_rotary_emb"]))
    # recorded calls replay to the same output
    x = tiny_inputs(wan, seed=2)
    with torch.no_grad(), record_transformer_inputs(wan) as calls:
        out = wan(x["hidden_states"], x["timestep"], x["encoder_hidden_states"]).sample
    assert len(calls) == 1 and set(calls[0]) == {"hidden_states", "timestep", "encoder_hidden_states"}
    with torch.no_grad():
        assert torch.equal(wan(**calls[0]).sample, out)
    # a saved pipeline folder loads by path; the full-size shape has CogVideoX-5B's 5.57B parameters
    wan.save_pretrained(tmp_path / "pipe" / "transformer")
    loaded = load_transformer(str(tmp_path / "pipe"))
    with torch.no_grad():
        assert torch.allclose(loaded(**x).sample, wan(**x).sample, atol=1e-5)  # same weights
    big = load_transformer("shape:cogvideox-5b", device="meta", dtype=torch.bfloat16)
    assert 5.5e9 < sum(p.numel() for p in big.parameters()) < 5.65e9
    with pytest.raises(ValueError, match="Unknown model shape"):
        load_transformer("shape:nope")
    with pytest.raises(ValueError, match="Unknown tiny family"):
        load_transformer("tiny:nope")
