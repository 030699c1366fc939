"""EfficientVDiTPipeline on tiny random CogVideoX / Wan / HunyuanVideo pipelines (every component built in code)."""

import json
import os
import pickle

import pytest
import torch
from diffusers import (
    CogVideoXDPMScheduler,
    DiffusionPipeline,
    FirstBlockCacheConfig,
    FlowMatchEulerDiscreteScheduler,
)

from diffusers_evdit import (
    EfficientVDiTPipeline,
    MaskPlan,
    apply_mask_plan,
    get_mask_plan,
    mask_plan_model_card,
    num_plan_layers,
    remove_mask_plan,
)
from diffusers_evdit.cli import main
from diffusers_evdit.processors import TileSparseAttnProcessor
from diffusers_evdit.tiny import TINY_FAMILIES, tiny_pipeline, tiny_pipeline_inputs

FAMILIES = list(TINY_FAMILIES)


def run(pipe, **overrides):
    return pipe(**{**tiny_pipeline_inputs(pipe), **overrides}).frames


def processors(transformer):
    return {name: type(p) for name, p in transformer.attn_processors.items()}


def load_reference(folder, plans):
    """The folder loaded as the stock base pipeline, with ``plans`` applied by hand."""
    ref = DiffusionPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    for slot, plan in plans.items():
        if plan is not None:
            apply_mask_plan(getattr(ref, slot), plan)
    return ref


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pipe_dense_and_sparse_match_base(family):
    base = tiny_pipeline(family)
    stock = processors(base.transformer)
    dense_out = run(base)
    n = num_plan_layers(base.transformer)

    pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=MaskPlan.dense(n))
    assert isinstance(pipe, type(base)) and isinstance(pipe, EfficientVDiTPipeline)
    assert pipe.base_pipeline_class is type(base)
    assert pipe.transformer is base.transformer  # shared, as with diffusers' from_pipe
    assert pipe.mask_plan == MaskPlan.dense(n)
    assert torch.equal(run(pipe), dense_out)

    plan = MaskPlan.uniform(n, k=1)
    pipe.set_mask_plan(None)
    apply_mask_plan(base.transformer, plan)
    expected = run(base)
    remove_mask_plan(base.transformer)
    assert not torch.allclose(expected, dense_out)

    pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=plan)
    assert pipe.mask_plan == plan
    assert torch.equal(run(pipe), expected)

    pipe.set_mask_plan(None)  # stock processors, stock output
    assert pipe.mask_plan is None and get_mask_plan(base.transformer) is None
    assert processors(base.transformer) == stock
    assert torch.equal(run(pipe), dense_out)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trips_plan_scheduler_and_output(family, tmp_path):
    base = tiny_pipeline(family)
    n = num_plan_layers(base.transformer)
    plan = MaskPlan([1] * (n - 1) + [None], metadata={"source": "test", "speedups": {"H100 bf16 49f": 1.7}})
    # a "distilled" few-step scheduler that differs from the base one must come back on load
    if family == "cogvideox":
        scheduler = CogVideoXDPMScheduler(timestep_spacing="trailing", num_train_timesteps=500)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0, num_train_timesteps=500)
    pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=plan, scheduler=scheduler)
    out = run(pipe)
    pipe.save_pretrained(tmp_path)

    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == type(base).__name__
    assert index["_evdit"]["mask_plans"] == {"transformer": "mask_plan.json"}
    assert MaskPlan.load(tmp_path / "mask_plan.json") == plan
    card = (tmp_path / "README.md").read_text()
    first = "0" if n == 2 else f"0-{n - 2}"
    assert f"| {first} | 1 |" in card and f"| {n - 1} | dense |" in card
    assert "| source | test |" in card and "H100 bf16 49f: 1.70x" in card and type(scheduler).__name__ in card

    stock = DiffusionPipeline.from_pretrained(tmp_path)  # a normal diffusers folder: loads the stock base pipeline
    assert type(stock) is type(base) and get_mask_plan(stock.transformer) is None

    loaded = EfficientVDiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert loaded.mask_plan == plan and loaded.mask_plan.metadata == plan.metadata
    assert type(loaded.scheduler) is type(pipe.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert loaded.scheduler.config.num_train_timesteps == 500
    loaded_out = run(loaded)
    # Weights read from safetensors sit at other memory alignments, which changes CPU matmul rounding (~1e-6).
    assert torch.allclose(loaded_out, out, atol=1e-4, rtol=1e-4)
    assert torch.equal(loaded_out, run(load_reference(tmp_path, {"transformer": plan})))


def test_wan22_two_transformers_take_one_plan_each(tmp_path):
    base = tiny_pipeline("wan", two_transformers=True)
    plan, plan_2 = MaskPlan.uniform(2, k=1), MaskPlan([1, None], metadata={"note": "low-noise expert"})
    pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=plan, mask_plan_2=plan_2)
    assert pipe.mask_plans == {"transformer": plan, "transformer_2": plan_2}
    out = run(pipe)
    assert not torch.equal(out, run(pipe.set_mask_plan(plan, mask_plan_2=None)))  # transformer_2 runs (step 2)
    assert pipe.set_mask_plan(plan).mask_plan_2 == plan  # "same" by default
    pipe.set_mask_plan(plan, plan_2)

    pipe.save_pretrained(tmp_path)
    assert {"mask_plan.json", "mask_plan_2.json"} <= set(os.listdir(tmp_path))
    loaded = EfficientVDiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.mask_plans == {"transformer": plan, "transformer_2": plan_2}
    assert loaded.config.boundary_ratio == 0.875
    expected = run(load_reference(tmp_path, {"transformer": plan, "transformer_2": plan_2}))
    assert torch.equal(run(loaded), expected)

    loaded.set_mask_plan(plan, mask_plan_2=None).save_pretrained(tmp_path)  # re-save: stale plan file removed
    assert "mask_plan_2.json" not in os.listdir(tmp_path)
    assert EfficientVDiTPipeline.from_pretrained(tmp_path).mask_plans == {"transformer": plan, "transformer_2": None}


