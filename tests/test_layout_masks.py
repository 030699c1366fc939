import pytest
import torch
from reference import paper_mask, paper_mask_loop, paper_reference_frames

from diffusers_evdit.layout import TileLayout, layout_from_latents
from diffusers_evdit.masks import (
    element_sparsity,
    format_mask,
    frame_tile_mask,
    is_dense,
    non_reference_frames,
    reference_frames,
    tile_mask,
)


@pytest.mark.parametrize("num_frames", [1, 2, 5, 8, 13, 21, 24, 33])
def test_reference_frames_follow_the_formula(num_frames):
    for k in range(1, num_frames + 3):
        refs = reference_frames(num_frames, k)
        assert set(refs) == paper_reference_frames(num_frames, k)
        assert 0 in refs
        assert len(refs) == min(k, num_frames)
        assert sorted(set(refs) | set(non_reference_frames(num_frames, k))) == list(range(num_frames))


def test_dense_entries():
    assert is_dense(8, None) and is_dense(8, 8) and is_dense(8, 100) and not is_dense(8, 7)
    assert format_mask(13, 3) == "3:10" and format_mask(13, 13) == "dense"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_k_is_refused(bad):
    with pytest.raises(ValueError, match="k"):
        is_dense(8, bad)


@pytest.mark.parametrize("text_first,num_text", [(True, 5), (False, 4), (False, 0)])
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_tile_mask_matches_the_rule_pair_by_pair(text_first, num_text, k):
    pos = "none" if num_text == 0 else ("first" if text_first else "last")
    layout = TileLayout(6, 5, num_text, pos)
    expected = paper_mask_loop(6, 5, num_text, text_first, k)
    assert torch.equal(paper_mask(6, 5, num_text, text_first, k), expected)
    assert torch.equal(tile_mask(layout, k), expected)
    # element sparsity from the closed form equals the count of skipped pairs
    skipped = (~expected).sum().item() / expected.numel()
    assert element_sparsity(layout, k) == pytest.approx(skipped, abs=1e-12)


def test_frame_tile_mask_is_the_tile_average_of_the_element_mask():
    layout = TileLayout(7, 3, 2, "first")
    m = tile_mask(layout, 2).float()
    groups = [layout.frame_slice(f) for f in range(7)] + [layout.text_slice]
    tiles = torch.tensor([[m[a, b].mean().item() for b in groups] for a in groups])
    assert torch.equal(tiles.bool(), frame_tile_mask(7, 2))
    assert set(tiles.flatten().tolist()) <= {0.0, 1.0}


def test_sparsity_of_the_papers_example():
    # Open-Sora-Plan 29 frames 720p, 1:7 and 4:4 (no text in self-attention)
    layout = TileLayout(8, 3600)
    assert element_sparsity(layout, 1) == pytest.approx(1 - (1 * 8 + 7 * 2) / 64)
    assert element_sparsity(layout, 4) == pytest.approx(1 - (4 * 8 + 4 * 5) / 64)
    assert element_sparsity(layout, 8) == 0.0


def test_layout_positions():
    layout = TileLayout(3, 4, 2, "first")
    assert layout.seq_len == 14 and layout.video_slice == slice(2, 14) and layout.text_slice == slice(0, 2)
    assert layout.token_frames().tolist() == [-1, -1] + [0] * 4 + [1] * 4 + [2] * 4
    last = TileLayout(3, 4, 2, "last")
    assert last.token_frames().tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [-1, -1]
    assert last.frame_slice(2) == slice(8, 12)


def test_layout_from_latents_and_errors():
    assert layout_from_latents((13, 60, 90), 2, 226, "first") == TileLayout(13, 1350, 226, "first")
    assert layout_from_latents((21, 60, 104), (1, 2, 2)) == TileLayout(21, 1560)
    assert layout_from_latents((8, 4, 4), (2, 2, 2)).num_frames == 4
    with pytest.raises(ValueError, match="does not divide"):
        layout_from_latents((13, 61, 90), 2)
    with pytest.raises(ValueError, match="text_position"):
        TileLayout(3, 4, 2, "none")
    with pytest.raises(ValueError, match="at least one frame"):
        TileLayout(0, 4)
    with pytest.raises(ValueError, match="received 15 tokens"):
        TileLayout(3, 4, 2, "first").check_seq_len(15)
