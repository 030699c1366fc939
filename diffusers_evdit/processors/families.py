"""The supported model families, as data (see :class:`~.family.ModelFamily`), and the refused classes with reasons."""

from __future__ import annotations

from diffusers.models import attention_processor as ap

from ..layout import TEXT_FIRST, TEXT_LAST
from .family import ModelFamily, attention_blocks, latent_layout, packed_layout, tokens_of


def _refuse_kandinsky_sparse(transformer, args, kwargs) -> None:
    if kwargs.get("sparse_params") is not None:
        raise NotImplementedError(
            "Kandinsky5 with sparse_params runs its own NABLA block-sparse attention (a flex BlockMask), which does "
            "not combine with a k:F-k plan; call it without sparse_params (dense mode) or remove the mask plan."
        )


_PACKAGE = "diffusers_evdit.processors."
WAN_BLOCKS = attention_blocks("blocks.*.attn1")

COGVIDEOX = ModelFamily(
    "cogvideox", ("CogVideoXTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"),
    latent_layout("BFCHW"), TEXT_FIRST, (("*", ap.CogVideoXAttnProcessor2_0),),
    extra_tokens=tokens_of("encoder_hidden_states"), processor=_PACKAGE + "cogvideox.CogVideoXTileSparseAttnProcessor",
)
CONSISID = ModelFamily(
    "consisid", ("ConsisIDTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"),
    latent_layout("BFCHW"), TEXT_FIRST, (("transformer_blocks.*", ap.CogVideoXAttnProcessor2_0),),
    extra_tokens=tokens_of("encoder_hidden_states"),
)
EASYANIMATE = ModelFamily(
    "easyanimate", ("EasyAnimateTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"),
    latent_layout(), TEXT_FIRST, (("*", "diffusers.models.transformers.transformer_easyanimate."
                                        "EasyAnimateAttnProcessor2_0"),),
)
WAN = ModelFamily("wan", ("WanTransformer3DModel",), WAN_BLOCKS, latent_layout(),
                  processor=_PACKAGE + "wan.WanTileSparseAttnProcessor")
CHRONOEDIT = ModelFamily("chronoedit", ("ChronoEditTransformer3DModel",), WAN_BLOCKS, latent_layout())
SKYREELS_V2 = ModelFamily(
    "skyreels_v2", ("SkyReelsV2Transformer3DModel",), WAN_BLOCKS, latent_layout(),
    mask="diffusion forcing: the block-causal frame mask AND the tile mask (explicit mask, dense cost)",
)
WAN_VACE = ModelFamily("wan_vace", ("WanVACETransformer3DModel",),
                       attention_blocks("vace_blocks.*.attn1", "blocks.*.attn1"), latent_layout())
WAN_ANIMATE = ModelFamily("wan_animate", ("WanAnimateTransformer3DModel",), WAN_BLOCKS, latent_layout())


def _refuse_causal_anyflow(transformer, args, kwargs) -> None:
    if any(getattr(b, "is_causal", False) for b in transformer.blocks):
        raise NotImplementedError("AnyFlow blocks built with is_causal=True run KV-cached causal attention; "
                                  "k:F-k plans apply to the bidirectional model only.")