def test_bad_plans_are_refused_and_nothing_is_half_applied(tmp_path):
    base = tiny_pipeline("wan", two_transformers=True)
    plan = MaskPlan.uniform(2, k=1)
    pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=plan, mask_plan_2=None)
    before = processors(pipe.transformer), processors(pipe.transformer_2)

    with pytest.raises(ValueError, match="transformer_2 has 3 layers .* has 2 self-attention layers"):
        pipe.set_mask_plan(MaskPlan.uniform(2, k=2), mask_plan_2=MaskPlan.uniform(3, k=1))
    with pytest.raises(ValueError, match="made for CogVideoXTransformer3DModel"):
        pipe.set_mask_plan(MaskPlan.uniform(2, k=2, model_class="CogVideoXTransformer3DModel"))
    with pytest.raises(TypeError, match="MaskPlan.load"):
        pipe.set_mask_plan("plan.json")
    with pytest.raises(ValueError, match="kernel"):
        pipe.set_mask_plan(plan, kernel="quickest")
    assert (processors(pipe.transformer), processors(pipe.transformer_2)) == before
    assert pipe.mask_plans == {"transformer": plan, "transformer_2": None}
    assert all(p.k == 1 for p in pipe.transformer.attn_processors.values() if isinstance(p, TileSparseAttnProcessor))

    pipe.save_pretrained(tmp_path)
    plan_file = tmp_path / "mask_plan.json"
    MaskPlan.uniform(3, k=1).save(plan_file)
    with pytest.raises(ValueError, match=r"mask_plan\.json.*3 layers but transformer .* has 2 .*mask_plan=None"):
        EfficientVDiTPipeline.from_pretrained(tmp_path)
    assert EfficientVDiTPipeline.from_pretrained(tmp_path, mask_plan=None).mask_plans == {
        "transformer": None,
        "transformer_2": None,
    }
    plan_file.write_text('{"version": 1, "layers": [1, ')
    with pytest.raises(ValueError, match=r"Corrupt mask plan for transformer: .*mask_plan\.json.*not valid JSON"):
        EfficientVDiTPipeline.from_pretrained(tmp_path)
    plan_file.unlink()
    with pytest.raises(ValueError, match="lists mask_plan.json for transformer, but the file is missing"):
        EfficientVDiTPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no model_index.json"):
        EfficientVDiTPipeline.from_pretrained(tmp_path / "transformer")
    with pytest.raises(TypeError, match="from_pipe"):
        EfficientVDiTPipeline()
    with pytest.raises(ValueError, match="push_to_hub"):
        pipe.save_pretrained(tmp_path, push_to_hub=True)


