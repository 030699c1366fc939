"""The ``walk`` kernel (one Triton launch over the tiles a mask keeps), run by Triton's interpreter on the CPU
(skipped where Triton is not installed): its key-range tables against the paper's mask written out pair by pair, and
its output against float64 masked attention, on layouts whose frames and text do not align with its blocks."""

import os
import subprocess
import sys

import pytest
import torch
from reference import attention_f64, paper_mask

import diffusers_evdit.kernels.walk as walk
from diffusers_evdit.kernels import TileAttention
from diffusers_evdit.kernels.indices import tile_indices
from diffusers_evdit.layout import TileLayout

pytest.importorskip("triton")

# frames, tokens a frame, text tokens, text position: text first / last / none, frames shorter and longer than a block
CASES = [(5, 7, 3, "first"), (6, 10, 4, "last"), (4, 9, 0, "none"), (3, 40, 5, "first")]

# Triton's interpreter must be switched on before Triton is imported (its library functions are compiled at import),
# so the kernel tests run in a child pytest with TRITON_INTERPRET=1 (test_walk_kernel_in_the_interpreter).
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED,
                                 reason="runs in the child pytest of test_walk_kernel_in_the_interpreter")


def test_walk_kernel_in_the_interpreter():
    if INTERPRETED:
        pytest.skip("this is the child run")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def _covered(w, group, block_m, n):
    """How often a launch computes each (query, key) pair, from its tables alone: [N, N] counts (blocks in
    ``w.order`` only, as the kernel launches them)."""
    count = torch.zeros(n, n, dtype=torch.int64)
    group = group.long()
    for b in w.order.tolist():
        rows = torch.arange(b * block_m, min(n, (b + 1) * block_m))
        for s in range(int(w.count[b])):
            a, z, masked = int(w.start[b, s]), int(w.stop[b, s]), int(w.masked[b, s])
            cols = torch.arange(a, z)
            keep = torch.ones(len(rows), len(cols), dtype=torch.int64)
            gq, gk = group[rows][:, None], group[cols][None, :]
            if masked == 1:  # the tile rule
                keep = ((gq == -1) | (gk == -1) | (gq == gk)).long()
            elif masked == 2:  # own frame only
                keep = (gq == gk).long()
            count[rows[:, None], cols[None, :]] += keep
    return count


def _ranges(w, b):
    n = int(w.count[b])
    return list(zip(w.start[b, :n].tolist(), w.stop[b, :n].tolist(), w.masked[b, :n].tolist()))