ANYFLOW = ModelFamily(
    "anyflow", ("AnyFlowTransformer3DModel",), WAN_BLOCKS, latent_layout(),
    stock_processors=(("*.attn2", "diffusers.models.transformers.transformer_anyflow.AnyFlowCrossAttnProcessor"),),
    check_call=_refuse_causal_anyflow, mask="bidirectional model only: causal (is_causal) blocks are refused",
)
COSMOS = ModelFamily(
    "cosmos", ("CosmosTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"), latent_layout(),
    stock_processors=(
        ("*.attn2:CosmosAttention", "diffusers.models.transformers.transformer_cosmos.CosmosAttnProcessor2_5"),
        ("transformer_blocks.*", "diffusers.models.transformers.transformer_cosmos.CosmosAttnProcessor2_0"),
    ),
)
HUNYUAN_VIDEO = ModelFamily(
    "hunyuan_video", ("HunyuanVideoTransformer3DModel",),
    attention_blocks("transformer_blocks.*.attn", "single_transformer_blocks.*.attn"), latent_layout(), TEXT_LAST,
    (("*transformer_blocks.*.attn", "diffusers.models.transformers.transformer_hunyuan_video."
                                    "HunyuanVideoAttnProcessor2_0"),),
    extra_tokens=tokens_of("encoder_hidden_states", 2),
    mask="text key padding ([B, 1, 1, N]) on top of the tile mask",
    processor=_PACKAGE + "hunyuan_video.HunyuanVideoTileSparseAttnProcessor",
)
HUNYUAN_VIDEO15 = ModelFamily(
    "hunyuan_video15", ("HunyuanVideo15Transformer3DModel",), attention_blocks("transformer_blocks.*.attn"),
    latent_layout(), TEXT_LAST,
    (("transformer_blocks.*.attn", "diffusers.models.transformers.transformer_hunyuan_video15."
                                   "HunyuanVideo15AttnProcessor2_0"),),
    mask="[B, 1, N, N] outer product of the text padding: key padding for the tile kernels, padded query rows from "
    "the model's own call (inside torch.compile graphs: AND-ed explicit mask, dense cost)",
)
MOTIF_VIDEO = ModelFamily(
    "motif_video", ("MotifVideoTransformer3DModel",),
    attention_blocks("transformer_blocks.*.attn", "single_transformer_blocks.*.attn"), latent_layout(), TEXT_LAST,
    mask="text key padding ([B, 1, 1, N]) on top of the tile mask",
)
MOCHI = ModelFamily(
    "mochi", ("MochiTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"),
    latent_layout(patch_t=None), TEXT_LAST, (("*", ap.MochiAttnProcessor2_0),),
    mask="per sample: video, then that sample's valid text tokens",
)
ALLEGRO = ModelFamily(
    "allegro", ("AllegroTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"), latent_layout(),
    stock_processors=(("*", ap.AllegroAttnProcessor2_0),),
)
LTX_VIDEO = ModelFamily("ltx_video", ("LTXVideoTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"),
                        packed_layout())
LTX2_VIDEO = ModelFamily(
    "ltx2_video", ("LTX2VideoTransformer3DModel",), attention_blocks("transformer_blocks.*.attn1"), packed_layout(),
    mask="optional video self-attention mask AND the tile mask (explicit mask, dense cost)",
)
KANDINSKY5 = ModelFamily(
    "kandinsky5", ("Kandinsky5Transformer3DModel",), attention_blocks("visual_transformer_blocks.*.self_attention"),
    latent_layout("BFHWC", patch_t=None), check_call=_refuse_kandinsky_sparse,
    mask="dense mode only: calls with sparse_params (NABLA) are refused",
)

FAMILIES: tuple[ModelFamily, ...] = (
    COGVIDEOX, WAN, HUNYUAN_VIDEO, LTX_VIDEO, LTX2_VIDEO, HUNYUAN_VIDEO15, SKYREELS_V2, WAN_VACE, WAN_ANIMATE,
    CHRONOEDIT, ANYFLOW, COSMOS, CONSISID, MOCHI, EASYANIMATE, ALLEGRO, MOTIF_VIDEO, KANDINSKY5,
)

#: Video transformers of diffusers where ``k:F-k`` tile attention does not apply, and why.
REFUSED: dict[str, str] = {
    "LatteTransformer3DModel": "factorised attention: spatial blocks attend within one frame and temporal blocks "
    "across frames at one position, so there is no joint self-attention over frames to tile",
    "SanaVideoTransformer3DModel": "linear attention: there is no attention matrix whose tiles could be skipped",
    "SanaWMTransformer3DModel": "linear attention: there is no attention matrix whose tiles could be skipped",
    "HunyuanVideoFramepackTransformer3DModel": "multi-resolution history: history latents compressed 2x/4x sit "
    "before the frames in one sequence, so frames have different token counts and no single frame layout holds",
    "HeliosTransformer3DModel": "multi-resolution history (long / mid / short memory frames of different sizes) "
    "in one sequence, so no single frame layout holds",
    "AnyFlowFARTransformer3DModel": "KV-cached causal generation: keys of earlier frames come from a cache, "
    "the mask is causal and the query sequence is one chunk, not the whole video",
    "WanAnimate2Transformer3DModel": "flex BlockMask attention with a KV cache (causal chunks)",
}
