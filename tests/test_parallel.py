"""Tile-sparse attention under diffusers' Ulysses context parallelism: 2 CPU processes (gloo) vs one process.

One spawn of two workers runs every case (importing torch and diffusers dominates the time); each worker keeps a
single-process copy of every model (``copy.deepcopy`` before parallelism is enabled), runs the same inputs through
both, and writes the largest difference (or the error it got) per case to a JSON file that the tests below read.
"""

from __future__ import annotations

import copy
import json
import os
import traceback

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
TOL = 1e-5


def _forward(model, inputs, return_dict=False):
    with torch.no_grad():
        out = model(**inputs, return_dict=return_dict)
    return out.sample if return_dict else out[0]


def _compare(parallel, single, inputs, return_dict=False) -> float:
    out = _forward(parallel, inputs, return_dict)
    ref = _forward(single, inputs)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return (out - ref).abs().max().item()


def _cases(rank: int) -> dict:
    from diffusers import ContextParallelConfig  # noqa: F401  (import check)

    from diffusers_evdit import MaskPlan, apply_mask_plan, remove_mask_plan
    from diffusers_evdit.parallel import enable_tile_parallelism
    from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer

    import diffusers_evdit.processors.ulysses as parallel

    results: dict = {}
    calls = {"n": 0}
    original = parallel.ulysses_tile_attention

    def counted(*args, **kwargs):  # the processors look the function up at call time
        calls["n"] += 1
        return original(*args, **kwargs)

    parallel.ulysses_tile_attention = counted

    def case(name):
        def wrap(fn):
            try:
                calls["n"] = 0
                results[name] = fn()
                if name != "uneven_attention" and isinstance(results[name], dict):
                    results[name]["ulysses tile calls"] = calls["n"]
            except Exception as err:  # recorded, asserted by the test of that case
                results[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
            return fn

        return wrap

    video = TinyVideo(frames=6, height=8, width=8, text_tokens=7, batch=2)  # 16 tokens a frame, 7 text tokens

    @case("cogvideox")  # joint text (first), text length 7 is not sharded; batch 2; a sparse and a dense layer
    def _():
        model = apply_mask_plan(tiny_transformer("cogvideox"), MaskPlan([1, None]))
        single = copy.deepcopy(model)
        inputs = tiny_inputs(model, video)
        enable_tile_parallelism(model, ulysses_degree=WORLD)
        diffs = {"plan [1, None]": _compare(model, single, inputs),
                 "return_dict=True": _compare(model, single, inputs, return_dict=True)}
        for layers in ([2, 2], [None, None]):  # plans installed after parallelism was enabled
            apply_mask_plan(model, MaskPlan(layers))
            apply_mask_plan(single, MaskPlan(layers))
            diffs[f"plan {layers} set later"] = _compare(model, single, inputs)
        remove_mask_plan(model)
        try:
            _forward(model, inputs)
            diffs["removed plan refused"] = "no error"
        except RuntimeError as err:
            diffs["removed plan refused"] = "dense plan instead" in str(err)
        return diffs

    @case("hunyuan_video")  # joint text (last) with a text padding mask on one sample; double + single blocks
    def _():
        model = apply_mask_plan(tiny_transformer("hunyuan_video"), MaskPlan([1, None, 2, 1]))
        single = copy.deepcopy(model)
        inputs = tiny_inputs(model, video, padded_text=2)
        enable_tile_parallelism(model, ulysses_degree=WORLD)
        diffs = {"plan [1, None, 2, 1]": _compare(model, single, inputs)}
        apply_mask_plan(model, MaskPlan.uniform(4, 1), kernel="gathered")
        apply_mask_plan(single, MaskPlan.uniform(4, 1), kernel="gathered")
        diffs["gathered kernel"] = _compare(model, single, inputs)
        return diffs

    @case("wan")  # self-attention only; diffusers' own Wan plan; dense layer through diffusers' Ulysses attention
    def _():
        model = apply_mask_plan(tiny_transformer("wan"), MaskPlan([1, None]))
        single = copy.deepcopy(model)
        inputs = tiny_inputs(model, TinyVideo(frames=6, height=8, width=8, text_tokens=7, batch=1))
        enable_tile_parallelism(model, ulysses_degree=WORLD)
        return {"plan [1, None]": _compare(model, single, inputs)}

    @case("ltx_video")  # packed latents, diffusers' own LTX plan (video only), a new family through the generic path
    def _():
        model = apply_mask_plan(tiny_transformer("ltx_video"), MaskPlan([1, None]))
        single = copy.deepcopy(model)
        inputs = tiny_inputs(model, TinyVideo(frames=4, height=4, width=4, text_tokens=8, batch=1))  # LTX shards text
        # diffusers 0.42's Ulysses attention fails on LTX's per-head cross-attention mask (stock processors too)
        inputs["encoder_attention_mask"] = None
        enable_tile_parallelism(model, ulysses_degree=WORLD)
        return {"plan [1, None]": _compare(model, single, inputs)}

    @case("uneven_attention")  # uneven video shards (ulysses_anything), at the attention level: diffusers'
    def _():  # uneven all-gather at proj_out needs NCCL (gloo's allgather takes equal sizes only)
        import torch.distributed as dist
        from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
        from torch.distributed.device_mesh import init_device_mesh

        from diffusers_evdit import TileAttention, TileLayout
        from diffusers_evdit.parallel import ulysses_tile_attention, video_shard_sizes
        from diffusers_evdit.processors import TileState, WanTileSparseAttnProcessor

        cp = ContextParallelConfig(ulysses_degree=WORLD, ulysses_anything=True)
        mesh = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("ring", "ulysses"))
        config = ParallelConfig(context_parallel_config=cp)
        config.setup(rank, WORLD, torch.device("cpu"), mesh=mesh)
        diffs = {}
        for text, position in ((0, "none"), (5, "first"), (5, "last")):
            layout = TileLayout(5, 9, text, position)  # 45 video tokens: shards of 23 and 22
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(2, 4, layout.seq_len, 8, generator=g) for _ in range(3))
            mask = torch.ones(2, layout.seq_len, dtype=torch.bool)
            mask[1, layout.text_slice.stop - 2 : layout.text_slice.stop] = text > 0  # padded text of sample 1
            mask = None if text == 0 else mask
            proc = WanTileSparseAttnProcessor(2, TileState(attention=TileAttention()))
            ref = proc.state.attention(q, k, v, layout, 2, key_padding_mask=mask)
            sizes = video_shard_sizes(45, WORLD, uneven=True)
            start = layout.video_start + sum(sizes[:rank])
            local = torch.cat([layout.text_slice.start + torch.arange(text) if position == "first" else
                               torch.arange(0), torch.arange(start, start + sizes[rank]),
                               torch.arange(45, 45 + text) if position == "last" else torch.arange(0)])
            q_l, k_l, v_l = q[:, :, local], k[:, :, local], v[:, :, local]
            out = ulysses_tile_attention(proc, q_l, k_l, v_l, layout, mask, None, config)
            diffs[f"text {position}"] = (out - ref[:, :, local]).abs().max().item()
        dist.barrier()
        return diffs

    @case("ring")  # refused before anything is changed
    def _():
        errors = {}
        for family, plan in (("wan", MaskPlan([1, None])), ("cogvideox", MaskPlan([None, None]))):
            model = apply_mask_plan(tiny_transformer(family), plan)
            try:
                enable_tile_parallelism(model, ulysses_degree=1, ring_degree=WORLD)
                errors[family] = "no error"
            except NotImplementedError as err:
                errors[family] = str(err)
            errors[f"{family} untouched"] = model._parallel_config is None
        return errors

    return results


