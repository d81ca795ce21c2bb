"""Tiny, randomly initialised components (the diffusers convention) for the tests and the
``--smoke-test`` runs: built in seconds and offline, their outputs mean nothing. Builders of whole
models and folders seed torch themselves (``seed``); the component builders used inside them
(:func:`make_kl_vae`, :func:`make_unet`) draw from torch's generator as it stands."""
from __future__ import annotations

import string
from pathlib import Path
from typing import Optional

import torch


def make_upscaler(latent_channels: int = 4, noise_scale: float = 0.0, seed: Optional[int] = 0, **architecture):
    """A small random UPLiFT upscaler (a few thousand parameters; any ``architecture`` key
    overridden), in eval mode; ``seed=None`` continues torch's global generator."""
    from uplift_diffusers import UPLiFTLatentUpscaler

    if seed is not None:
        torch.manual_seed(seed)
    config = dict(encoder_channels=(8, 8, 16), encoder_blocks_per_group=1, decoder_channels=16,
                  decoder_blocks_after_upsample=1, refiner_channels=16, refiner_blocks=1)
    return UPLiFTLatentUpscaler(latent_channels=latent_channels, noise_scale=noise_scale, **{**config, **architecture}).eval()


def make_kl_vae(blocks: int = 4, sample_size: int = 32):
    """An ``AutoencoderKL`` with 4 latent channels and ``blocks`` 8-channel blocks: a factor of
    ``2 ** (blocks - 1)`` (8, as SD's, by default), in eval mode."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8,) * blocks, down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=sample_size,
    ).eval()


def make_tokenizer(folder, words=()):
    """A CLIPTokenizer saved in ``folder``: lower-case letters and ``!.,`` one token each, plus
    BPE merges that make each of ``words`` one token. Returns ``(tokenizer, vocabulary size)``."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + "!.,":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)
    tokenizer.save_pretrained(folder)
    return tokenizer, len(vocab)


def tiny_text_config(vocab_size: int, **overrides) -> dict:
    """The text side of every tiny CLIP text encoder (SD, SDXL, CLIP score), 16 positions, for a
    :func:`make_tokenizer` vocabulary (token ids 0 and 1 = start / end / pad)."""
    return dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=16,
                vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1, **overrides)


def make_tiny_clip(tokenizer, vocab_size: int, seed: int = 0):
    """A tiny random ``CLIPModel`` for 32 px images, in eval mode, and its ``CLIPProcessor`` (``tokenizer``,
    a :func:`make_tokenizer`, and the PIL image processor)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=tiny_text_config(vocab_size),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=8),
        projection_dim=16,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_clip(folder, seed: int = 0) -> Path:
    """Save :func:`make_tiny_clip` and its processor to ``folder`` (what ``from_pretrained`` reads); returns it."""
    model, processor = make_tiny_clip(*make_tokenizer(folder), seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


def make_unet(**overrides):
    """A 2-block ``UNet2DConditionModel`` for 4-channel latents, in eval mode; SDXL's passes its
    conditioning as ``overrides``."""
    from diffusers import UNet2DConditionModel

    config = dict(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )
    return UNet2DConditionModel(**{**config, **overrides}).eval()


def build_sd_components(tokenizer_dir, seed: int = 0) -> dict:
    """The components of a tiny SD model (64 px images, 8 x 8 latents) with SD1.5's noise schedule
    and default scheduler (PNDM)."""
    from diffusers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              skip_prk_steps=True)
    torch.manual_seed(seed)
    tokenizer, vocab_size = make_tokenizer(tokenizer_dir)
    unet = make_unet()
    vae = make_kl_vae()
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(vocab_size))).eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def save_sd_pipeline(folder, seed: int = 0) -> Path:
    """Save a tiny ``StableDiffusionPipeline`` (no safety checker, PNDM) to ``folder``; returns it."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    components = build_sd_components(folder.parent / f"{folder.name}-tokenizer", seed=seed)
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------ FLUX.2
#: The tiny FLUX.2 text encoders' hidden size and the layers whose states the pipelines stack.
FLUX2_TEXT_HIDDEN = 16
FLUX2_TEXT_LAYERS = (1, 2)


def build_flux2_components(klein: bool = True, seed: int = 0) -> dict:
    """Tiny FLUX.2 components (32 latent channels, 8 px per latent) with the released configurations'
    resolution-dependent shift and, for FLUX.2 [klein], a Qwen3 text encoder with Qwen's byte-level
    BPE tokenizer over the 256 bytes (FLUX.2 [dev]'s Mistral encoder is left out: its tests pass
    ``prompt_embeds``)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=32, norm_num_groups=4)
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=len(FLUX2_TEXT_LAYERS) * FLUX2_TEXT_HIDDEN, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=not klein,
        )
        text_encoder = tokenizer = None
        if klein:
            text_encoder = Qwen3ForCausalLM(Qwen3Config(
                vocab_size=300, hidden_size=FLUX2_TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=max(FLUX2_TEXT_LAYERS),
                num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
            )).eval()
            tokenizer = Qwen2Tokenizer(vocab={**{chr(i): i for i in range(256)}, "<|endoftext|>": 256}, merges=[])
            tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0), vae=vae.eval(), transformer=transformer.eval(),
        text_encoder=text_encoder, tokenizer=tokenizer,
    )