def test_from_pretrained_of_stock_folder_and_plan_override(tmp_path):
    base = tiny_pipeline("cogvideox")
    base.save_pretrained(tmp_path)  # a stock diffusers folder, no plan
    dense = EfficientVDiTPipeline.from_pretrained(tmp_path)
    assert dense.mask_plan is None and type(dense).__name__ == "EfficientVDiTCogVideoXPipeline"
    plan = MaskPlan.uniform(2, k=1)
    sparse = EfficientVDiTPipeline.from_pretrained(tmp_path, mask_plan=plan, kernel="gathered")
    assert sparse.mask_plan == plan
    # the per-base class loads directly too, and is importable by name (a dense pipeline pickles; a planned
    # transformer does not yet: apply_mask_plan's forward pre-hook is a local closure)
    cls = EfficientVDiTPipeline.subclass_for(type(base))
    assert type(cls.from_pretrained(tmp_path, mask_plan=plan)) is cls
    assert type(pickle.loads(pickle.dumps(dense))) is cls


def test_model_card_section_is_replaced_not_duplicated(tmp_path):
    (tmp_path / "README.md").write_text("# My distilled model\n\nTrained by me.\n")
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan([2, None], metadata={"speedup": 2}))
    pipe.save_pretrained(tmp_path)
    pipe.set_mask_plan(MaskPlan([1, 1])).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("# My distilled model") and card.count("diffusers-evdit:begin") == 1
    assert "| 0-1 | 1 |" in card and "Not measured yet" in card and "2.00x" not in card
    section = mask_plan_model_card({"transformer": MaskPlan([2, None], metadata={"speedup": 2.0})})
    assert "| 0 | 2 |" in section and "| 1 | dense |" in section and "2.00x" in section


def test_lora_adapter_with_plan(tmp_path):
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    plan = MaskPlan.uniform(2, k=1)
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=plan)
    plain = run(pipe)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.transformer.add_adapter(lora, adapter_name="style")
    assert pipe.mask_plan == plan  # the tile processors stay; peft wraps the projections they call
    with_lora = run(pipe)
    assert not torch.allclose(with_lora, plain)
    pipe.set_mask_plan(None)
    assert not torch.allclose(run(pipe), with_lora)  # the plan is active under the adapter
    pipe.set_mask_plan(plan)
    pipe.transformer.disable_adapters()
    assert torch.equal(run(pipe), plain)
    pipe.transformer.enable_adapters()

    # the diffusers path: save the adapter, load it into a fresh Efficient-vDiT pipeline with load_lora_weights
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="style")
    WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=layers)
    fresh = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=plan)
    fresh.load_lora_weights(tmp_path, adapter_name="style")
    assert fresh.mask_plan == plan
    assert torch.allclose(run(fresh), with_lora, atol=1e-5, rtol=1e-5)
    fresh.fuse_lora(components=["transformer"])
    assert fresh.mask_plan == plan and torch.allclose(run(fresh), with_lora, atol=1e-5, rtol=1e-5)


def test_model_cpu_offload_first_block_cache_and_compile():
    plan = MaskPlan.uniform(2, k=1)
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=plan)
    expected = run(pipe)

    pipe.enable_model_cpu_offload(device="cpu")  # accelerate hooks; on CPU this only exercises the plumbing
    assert torch.equal(run(pipe), expected) and pipe.mask_plan == plan
    pipe.remove_all_hooks()

    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # never reuses: same output
    assert torch.equal(run(pipe), expected)
    pipe.transformer.disable_cache()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # always reuses after step 1
    assert not torch.equal(run(pipe), expected)
    pipe.transformer.disable_cache()

    pipe.transformer.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    assert torch.equal(run(pipe), expected)

    regional = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=plan)
    regional.transformer.compile_repeated_blocks(backend="eager")  # diffusers' regional compilation
    assert torch.allclose(run(regional), expected, atol=1e-5)

    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=plan)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    assert torch.allclose(run(pipe), expected, atol=1e-5)
    pipe.set_mask_plan(MaskPlan.uniform(2, k=2))  # installed on the module under the compile wrapper
    assert get_mask_plan(pipe.transformer._orig_mod).layers == [2, 2]
    assert pipe.mask_plan.layers == [2, 2]