@pytest.mark.parametrize("block_m", [4, 16, 64])
@pytest.mark.parametrize("case", CASES)
def test_walk_tables_cover_every_kept_pair_exactly_once(case, block_m):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    for k in range(1, frames):
        tables = walk.walk_segments(layout, k, block_m)
        n = layout.seq_len
        expected = paper_mask(frames, tpf, nt, pos == "first", k).long()
        assert torch.equal(_covered(tables.full, tables.group, block_m, n), expected), (case, k, block_m)
        assert int(tables.full.count.max()) <= k + 2  # text, the reference frames, the own frames
        assert sorted(tables.full.order.tolist()) == list(range(-(-n // block_m)))  # every block, once
        # the launch that leaves global rows to SDPA: every non-reference row's kept pairs exactly once (global rows
        # of its blocks get partial results, replaced afterwards), and only blocks with such a row
        local_rows = tables.group != -1
        covered = _covered(tables.local, tables.group, block_m, n)
        assert torch.equal(covered[local_rows], expected[local_rows]), (case, k, block_m)
        assert sorted(tables.local.order.tolist()) == [b for b in range(-(-n // block_m))
                                                       if bool(local_rows[b * block_m:(b + 1) * block_m].any())]


def test_walk_tables_leave_single_frame_blocks_unmasked():
    # CogVideoX-5B's layout, k = 1: a block inside one non-reference frame walks text + reference frame 0 (one range,
    # adjacent) and its frame, unmasked; only blocks across a frame boundary (or touching the global rows) are masked
    layout = TileLayout(13, 1350, 226, "first")
    tables = walk.walk_segments(layout, 1, 128)
    b = (226 + 1350 + 127) // 128 + 1  # the first block of frame 1 rows only
    assert _ranges(tables.full, b) == [(0, 226 + 1350 + 1350, 0)]  # text + frame 0 + frame 1: one unmasked range
    masked_share = (tables.full.masked.sum(1) > 0).float().mean().item()
    assert masked_share < 0.15
    assert tables.nbytes() < 1 << 20
    # programs start with the long blocks (the text and reference-frame rows walk all keys)
    walked = tables.full.block_keys()[tables.full.order.long()].tolist()
    assert walked == sorted(walked, reverse=True) and walked[0] == layout.seq_len
    # the block holding the last reference rows and the first frame-1 rows: all keys in the full walk, only what
    # its frame-1 rows need in the local one
    mixed = (226 + 1350) // 128
    assert _ranges(tables.full, mixed) == [(0, layout.seq_len, 1)]
    assert _ranges(tables.local, mixed) == [(0, 226 + 1350 + 1350, 0)]
    # the work walked is the mask's kept pairs plus block rounding, not the dense N^2
    kept = paper_mask(13, 1350, 226, True, 1).sum().item()
    assert kept <= tables.keys_walked() < 1.2 * kept
    local_kept = paper_mask(13, 1350, 226, True, 1)[226 + 1350:].sum().item()
    assert local_kept <= tables.keys_walked("sdpa") < 1.15 * local_kept


@interpreted
@pytest.mark.parametrize("global_rows", ["walk", "sdpa"])
@pytest.mark.parametrize("block", [(16, 16), (32, 16)])
@pytest.mark.parametrize("head_dim", [12, 16, 24, 48])  # 12: 16 lanes, 4 masked; 24: 16 + 16 (8 masked); 48: 32 + 16
@pytest.mark.parametrize("case", CASES)
def test_walk_kernel_matches_float64_reference(case, head_dim, block, global_rows):
    frames, tpf, nt, pos = case
    block_m, block_n = block
    layout = TileLayout(frames, tpf, nt, pos)
    g = torch.Generator().manual_seed(0)
    for k in (1, frames // 2):
        q, kk, v = (torch.randn(2, 2, layout.seq_len, head_dim, generator=g) for _ in range(3))
        ref = attention_f64(q, kk, v, paper_mask(frames, tpf, nt, pos == "first", k))
        tokens = tile_indices(layout, k, "cpu").global_tokens
        out = walk.walk_tile_attention(q, kk, v, walk.walk_segments(layout, k, block_m), config={"BLOCK_N": block_n},
                                       global_rows=global_rows, global_tokens=tokens)
        rel = ((out.double() - ref).norm() / ref.norm()).item()
        assert rel < 1e-5, (case, k, rel)


@interpreted
@pytest.mark.parametrize("global_rows", ["walk", "sdpa"])
def test_walk_kernel_in_half_precision(global_rows):
    # the tensor-core path (no "ieee" dot) as on a GPU; fp16, since the interpreter's dot mishandles bf16 (the CUDA
    # tests cover bf16)
    layout = TileLayout(5, 20, 6, "first")
    g = torch.Generator().manual_seed(2)
    q, kk, v = (torch.randn(1, 2, layout.seq_len, 32, generator=g).half() for _ in range(3))
    out = walk.walk_tile_attention(q, kk, v, walk.walk_segments(layout, 2, 16), config={"BLOCK_N": 16},
                                   global_rows=global_rows, global_tokens=tile_indices(layout, 2, "cpu").global_tokens)
    ref = attention_f64(q, kk, v, paper_mask(5, 20, 6, True, 2))
    assert out.dtype == torch.float16 and ((out.double() - ref).norm() / ref.norm()).item() < 1e-2


@interpreted
def test_walk_kernel_takes_strided_inputs_and_a_scale():
    # processors hand over [B, N, H, D] projections transposed to [B, H, N, D]: non-contiguous views
    layout = TileLayout(4, 9, 5, "last")
    g = torch.Generator().manual_seed(1)
    q, kk, v = (torch.randn(1, layout.seq_len, 3, 16, generator=g).transpose(1, 2) for _ in range(3))
    ref = attention_f64(q, kk, v, paper_mask(4, 9, 5, False, 2), scale=0.3)
    out = walk.walk_tile_attention(q, kk, v, walk.walk_segments(layout, 2, 16), scale=0.3)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@interpreted
def test_walk_kernel_through_tile_attention():
    layout = TileLayout(5, 7, 3, "first")
    q, kk, v = torch.randn(3, 1, 2, layout.seq_len, 16).unbind(0)
    attn = TileAttention(kernel="walk", walk_block_m=16)
    out = attn(q, kk, v, layout, k_ref=2)
    ref = attention_f64(q, kk, v, paper_mask(5, 7, 3, True, 2))
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
    assert len(attn._walk_tables) == 1
    attn(q, kk, v, layout, k_ref=2)
    assert len(attn._walk_tables) == 1  # tables built once per (layout, k, device)


@interpreted
@pytest.mark.parametrize("global_rows", ["walk", "sdpa"])
@pytest.mark.parametrize("case", [(5, 7, 3, "first"), (4, 9, 6, "last")])
def test_walk_kernel_with_a_key_padding_mask(case, global_rows):
    # sample 0 pads two text keys (HunyuanVideo's padded prompt), sample 1 a text key and a video key
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    g = torch.Generator().manual_seed(3)
    q, kk, v = (torch.randn(2, 2, layout.seq_len, 16, generator=g) for _ in range(3))
    keep = torch.ones(2, layout.seq_len, dtype=torch.bool)
    text = list(range(layout.seq_len))[layout.text_slice]
    keep[0, text[-2:]] = False
    keep[1, [text[0], layout.frame_slice(frames - 1).start]] = False
    mask = paper_mask(frames, tpf, nt, pos == "first", 2)[None, None] & keep[:, None, None, :]
    ref = attention_f64(q, kk, v, mask)
    out = TileAttention("walk", walk_block_m=16, walk_global=global_rows)(q, kk, v, layout, 2, key_padding_mask=keep)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@interpreted
@torch.no_grad()
def test_fastest_leaves_the_walk_kernel_out_even_where_triton_runs_it():
    """The walk kernel measured slower than split on every benchmark case of an H100 (BENCHMARKS.md), and its first
    call compiles and tunes launch settings: `fastest` times split and dense only, here where walk would run."""
    from diffusers_evdit.kernels import KernelTuner
    from diffusers_evdit.kernels.walk import walk_available

    assert walk_available("cpu")  # the interpreter runs it
    seconds = {"split": 2.0, "dense": 3.0, "walk": 1.0}
    attn = TileAttention("fastest", walk_block_m=16, small_seq_len=0,
                         tuner=KernelTuner(reps=1, warmup=0, timer=lambda fn: 0.0))
    # the timer runs the candidate and reports the made-up time of the kernel it ran
    calls = []
    real_run = attn._run
    attn._run = lambda kernel, *a: calls.append(kernel) or real_run(kernel, *a)  # instance attribute, this test only
    attn.tuner.timer = lambda fn: (fn(), seconds[calls[-1]])[1]
    layout = TileLayout(5, 7, 3, "first")
    q, kk, v = torch.randn(3, 1, 2, layout.seq_len, 16).unbind(0)
    out = attn(q, kk, v, layout, k_ref=2)
    assert set(next(iter(attn.tuner.timings.values()))) == {"split", "dense"}
    assert "walk" not in calls and list(attn.tuner.choices.values()) == ["split"]
    ref = attention_f64(q, kk, v, paper_mask(5, 7, 3, True, 2))
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@interpreted
def test_walk_kernel_refuses_gradients_and_dense_entries():
    layout = TileLayout(4, 8)
    q = torch.randn(1, 1, layout.seq_len, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        walk.walk_tile_attention(q, q, q, walk.walk_segments(layout, 1, 16))
    with pytest.raises(ValueError, match="sparse entry"):
        walk.walk_segments(layout, 4)


def test_walk_kernel_needs_triton_on_the_device():
    if INTERPRETED:
        pytest.skip("the interpreter runs it on the CPU")
    layout = TileLayout(4, 8)
    q = torch.randn(1, 1, layout.seq_len, 16)
    with pytest.raises(RuntimeError, match="kernel='split'"):
        walk.walk_tile_attention(q, q, q, walk.walk_segments(layout, 1, 16))
    with pytest.raises(RuntimeError, match="kernel='split'"):
        TileAttention(kernel="walk")(q, q, q, layout, k_ref=1)


@interpreted
def test_profile_walk_script_runs_every_setting_exactly(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "profile_walk.py"
    spec = importlib.util.spec_from_file_location("profile_walk", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--cpu-check", "--rep-ms", "1", "--json", str(tmp_path / "p.json")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["complete"] and len(data["rows"]) == 8  # 2 cases x 2 query-block sizes x global rows walk / sdpa
    assert all("error" not in r and r["rel_err"] < 1e-5 and r["walk_ms"] > 0 for r in data["rows"])


@pytest.mark.skipif(INTERPRETED, reason="compiles the kernel, which the interpreter replaces")
@pytest.mark.parametrize("head_dim,dtype", [(64, "bf16"), (96, "bf16"), (128, "fp16"), (12, "fp32")])  # 12: + padding
def test_walk_kernel_compiles_for_hopper_with_tensor_cores_and_no_spills(head_dim, dtype):
    """Ahead-of-time compile for sm_90 on this GPU-less machine: what the interpreter cannot check (Triton's
    compiler accepts the kernel), and that it uses Hopper's wgmma (bf16/fp16) without spilling registers."""
    pytest.importorskip("triton.backends.nvidia")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import triton

    d0, d1 = walk.head_lanes(head_dim)
    constants = {"BLOCK_M": 128, "BLOCK_N": 64, "D0": d0, "D1": d1, "LANES0": d0 > head_dim,
                 "LANES1": d0 + d1 > head_dim, "IEEE": dtype == "fp32", "HAS_KEEP": head_dim == 12}
    tables = {"group", "seg_start", "seg_stop", "seg_masked", "seg_count", "block_order"}
    signature = {name: ("*" + dtype if name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr") else "*i32" if name in tables
                        else "*u8" if name == "keep_ptr" else "constexpr" if name in constants
                        else "fp32" if name == "qk_scale" else "i32")
                 for name in walk._walk_kernel.arg_names}
    kernel = triton.compile(ASTSource(fn=walk._walk_kernel, signature=signature, constexprs=constants),
                            target=GPUTarget("cuda", 90, 128), options={"num_warps": 8, "num_stages": 3})
    ptx = kernel.asm["ptx"]
    assert "ld.local" not in ptx  # no register spills
    assert ("wgmma" in ptx) == (dtype != "fp32")
    assert kernel.metadata.shared <= 227 * 1024