def _worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        results = _cases(rank)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    out = []
    for rank in range(WORLD):
        with open(tmp / f"rank{rank}.json") as f:
            out.append(json.load(f))
    return out


def _diffs(results, name):
    per_rank = []
    for rank, res in enumerate(results):
        value = res[name]
        assert "error" not in value, f"rank {rank}: {value.get('error')}\n{value.get('trace')}"
        per_rank.append(value)
    return per_rank


@pytest.mark.parametrize("name", ["cogvideox", "hunyuan_video", "wan", "ltx_video", "uneven_attention"])
def test_ulysses_tile_attention_equals_single_process(results, name):
    for rank, diffs in enumerate(_diffs(results, name)):
        for what, diff in diffs.items():
            if what == "ulysses tile calls":
                assert diff > 0, f"rank {rank}, {name}: the context-parallel tile path never ran"
                continue
            if what == "removed plan refused":
                assert diff is True, f"rank {rank}: removing the plan under the plugin's CP plan gave {diff!r}"
                continue
            assert diff <= TOL, f"rank {rank}, {name} {what}: max |parallel - single| = {diff:.3g}"


def test_ring_attention_is_refused_clearly(results):
    for errors in _diffs(results, "ring"):
        assert "ring attention" in errors["wan"] and "Ulysses" in errors["wan"], errors["wan"]
        assert "text tokens" in errors["cogvideox"], errors["cogvideox"]
        assert errors["wan untouched"] and errors["cogvideox untouched"]


def test_plans_and_shard_sizes():
    from diffusers_evdit.parallel import COGVIDEOX_CP_PLAN, cp_plan_for, hunyuan_video_cp_plan, video_shard_sizes
    from diffusers_evdit.tiny import tiny_transformer

    assert cp_plan_for(tiny_transformer("cogvideox")).keys() == COGVIDEOX_CP_PLAN.keys()
    assert "rope" in hunyuan_video_cp_plan(tiny_transformer("hunyuan_video"))
    assert video_shard_sizes(45, 2, uneven=True) == [23, 22]
    with pytest.raises(ValueError, match="ulysses_anything=True"):
        video_shard_sizes(45, 2)


def test_generate_cp_relaunch_needs_the_command_line(capsys, monkeypatch):
    from diffusers_evdit.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["generate", "--model", "unused", "--prompt", "p", "--cp", "2", "--out", "unused.gif"]
    assert main(argv) == 2
    assert "torchrun --nproc-per-node N" in capsys.readouterr().err


def test_generate_cp_relaunches_the_process_command_line_under_torchrun(monkeypatch, capsys):
    import subprocess
    import sys

    from diffusers_evdit.cli import main

    argv = ["generate", "--model", "unused", "--prompt", "p", "--cp", "2", "--out", "unused.gif"]
    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["evdit", *argv])
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    assert main() == 0
    (cmd, env), = calls
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert cmd[6:] == ["diffusers_evdit.cli", *argv]
    assert "running: -m torch.distributed.run" in capsys.readouterr().out
