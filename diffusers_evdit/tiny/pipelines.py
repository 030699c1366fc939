"""Tiny random diffusers *pipelines*: every component (VAE, text encoders, offline tokenizers, scheduler) in a tiny
config, built in code (no download). Random weights: plumbing only."""

from __future__ import annotations

import torch

from .models import TINY_FAMILIES, TINY_MODELS, tiny_transformer

# families with a tiny pipeline (LTX-Video: 4x spatial VAE; HunyuanVideo 1.5: fixed 1000 + 256 text tokens; SkyReels-V2:
# Wan's components)
TINY_PIPELINES = TINY_FAMILIES + ("ltx_video", "hunyuan_video15", "skyreels_v2")

TINY_VOCAB = (
    "a an the of and in on with to is are at by from it this that dog cat panda fox bird fish horse monkey red blue "
    "green yellow white black small big eating walking running dancing flying swimming sitting bamboo tree forest "
    "river sea sky city street night day sun snow video slow fast"
).split()
TINY_TEXT_VOCAB_SIZE = 64


def tiny_tokenizer(add_eos: bool = True, add_bos: bool = False):
    """An offline word-level tokenizer (``PreTrainedTokenizerFast``) over :data:`TINY_VOCAB`; no download needed.

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``<s>`` 3, then the words (lower-cased, split on whitespace and
    punctuation); unknown words map to ``<unk>``. ``add_eos`` appends ``</s>`` (T5 style), ``add_bos`` prepends
    ``<s>`` (Llama style) when ``add_special_tokens=True``.

    Example:
        >>> tok = tiny_tokenizer()
        >>> tok("A red panda", padding="max_length", max_length=6).input_ids
        [4, 29, 23, 1, 0, 0]
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<s>": 3}
    for word in TINY_VOCAB:
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= TINY_TEXT_VOCAB_SIZE
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = ("<s> " if add_bos else "") + "$A" + (" </s>" if add_eos else "")
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", 3), ("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>",
        model_max_length=4096,
    )


def tiny_vae(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random video VAE of ``family`` with 4 latent channels, 8x spatial and 4x temporal compression (LTX-Video:
    4x spatial).

    Example:
        >>> type(tiny_vae("wan")).__name__
        'AutoencoderKLWan'
    """
    from diffusers import (
        AutoencoderKLCogVideoX,
        AutoencoderKLHunyuanVideo,
        AutoencoderKLHunyuanVideo15,
        AutoencoderKLLTXVideo,
        AutoencoderKLWan,
    )

    torch.manual_seed(seed)
    if family == "cogvideox":
        vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        )
    elif family in ("wan", "skyreels_v2"):
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=4,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
    elif family == "hunyuan_video":
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            act_fn="silu",
            norm_num_groups=4,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        )
    elif family == "ltx_video":
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * 4,
            decoder_block_out_channels=(8,) * 4, layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5,
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
            timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
        )
    elif family == "hunyuan_video15":
        vae = AutoencoderKLHunyuanVideo15(
            latent_channels=4, block_out_channels=(8,) * 4, layers_per_block=1, spatial_compression_ratio=8,
            temporal_compression_ratio=4,
        )
    else:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of {', '.join(TINY_PIPELINES)}.")
    return vae.eval()


def _tiny_wan22_vae(seed: int = 0) -> torch.nn.Module:
    """A tiny random Wan 2.2 VAE (``AutoencoderKLWan`` as in Wan 2.2 TI2V-5B): residual blocks, pixels patchified
    2 x 2 (``in_channels`` / ``out_channels`` 12), 3 spatial downsamplings (16x spatial, 4x temporal compression),
    48 latent channels with random ``latents_mean`` / ``latents_std``.

    Example:
        >>> vae = _tiny_wan22_vae()
        >>> vae.encode(torch.zeros(1, 3, 5, 32, 32)).latent_dist.mean.shape
        torch.Size([1, 48, 2, 2, 2])
    """
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    g, z_dim = torch.Generator().manual_seed(seed), 48
    return AutoencoderKLWan(
        base_dim=4, decoder_base_dim=4, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_temporal=4, scale_factor_spatial=16,
        latents_mean=(torch.randn(z_dim, generator=g) * 0.2).tolist(),
        latents_std=(torch.rand(z_dim, generator=g) + 0.5).tolist(),
    ).eval()