def test_evdit_generate_writes_a_video(tmp_path, capsys):
    model = tmp_path / "model"
    plan = MaskPlan.uniform(2, k=1)
    EfficientVDiTPipeline.from_pipe(tiny_pipeline("cogvideox"), mask_plan=plan).save_pretrained(model)
    out = tmp_path / "video.gif"
    args = ["generate", "--model", str(model), "--prompt", "a red panda", "--steps", "2", "--frames", "9"]
    args += ["--height", "32", "--width", "32", "--seed", "0", "--out", str(out), "--verbose"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert out.exists() and out.stat().st_size > 0
    assert "k per layer [1, 1]" in printed and "num_frames=9 (flag)" in printed
    assert "transformer: sparsity" in printed and "1:2" in printed
    assert "work: 3 latent frames x 4 tokens + " in printed  # CogVideoX: text in self-attention

    from PIL import Image

    with Image.open(out) as gif:
        assert gif.n_frames == 9 and gif.size == (32, 32)
    # a frame count the VAE does not take: the pipeline rounds it, and the command says so
    args[args.index("--frames") + 1] = "10"
    assert main([a for a in args if a != "--verbose"] + ["--quiet"]) == 0
    assert "made 9 of the 10 frames asked for" in capsys.readouterr().out

    assert main(["generate", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "v.webm")]) == 2
    assert ".mp4 file (default)" in capsys.readouterr().err


def test_hub_plan_files_are_fetched_with_the_hub_arguments(tmp_path, monkeypatch):
    import huggingface_hub

    MaskPlan([1, None]).save(tmp_path / "mask_plan.json")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    index = {"_class_name": "WanPipeline", "_evdit": {"version": 1, "mask_plans": {"transformer": "mask_plan.json"}}}
    plans = EfficientVDiTPipeline._load_saved_plans("org/wan-evdit", index, False, {"revision": "v1"})
    assert plans == {"transformer": MaskPlan([1, None])}
    assert calls == [("org/wan-evdit", "mask_plan.json", {"revision": "v1"})]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        EfficientVDiTPipeline.from_pretrained(tmp_path / "missing")


def test_generation_defaults_travel_with_the_folder(tmp_path):
    from diffusers_evdit.generation import GENERATION_DEFAULTS_FILE, GenerationDefaults
    from diffusers_evdit.schedulers import mlcd_scheduler_from

    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, k=1))
    pipe.set_generation_defaults(num_frames=9, height=32, width=32, num_inference_steps=3, guidance_scale=2.5, fps=6)
    pipe.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / GENERATION_DEFAULTS_FILE).read_text())
    assert saved["_class_name"] == "GenerationDefaults" and saved["num_frames"] == 9 and saved["fps"] == 6
    loaded = EfficientVDiTPipeline.from_pretrained(tmp_path / "a")
    assert loaded.generation_defaults.to_dict() == pipe.generation_defaults.to_dict()
    assert EfficientVDiTPipeline.from_pipe(loaded).generation_defaults is loaded.generation_defaults
    assert EfficientVDiTPipeline.from_pipe(loaded, scheduler=loaded.scheduler).generation_defaults is None  # new model
    # the diffusers config API reads the same file
    assert GenerationDefaults.from_config(GenerationDefaults.load_config(tmp_path / "a")).config.height == 32

    # legacy evdit_demo.json (no generation_defaults.json): read; a stock folder: None
    (tmp_path / "a" / GENERATION_DEFAULTS_FILE).unlink()
    (tmp_path / "a" / "evdit_demo.json").write_text(json.dumps({"num_frames": 13, "fps": 4, "extra": {"x": 1}}))
    legacy = EfficientVDiTPipeline.from_pretrained(tmp_path / "a").generation_defaults
    assert legacy.to_dict() == {"num_frames": 13, "fps": 4}
    tiny_pipeline("wan").save_pretrained(tmp_path / "stock")
    assert EfficientVDiTPipeline.from_pretrained(tmp_path / "stock").generation_defaults is None
    (tmp_path / "a" / "evdit_demo.json").write_text('{"num_frames": -1}')
    with pytest.raises(ValueError, match="evdit_demo.json.*positive integer"):
        EfficientVDiTPipeline.from_pretrained(tmp_path / "a")

    # a distilled few-step scheduler records its step count (it runs those steps whatever is asked) ...
    student = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan")).set_generation_defaults(num_inference_steps=20)
    student.scheduler = mlcd_scheduler_from(student.scheduler, [1000.0, 600.0, 300.0], sigmas=[1.0, 0.6, 0.3])
    student.save_pretrained(tmp_path / "student")
    assert json.loads((tmp_path / "student" / GENERATION_DEFAULTS_FILE).read_text())["num_inference_steps"] == 3
    # ... and a training script's evdit_demo.json fills in the rest
    (tmp_path / "student" / "evdit_demo.json").write_text(json.dumps({"num_frames": 9, "guidance_scale": 1.0}))
    merged = EfficientVDiTPipeline.from_pretrained(tmp_path / "student").generation_defaults.to_dict()
    assert merged == {"num_frames": 9, "guidance_scale": 1.0, "num_inference_steps": 3}


