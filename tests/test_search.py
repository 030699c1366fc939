"""Mask search: greedy threshold search on a model with known local/global layers, prefix cache, budget solvers."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusers_evdit import MaskPlan, apply_mask_plan, get_mask_plan, tile_mask
from diffusers_evdit.analysis import random_inputs
from diffusers_evdit.cli import main
from diffusers_evdit.processors import TileSparseAttnProcessor
from diffusers_evdit.search import (
    BlockRunner,
    budget_search,
    estimate_search_cost,
    greedy_search,
    mask_loss_table,
    measure_mask_runtimes,
    plan_output_loss,
    plot_plan,
    sample_timesteps,
    solve_budget_exact,
    solve_budget_lagrangian,
)
from diffusers_evdit.tiny import tiny_inputs, tiny_transformer


@pytest.fixture
def intrinsic_masks(monkeypatch):
    """Make chosen layers *intrinsically local*: layer l always attends under the k_l:F-k_l mask (in the "dense"
    model too), so a trial mask k changes nothing exactly when its reference frames include layer l's, and changes
    the output otherwise. Other layers are ordinary (global) attention."""
    local: dict[int, int] = {}
    original = TileSparseAttnProcessor.tile_attention

    def tile_attention(self, q, k, v, layout, key_padding_mask=None, dense_fn=None):
        if self.layer_index not in local:
            return original(self, q, k, v, layout, key_padding_mask, dense_fn)
        mask = tile_mask(layout, local[self.layer_index], q.device) & tile_mask(layout, self.k, q.device)
        if key_padding_mask is not None:
            mask = mask[None, None] & key_padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    monkeypatch.setattr(TileSparseAttnProcessor, "tile_attention", tile_attention)
    return local


def _inputs(t, m=2, seed=0):
    return [random_inputs(t, 6, 8, 8, timestep=s, seed=seed, text_tokens=7) for s in sample_timesteps(m, seed)]


@pytest.mark.parametrize("family,local,expected", [
    # F = 6; refs(1) = {0}; refs(2) = {0, 3}; refs(4) = {0, 1, 3, 4} includes {0, 3}, refs(3) = {0, 2, 4} does not:
    # the k=2 layer passes 4, fails 3 and the search stops there (Algorithm 1), although 2 itself would pass.
    ("cogvideox", {0: 1, 2: 2}, [1, None, 4, None]),
    ("hunyuan_video", {1: 1, 2: 1}, [None, 1, 1, None]),  # a double-stream and a single-stream layer
])
@pytest.mark.parametrize("loss", ["output", "layer"])
def test_greedy_picks_sparse_for_local_and_dense_for_global_layers(intrinsic_masks, family, local, expected, loss):
    intrinsic_masks.update(local)
    t = tiny_transformer(family, num_layers=4 if family == "cogvideox" else 2)
    plan = greedy_search(t, _inputs(t), threshold=1e-9, loss=loss, progress=False)
    assert plan.layers == expected
    meta = plan.metadata
    assert meta["masks"] == [4, 3, 2, 1] and meta["complete"] and meta["method"] == "greedy-threshold"
    for layer, k in local.items():  # zero loss on every passing mask of a local layer
        assert all(v == 0.0 for kk, v in meta["trial_losses"][str(layer)].items() if int(kk) >= expected[layer])
    for layer in set(range(4)) - set(local):  # global layers fail at once
        assert list(meta["trial_losses"][str(layer)]) == ["4"] and meta["trial_losses"][str(layer)]["4"] > 1e-9
    assert get_mask_plan(t) is None


def test_prefix_cache_matches_full_forwards_and_counts_layer_forwards():
    t = tiny_transformer("wan", num_layers=3)
    inputs = _inputs(t, m=2)
    # huge threshold: every mask passes, so every (layer, mask, timestep) trial runs: the worst case
    cached = greedy_search(t, inputs, threshold=1e9, progress=False)
    naive = greedy_search(t, inputs, threshold=1e9, prefix_cache=False, progress=False)
    for layer, row in cached.metadata["trial_losses"].items():
        for k, v in row.items():
            assert v == pytest.approx(naive.metadata["trial_losses"][layer][k], rel=1e-6, abs=1e-12)
    assert cached.layers == naive.layers == [1, 1, 1]
    # L = 3 layers, M = 4 masks, m = 2 timesteps.
    # cached: dense 2*3 + advance 2*(1+1) + trials 2*4*(3+2+1) = 6 + 4 + 48 = 58
    # naive:  dense 2*3 + trials 2*4*3*3 = 6 + 72 = 78
    assert cached.metadata["layer_forwards"] == 58 and cached.metadata["naive_layer_forwards"] == 78
    assert naive.metadata["layer_forwards"] == 78
    # layer loss: cached 2*3 dense block outputs + 2*4*3 one-block trials = 30; naive (2*3 + 24) * 3 = 90
    cached_l = greedy_search(t, inputs, threshold=1e9, loss="layer", progress=False)
    naive_l = greedy_search(t, inputs, threshold=1e9, loss="layer", prefix_cache=False, progress=False)
    assert cached_l.metadata["layer_forwards"] == 30 and naive_l.metadata["layer_forwards"] == 90
    for layer, row in cached_l.metadata["trial_losses"].items():
        for k, v in row.items():
            assert v == pytest.approx(naive_l.metadata["trial_losses"][layer][k], rel=1e-6, abs=1e-12)


def test_block_runner_runs_suffix_exactly():
    t = tiny_transformer("hunyuan_video", num_layers=2)
    x = tiny_inputs(t)
    runner = BlockRunner(t)
    with torch.no_grad():
        full = runner.run(x)
        mid = runner.run(x, stop_after=2)  # output of the first single-stream block
        rest = runner.run(x, start=3, cached=mid)
    assert torch.equal(full, rest)
    assert runner.layer_forwards == 4 + 3 + 1
    with pytest.raises(ValueError, match="cached output"):
        runner.run(x, start=1)


def test_greedy_is_deterministic_under_seed_and_restores_plan():
    t = tiny_transformer("cogvideox", num_layers=2)
    apply_mask_plan(t, MaskPlan([2, 1]))
    a = greedy_search(t, _inputs(t, seed=5), threshold=3e-6, progress=False)
    b = greedy_search(t, _inputs(t, seed=5), threshold=3e-6, progress=False)
    c_inputs = _inputs(t, seed=6)
    assert a.layers == b.layers and a.metadata["trial_losses"] == b.metadata["trial_losses"]
    assert a.metadata["timesteps"] == b.metadata["timesteps"] != [x["timestep"].item() for x in c_inputs]
    assert sample_timesteps(4, 1) != sample_timesteps(4, 2)
    assert get_mask_plan(t).layers == [2, 1]


def test_search_progress_in_log_mode_prints_lines_and_the_same_plan(capsys):
    # a command whose stderr is a log file gets lines (a tqdm bar would be one long \r line there)
    t = tiny_transformer("wan", num_layers=2)
    quiet = greedy_search(t, _inputs(t, seed=5), threshold=3e-6, progress=False)
    assert capsys.readouterr().err == ""
    logged = greedy_search(t, _inputs(t, seed=5), threshold=3e-6, progress="log")
    assert logged.layers == quiet.layers
    assert "greedy mask search: " in capsys.readouterr().err
    with pytest.raises(ValueError, match="progress must be"):
        greedy_search(t, _inputs(t, seed=5), threshold=3e-6, progress="lines")


def test_greedy_interrupt_returns_partial_plan():
    t = tiny_transformer("cogvideox", num_layers=3)
    x = tiny_inputs(t)
    with torch.no_grad():
        before = t(**x).sample

    def on_trial(layer, k, loss):
        if layer == 1:
            raise KeyboardInterrupt

    plan = greedy_search(t, [x], threshold=1e9, progress=False, on_trial=on_trial)
    assert plan.layers == [1, None, None]
    assert plan.metadata["complete"] is False and plan.metadata["layers_searched"] == [0]
    assert get_mask_plan(t) is None
    with torch.no_grad():
        assert torch.equal(t(**x).sample, before)


def test_greedy_layers_subset_and_errors():
    t = tiny_transformer("wan", num_layers=2)
    x = [tiny_inputs(t)]
    plan = greedy_search(t, x, threshold=1e9, layers=[1], masks=[3, 1], progress=False)
    assert plan.layers == [None, 1] and plan.metadata["layers_searched"] == [1]
    for bad in (0, -1.0, 0.0):
        with pytest.raises(ValueError, match="threshold r must be a number > 0"):
            greedy_search(t, x, threshold=bad, progress=False)
    with pytest.raises(ValueError, match="mask list is empty"):
        greedy_search(t, x, threshold=0.1, masks=[], progress=False)
    with pytest.raises(ValueError, match="Unknown layer index 2"):
        greedy_search(t, x, threshold=0.1, layers=[2], progress=False)
    with pytest.raises(ValueError, match="dense for 6 latent frames"):
        greedy_search(t, x, threshold=0.1, masks=[6], progress=False)
    with pytest.raises(ValueError, match="Unknown loss"):
        greedy_search(t, x, threshold=0.1, loss="kl", progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        greedy_search(t, [], threshold=0.1, progress=False)
    assert get_mask_plan(t) is None


def _random_instance(rng):
    n_layers, n_opts = int(rng.integers(4, 30)), int(rng.integers(2, 8))
    runtimes = np.sort(rng.integers(1, 25, size=(n_layers, n_opts)), axis=1)[:, ::-1].astype(float)  # dense first
    losses = np.sort(rng.random((n_layers, n_opts)) * rng.random((n_layers, 1)) * 10, axis=1)
    losses[:, 0] = 0.0
    losses *= rng.random((n_layers, 1)) < 0.8  # some layers lose nothing
    lo, hi = int(runtimes.min(1).sum()), int(runtimes.max(1).sum())
    return losses, runtimes, float(rng.integers(lo, hi + 1))


def test_exact_solver_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(40):
        n_layers, n_opts = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        runtimes = rng.integers(0, 10, size=(n_layers, n_opts)).astype(float)
        losses = rng.random((n_layers, n_opts))
        budget = float(rng.integers(int(runtimes.min(1).sum()), int(runtimes.max(1).sum()) + 1))
        best = min(
            sum(losses[i, c] for i, c in enumerate(choice))
            for choice in itertools.product(range(n_opts), repeat=n_layers)
            if sum(runtimes[i, c] for i, c in enumerate(choice)) <= budget
        )
        for bins in (None, max(int(budget), 1)):  # frontier DP; grid DP (exact for integer runtimes)
            sol = solve_budget_exact(losses, runtimes, budget, bins=bins)
            assert sol.loss == pytest.approx(best) and sol.runtime <= budget


def test_lagrangian_meets_budget_and_is_within_5_percent_of_exact():
    rng = np.random.default_rng(0)
    for _ in range(60):
        losses, runtimes, budget = _random_instance(rng)
        exact = solve_budget_exact(losses, runtimes, budget)
        lag = solve_budget_lagrangian(losses, runtimes, budget)
        assert lag.runtime <= budget
        assert lag.loss <= exact.loss * 1.05 + 1e-12
        assert lag.dual_bound <= exact.loss + 1e-9 and lag.gap >= -1e-9  # a valid lower bound


def test_solver_errors():
    with pytest.raises(ValueError, match="below the sparsest plan's runtime 3"):
        solve_budget_lagrangian([[0.0, 1.0], [0.0, 1.0]], [[4.0, 1.0], [4.0, 2.0]], budget=2.5)
    with pytest.raises(ValueError, match="below the sparsest"):
        solve_budget_exact([[0.0, 1.0]], [[4.0, 1.0]], budget=0.5)
    with pytest.raises(ValueError, match="same shape|one shape"):
        solve_budget_exact([[0.0, 1.0]], [[4.0]], budget=5.0)


RUNTIMES = {"dense": 10.0, "4": 8.0, "3": 6.0, "2": 4.0, "1": 2.0}


@pytest.mark.parametrize("solver", ["lagrangian", "exact"])
def test_budget_search_on_known_model(intrinsic_masks, solver):
    # layer 0 is local at k=1 (every mask loses nothing), layer 2 at k=2 (only k in {4, 2} lose nothing),
    # layers 1 and 3 are global. Budget 2 + 10 + 4 + 10 = 26: the unique zero-loss plan is [1, dense, 2, dense].
    intrinsic_masks.update({0: 1, 2: 2})
    t = tiny_transformer("cogvideox", num_layers=4)
    inputs = _inputs(t)
    plan = budget_search(t, inputs, budget_s=26.0, runtimes=RUNTIMES, solver=solver, progress=False)
    assert plan.layers == [1, None, 2, None]
    meta = plan.metadata
    assert meta["total_loss"] == 0.0 and meta["achieved_runtime_s"] == 26.0 and meta["dense_runtime_s"] == 40.0
    table = np.array(meta["loss_table"])  # columns k = 4, 3, 2, 1
    assert (table[0] == 0).all() and table[2, 0] == 0 and table[2, 2] == 0 and (table[2, [1, 3]] > 0).all()
    assert (table[[1, 3]] > 0).all()
    # a 2x target needs sparse global layers too; it is met
    plan2 = budget_search(t, inputs, target_speedup=2.0, runtimes=RUNTIMES, solver=solver, progress=False)
    assert plan2.metadata["achieved_runtime_s"] <= 20.0 and plan2.metadata["achieved_speedup"] >= 2.0
    assert plan2.layers[0] == 1 and plan2.metadata["total_loss"] > 0


def test_budget_search_errors_and_measured_runtimes():
    t = tiny_transformer("wan", num_layers=2)
    x = [tiny_inputs(t)]
    with pytest.raises(ValueError, match="below the sparsest plan's runtime"):
        budget_search(t, x, budget_s=3.0, runtimes=RUNTIMES, progress=False)  # sparsest is 2 + 2
    with pytest.raises(ValueError, match="below the sparsest plan's runtime"):
        budget_search(t, x, target_speedup=6.0, runtimes=RUNTIMES, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        budget_search(t, x, progress=False)
    with pytest.raises(ValueError, match="no runtime for mask"):
        budget_search(t, x, budget_s=10.0, runtimes={"dense": 1.0, "1": 0.5}, progress=False)
    with pytest.raises(ValueError, match="mask list is empty"):
        budget_search(t, x, budget_s=10.0, masks=[], runtimes=RUNTIMES, progress=False)
    rt = measure_mask_runtimes(t, x[0], masks=[4, 1], repeats=1, warmup=0)
    assert len(rt) == 2 and set(rt[0]) == {None, 4, 1} and all(v > 0 for v in rt[0].values())
    table = mask_loss_table(t, x, masks=[4, 1], progress=False)
    plan = budget_search(t, x, budget_s=sum(r[None] for r in rt), masks=[4, 1], runtimes=rt, loss_table=table,
                         progress=False)
    assert plan.layers == [None, None] and plan.metadata["total_loss"] == 0.0  # the dense budget keeps it dense


def test_estimate_search_cost_counts():
    t = tiny_transformer("cogvideox", num_layers=3)
    cost = estimate_search_cost(t, _inputs(t, m=2), layer=1, repeats=1)
    assert cost["worst_case_layer_forwards"] == 58 and cost["naive_layer_forwards"] == 78  # as counted above
    assert cost["trial_layer_forwards"] == 2 and cost["trial_s"] > 0 and cost["dense_forward_s"] > 0


def test_search_cli_weighs_a_few_step_students_own_timesteps(tmp_path, capsys):
    from diffusers_evdit import EfficientVDiTPipeline
    from diffusers_evdit.schedulers import mlcd_scheduler_from
    from diffusers_evdit.tiny import tiny_pipeline

    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"))
    pipe.scheduler = mlcd_scheduler_from(pipe.scheduler, [999.0, 700.0, 350.0], sigmas=[1.0, 0.7, 0.35])
    pipe.save_pretrained(tmp_path / "student")
    common = ["search", "--model", str(tmp_path / "student"), "--threshold", "0.05", "--no-chart", "--no-progress",
              "--latent", "4,4,4", "--text-tokens", "7"]
    assert main([*common, "--out", str(tmp_path / "own.json")]) == 0
    assert MaskPlan.load(tmp_path / "own.json").metadata["timesteps"] == [999, 700, 350]
    assert "the few-step student's own" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "drawn.json"), "--num-timesteps", "2"]) == 0  # asked: drawn
    assert MaskPlan.load(tmp_path / "drawn.json").metadata["timesteps"] == sample_timesteps(2, 0)


def test_search_cli_and_chart(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plan.json"
    assert main(["search", "--model", "tiny:cogvideox", "--threshold", "0.05", "--out", str(out), "--num-timesteps",
                 "2", "--no-progress"]) == 0
    plan = MaskPlan.load(out)
    assert plan.model_class == "CogVideoXTransformer3DModel" and len(plan.layers) == 2
    assert plan.metadata["threshold"] == 0.05 and len(plan.metadata["timesteps"]) == 2
    assert open(tmp_path / "plan.png", "rb").read(4) == b"\x89PNG"
    assert "layer forwards" in capsys.readouterr().out

    runtimes = tmp_path / "rt.json"
    runtimes.write_text(json.dumps(RUNTIMES))
    out2 = tmp_path / "budget.json"
    assert main(["search", "--model", "tiny:wan", "--target-speedup", "2.0", "--runtimes", str(runtimes), "--out",
                 str(out2), "--num-timesteps", "2", "--no-progress", "--solver", "exact"]) == 0
    meta = MaskPlan.load(out2).metadata
    assert meta["method"] == "latency-budget" and meta["achieved_runtime_s"] <= 10.0
    assert meta["refinement"] is None and meta["plan_loss"] > 0
    capsys.readouterr()
    assert main(["search", "--model", "tiny:wan", "--target-speedup", "2.0", "--runtimes", str(runtimes), "--out",
                 str(out2), "--num-timesteps", "2", "--no-progress", "--solver", "exact", "--refine-rounds", "2"]) == 0
    refined = MaskPlan.load(out2).metadata
    assert [h for h in refined["refinement"] if h["accepted"]][-1]["layers"] == MaskPlan.load(out2).layers
    assert refined["plan_loss"] <= meta["plan_loss"] and "refinement round(s) of" in capsys.readouterr().out
    assert main(["search", "--model", "tiny:wan", "--threshold", "0.05", "--refine-rounds", "1",
                 "--out", str(out)]) == 2
    assert "--refine-rounds refines a budget plan" in capsys.readouterr().err

    assert main(["search", "--model", "tiny:wan", "--threshold", "0", "--out", str(out)]) == 2
    assert "threshold r must be a number > 0" in capsys.readouterr().err
    assert main(["search", "--model", "tiny:wan", "--estimate-cost", "--num-timesteps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["num_timesteps"] == 2

    assert plot_plan(MaskPlan([1, None, 3]), str(tmp_path / "c.png"), num_frames=4).endswith("c.png")


def test_non_finite_outputs_never_pass(monkeypatch):
    original = TileSparseAttnProcessor.tile_attention

    def tile_attention(self, q, k, v, layout, key_padding_mask=None, dense_fn=None):
        out = original(self, q, k, v, layout, key_padding_mask, dense_fn)
        return out * float("nan") if (self.layer_index == 1 and self.k is not None) else out

    monkeypatch.setattr(TileSparseAttnProcessor, "tile_attention", tile_attention)
    t = tiny_transformer("wan", num_layers=3)
    plan = greedy_search(t, [tiny_inputs(t)], threshold=1e9, progress=False)
    assert plan.layers == [1, None, 1]  # finite layers pass every mask; NaN is an infinite loss, fails at once
    assert plan.metadata["trial_losses"]["1"] == {"4": float("inf")}


def test_plan_output_loss_matches_installed_plan_in_float64():
    # independent path: install the plan with apply_mask_plan and compare the two model outputs in float64
    t = tiny_transformer("wan", num_layers=3).double()
    inputs = [{k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in x.items()}
              for x in _inputs(t, m=2)]
    plan = [2, None, 1]
    apply_mask_plan(t, MaskPlan.uniform(3, None))
    with torch.no_grad():
        dense = [t(**x, return_dict=False)[0] for x in inputs]
        apply_mask_plan(t, MaskPlan(plan))
        sparse = [t(**x, return_dict=False)[0] for x in inputs]
    expected = [float(((a - b) ** 2).mean()) for a, b in zip(sparse, dense)]
    assert min(expected) > 0
    assert get_mask_plan(t).layers == plan
    got_max = plan_output_loss(t, inputs, plan)
    got_mean = plan_output_loss(t, inputs, MaskPlan(plan), reduce="mean")
    assert get_mask_plan(t).layers == plan  # the installed plan is restored
    assert got_max == pytest.approx(max(expected), rel=1e-5)  # _mse sums in float32
    assert got_mean == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert plan_output_loss(t, inputs, plan, reduce="none") == pytest.approx(expected, rel=1e-5)
    # one sparse layer: the single-layer loss the searches measure
    table = mask_loss_table(t, inputs, masks=[2, 1], progress=False)
    assert plan_output_loss(t, inputs, [None, 1, None]) == pytest.approx(table.losses[1][1], rel=1e-9)
    with pytest.raises(ValueError, match="model has 3 attention layers"):
        plan_output_loss(t, inputs, [1, 1])
    with pytest.raises(ValueError, match="reduction"):
        plan_output_loss(t, inputs, plan, reduce="median")


def test_budget_search_reports_the_joint_plan_loss():
    t = tiny_transformer("wan", num_layers=3)
    inputs = _inputs(t, m=2)
    plan = budget_search(t, inputs, budget_s=16.0, masks=[4, 1], runtimes={"dense": 10.0, "4": 8.0, "1": 2.0},
                         solver="exact", progress=False)
    meta = plan.metadata
    assert meta["plan_loss"] == pytest.approx(plan_output_loss(t, inputs, plan), rel=1e-6)
    assert meta["plan_loss"] > 0 and meta["total_loss"] > 0


def test_refinement_measures_losses_around_the_plan_and_never_raises_the_plan_loss():
    t = tiny_transformer("wan", num_layers=4)
    inputs = _inputs(t, m=2)
    rt = {"dense": 10.0, "4": 8.0, "2": 4.0, "1": 2.0}
    kwargs = dict(budget_s=18.0, masks=[4, 2, 1], runtimes=rt, solver="exact", progress=False)
    plain = budget_search(t, inputs, **kwargs)
    refined = budget_search(t, inputs, refine_rounds=3, **kwargs)
    history = refined.metadata["refinement"]
    assert history[0]["layers"] == plain.layers and history[0]["accepted"]
    assert history[0]["plan_loss"] == pytest.approx(plan_output_loss(t, inputs, plain), rel=1e-6)
    assert refined.metadata["plan_loss"] == pytest.approx(plan_output_loss(t, inputs, refined), rel=1e-6)
    assert refined.metadata["plan_loss"] <= plain.metadata["plan_loss"]
    assert refined.metadata["achieved_runtime_s"] <= 18.0
    accepted = [h["plan_loss"] for h in history if h["accepted"]]
    assert accepted == sorted(accepted, reverse=True) and len(set(accepted)) == len(accepted)
    assert (2 <= len(history) <= 4 and not history[-1]["accepted"]) or len(history) == 4  # stopped, or 3 rounds
    # blocks run: dense references and the plan given (2 inputs x 4 blocks each), then per round the prefix cache
    # advanced one block per layer (3 x 2), the trials on blocks l..3 (3 options x (4+3+2+1) x 2) and the new plan (8)
    assert history[0]["layer_forwards"] == 16
    steps = [b["layer_forwards"] - a["layer_forwards"] for a, b in zip(history, history[1:])]
    assert steps == [74] * (len(history) - 1)
    assert refined.metadata["layer_forwards"] == plain.metadata["layer_forwards"] + history[-1]["layer_forwards"]
    # round 1's table: the previous plan with one layer changed, each entry a whole-plan output loss
    options = [None, 4, 2, 1]
    around = history[1]["losses_around"]
    for layer, j in [(0, 0), (2, 3), (3, 1)]:
        changed = list(plain.layers)
        changed[layer] = options[j]
        assert around[layer][j] == pytest.approx(plan_output_loss(t, inputs, changed), rel=1e-5)
    with pytest.raises(ValueError, match="needs the \"output\" loss"):
        budget_search(t, inputs, refine_rounds=1, loss="layer", **kwargs)
    with pytest.raises(ValueError, match="refine_rounds must be an integer"):
        budget_search(t, inputs, refine_rounds=-1, **kwargs)


def test_dropped_attention_mass_of_the_mass_plan_script_equals_the_masked_softmax_mass():
    """benchmarks/mass_plan.py's per-mask loss: the attention probability each k:F-k mask removes, averaged over the
    video queries, against the softmax written out in float64 with the paper's mask."""
    from example_scripts import import_script
    from reference import paper_mask

    from diffusers_evdit import TileLayout

    layout = TileLayout(4, 3, 2, "first")
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, layout.seq_len, 8, generator=g) for _ in range(2))
    got = import_script("mass_plan").dropped_mass(q, k, layout, [3, 2, 1])
    p = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * 8 ** -0.5, dim=-1)[:, :, 2:]  # video queries
    for value, m in zip(got, [3, 2, 1]):
        outside = ~paper_mask(4, 3, 2, True, m)[2:]
        assert value == pytest.approx(float((p * outside).sum(-1).mean()), abs=1e-6)
    assert got[0] == pytest.approx(0) and 0 < got[1] < got[2] < 1  # 3 of 4 frames: nothing dropped; then more