def tiny_pipeline(family: str, num_layers: int = 2, seed: int = 0, two_transformers: bool = False,
                  expand_timesteps: bool = False):
    """A tiny random diffusers pipeline of ``family`` with every component built in code (no download).

    ``"cogvideox"``: ``CogVideoXPipeline`` (T5 encoder, ``CogVideoXDDIMScheduler``); ``"wan"``: ``WanPipeline``
    (UMT5 encoder, ``FlowMatchEulerDiscreteScheduler``), with ``two_transformers=True`` a Wan 2.2 A14B-style pipeline
    with ``transformer_2`` (seed ``seed + 1``) and ``boundary_ratio=0.875`` (so with 2 steps, step 0 runs
    ``transformer`` and step 1 ``transformer_2``), with ``expand_timesteps=True`` a Wan 2.2 TI2V-5B-style one
    (per-token timesteps; a Wan 2.2 VAE, residual, 2 x 2 pixel patches, 48 latent channels, 16x spatial compression,
    random ``latents_mean`` / ``latents_std``; a 48-channel transformer; flow shift 5; sizes in multiples of 32
    pixels); ``"hunyuan_video"``: ``HunyuanVideoPipeline`` (Llama + CLIP encoders); ``"ltx_video"``: ``LTXPipeline``
    (T5 encoder, 4x spatial / 4x temporal VAE, unpatched latents);
    ``"hunyuan_video15"``: ``HunyuanVideo15Pipeline`` (Qwen2.5-VL text model + ByT5 encoders, a
    ``ClassifierFreeGuidance`` guider, 9-channel T2V transformer input, fixed 1000 + 256 text tokens);
    ``"skyreels_v2"``: ``SkyReelsV2Pipeline`` (Wan's components; prompts are cleaned with ``ftfy``). The
    transformers are :func:`tiny_transformer` (float32, eval). Call it with :func:`tiny_pipeline_inputs`.

    Example:
        >>> pipe = tiny_pipeline("wan", two_transformers=True)
        >>> type(pipe).__name__, type(pipe.transformer_2).__name__
        ('WanPipeline', 'WanTransformer3DModel')
        >>> ti2v = tiny_pipeline("wan", expand_timesteps=True)
        >>> ti2v.config.expand_timesteps, ti2v.vae_scale_factor_spatial, ti2v.transformer.config.in_channels
        (True, 16, 48)
    """
    from diffusers import (
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        LTXPipeline,
        SkyReelsV2Pipeline,
        WanPipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlamaModel,
        T5Config,
        T5EncoderModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    if family not in TINY_PIPELINES:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of {', '.join(TINY_PIPELINES)}.")
    if (two_transformers or expand_timesteps) and family != "wan":
        raise ValueError("two_transformers=True and expand_timesteps=True are Wan 2.2 layouts; use family='wan'.")
    if two_transformers and expand_timesteps:
        raise ValueError("Wan 2.2 TI2V (expand_timesteps=True) has one transformer; drop two_transformers.")
    if expand_timesteps:
        transformer, vae = _tiny_wan22_ti2v_transformer(num_layers, seed), _tiny_wan22_vae(seed)
    else:
        transformer, vae = tiny_transformer(family, num_layers=num_layers, seed=seed), tiny_vae(family, seed=seed)
    torch.manual_seed(seed)
    t5 = dict(vocab_size=TINY_TEXT_VOCAB_SIZE, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
              relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if family == "cogvideox":
        pipe = CogVideoXPipeline(
            tokenizer=tiny_tokenizer(),
            text_encoder=T5EncoderModel(T5Config(**t5)).eval(),
            vae=vae,
            transformer=transformer,
            scheduler=CogVideoXDDIMScheduler(timestep_spacing="trailing"),
        )
    elif family == "ltx_video":
        pipe = LTXPipeline(
            tokenizer=tiny_tokenizer(),
            text_encoder=T5EncoderModel(T5Config(**t5)).eval(),
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            transformer=transformer,
        )
    elif family == "wan":
        pipe = WanPipeline(
            tokenizer=tiny_tokenizer(),
            text_encoder=UMT5EncoderModel(UMT5Config(**t5)).eval(),
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0 if expand_timesteps else 3.0),
            transformer=transformer,
            transformer_2=tiny_transformer(family, num_layers=num_layers, seed=seed + 1) if two_transformers else None,
            boundary_ratio=0.875 if two_transformers else None,
            expand_timesteps=expand_timesteps,
        )
    elif family == "hunyuan_video15":
        pipe = _tiny_hunyuan_video15(transformer, vae)
    elif family == "skyreels_v2":
        pipe = SkyReelsV2Pipeline(
            tokenizer=tiny_tokenizer(),
            text_encoder=UMT5EncoderModel(UMT5Config(**t5)).eval(),
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # as the tiny Wan: MLCD's grid steps as it does
            transformer=transformer,
        )
    else:
        ids = dict(vocab_size=TINY_TEXT_VOCAB_SIZE, pad_token_id=0, bos_token_id=3, eos_token_id=1)
        llama = LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                            num_hidden_layers=2, **ids)
        clip = CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
                              max_position_embeddings=77, projection_dim=8, **ids)
        text_encoder = LlamaModel(llama).eval()
        text_encoder_2 = CLIPTextModel(clip).eval()
        pipe = HunyuanVideoPipeline(
            text_encoder=text_encoder,
            tokenizer=tiny_tokenizer(add_eos=False, add_bos=True),
            transformer=transformer,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            text_encoder_2=text_encoder_2,
            tokenizer_2=tiny_tokenizer(),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_wan22_ti2v_transformer(num_layers: int, seed: int) -> torch.nn.Module:
    """The tiny Wan transformer with Wan 2.2 TI2V-5B's 48 latent channels in and out (its ``(1, 2, 2)`` patches)."""
    import diffusers

    torch.manual_seed(seed)
    config = {**TINY_MODELS["wan"].config(num_layers), "in_channels": 48, "out_channels": 48}
    return diffusers.WanTransformer3DModel(**config).eval()


def _tiny_hunyuan_video15(transformer, vae):
    """``HunyuanVideo15Pipeline`` around ``transformer`` and ``vae``; the text encoders are drawn from the current seed.

    The pipeline renders its chat template, pads it to ``tokenizer_max_length + crop_start`` (1000 + 108) tokens and
    drops the first ``crop_start`` hidden states (the system prompt of the real Qwen template). The tiny template
    stands a run of ``crop_start`` ``<s>`` tokens in for that system prompt, so the crop leaves the user prompt and
    an end-of-turn ``</s>`` (an empty negative prompt keeps one valid token, as with the real template). The
    MLLM embedding is ``hidden_states[-3]``: 3 Qwen layers make it the output of a layer, not the token embedding.
    ByT5 runs only on quoted (glyph) text in the prompt.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    head_dim = 8
    qwen = Qwen2_5_VLTextConfig(
        vocab_size=TINY_TEXT_VOCAB_SIZE, hidden_size=transformer.config.text_embed_dim, intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=transformer.config.text_embed_dim // head_dim, num_key_value_heads=2,
        head_dim=head_dim, max_position_embeddings=2048, pad_token_id=0, bos_token_id=3, eos_token_id=1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},  # sums to 4
    )
    byt5_tokenizer = ByT5Tokenizer()  # byte-level: no vocabulary file
    byt5 = T5Config(vocab_size=len(byt5_tokenizer), d_model=transformer.config.text_embed_2_dim, d_kv=4, d_ff=16,
                    num_layers=1, num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                    decoder_start_token_id=0)
    pipe = HunyuanVideo15Pipeline(
        text_encoder=Qwen2_5_VLTextModel(qwen).eval(),
        tokenizer=tiny_tokenizer(add_eos=False),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=T5EncoderModel(byt5).eval(),
        tokenizer_2=byt5_tokenizer,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.tokenizer.chat_template = (
        "{{ '<s> ' * %d }}{%% for message in messages %%}{%% if message['role'] == 'user' %%}"
        "{{ message['content'] }} </s>{%% endif %%}{%% endfor %%}" % pipe.prompt_template_encode_start_idx
    )
    return pipe


def tiny_pipeline_inputs(pipe, seed: int = 0, num_frames: int = 13, size: int = 32, steps: int = 2,
                         output_type: str = "latent") -> dict:
    """Call arguments for a pipeline from :func:`tiny_pipeline`: 13 frames (4 latent frames) of ``size x size``
    pixels (``4 x 4`` latent, 4 tokens a frame after 2x2 patching), ``steps`` steps, 8 text tokens, seeded.

    ``HunyuanVideo15Pipeline`` has fixed text lengths (no ``max_sequence_length``); its prompt quotes a glyph text so
    that the ByT5 encoder runs too.

    Example:
        >>> pipe = tiny_pipeline("cogvideox")
        >>> pipe(**tiny_pipeline_inputs(pipe)).frames.shape
        torch.Size([1, 4, 4, 4, 4])
    """
    kwargs = dict(
        prompt="a red panda eating bamboo",
        num_frames=num_frames,
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type=output_type,
        max_sequence_length=8,
    )
    if type(pipe).__name__.endswith("HunyuanVideoPipeline"):
        kwargs["prompt_template"] = {"template": "{}", "crop_start": 0}
    if type(pipe).__name__.endswith("HunyuanVideo15Pipeline"):
        del kwargs["max_sequence_length"]
        kwargs["prompt"] += ' by a sign that says "bamboo"'
    return kwargs