@pytest.mark.parametrize("family", FAMILIES)
def test_call_takes_left_out_arguments_from_the_generation_defaults(family, tmp_path):
    import inspect

    from diffusers_evdit.generation import missing_call_defaults

    base = tiny_pipeline(family)
    explicit = tiny_pipeline_inputs(base, num_frames=9, steps=3)
    explicit["guidance_scale"] = 1.0
    reference = base(**explicit).frames  # the stock pipeline, every argument given

    model = {k: explicit[k] for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale",
                                      "max_sequence_length")}
    pipe = EfficientVDiTPipeline.from_pipe(base).set_generation_defaults(**model)
    pipe.save_pretrained(tmp_path)
    pipe = EfficientVDiTPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert inspect.signature(pipe.__call__) == inspect.signature(base.__call__)  # tools that inspect it still see it
    left_out = {k: v for k, v in explicit.items() if k not in model}
    left_out["generator"] = torch.Generator().manual_seed(0)
    assert torch.allclose(pipe(**left_out).frames, reference, atol=1e-4, rtol=1e-4)

    # explicit arguments win, positional ones included
    prompt = left_out.pop("prompt")
    longer = pipe(prompt, num_frames=13, generator=torch.Generator().manual_seed(0), **{
        k: v for k, v in left_out.items() if k != "generator"}).frames
    # 4 latent frames for 13 frames where 9 frames gave 3 (the frame axis is 1 or 2, by family)
    assert [(a, b) for a, b in zip(longer.shape, reference.shape) if a != b] == [(4, 3)]

    # a caller who sets the schedule one way gets no other schedule key from the defaults
    defaults = pipe.generation_defaults.replace(sigmas=[1.0, 0.5, 0.25])
    params = inspect.signature(base.__call__).parameters
    assert "num_inference_steps" not in missing_call_defaults(defaults, params, {"prompt", "sigmas"})
    assert "sigmas" not in missing_call_defaults(defaults, params, {"prompt", "num_inference_steps"})


def test_save_pretrained_is_atomic(tmp_path, monkeypatch):
    import diffusers_evdit.pipeline as pipeline_module
    from diffusers_evdit.atomic import INCOMPLETE_MARKER

    folder = tmp_path / "model"
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, k=1))
    pipe.save_pretrained(folder)
    (folder / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))

    def crash(*args, **kwargs):  # dies after the weights, plans and index of the new save are written
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(pipeline_module, "write_model_card", crash)
    with pytest.raises(KeyboardInterrupt):
        pipe.set_mask_plan(MaskPlan([None, 1])).save_pretrained(folder)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before
    assert os.listdir(tmp_path) == ["model"]  # no temporary folder left behind
    assert EfficientVDiTPipeline.from_pretrained(folder).mask_plan.layers == [1, 1]

    monkeypatch.undo()
    pipe.save_pretrained(folder)  # the new save replaces the folder and keeps the user's file
    assert EfficientVDiTPipeline.from_pretrained(folder).mask_plan.layers == [None, 1]
    assert (folder / "notes.txt").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["model"]

    # the temporary folder of a killed process is never taken for a good one
    (folder / INCOMPLETE_MARKER).write_text("")
    with pytest.raises(ValueError, match="incomplete save"):
        EfficientVDiTPipeline.from_pretrained(folder)
