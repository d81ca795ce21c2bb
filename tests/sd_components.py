"""Tiny, randomly initialised Stable Diffusion components for offline tests.

Shared test helper (not a test module), the one place the tests build these models: an 8x VAE
with 4 latent channels, a 2-block UNet, a 2-layer CLIP text encoder with a character-level
tokenizer written to a folder, a PNDM or DDIM scheduler, a small UPLiFT upscaler (any number of
latent channels), and a tiny CLIP model (text + vision) for CLIP-score tests.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Optional

import torch

__all__ = ["make_tokenizer", "make_upscaler", "make_scheduler", "build_sd_components", "save_sd_pipeline", "save_tiny_clip"]


def make_tokenizer(folder, max_length: int = 16):
    """A character-level CLIPTokenizer (lower-case letters and ``!.,``) saved in ``folder``."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + "!.,":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length), len(vocab)


def make_upscaler(latent_channels: int = 4, noise_scale: float = 0.0, seed: Optional[int] = 0):
    """A small random UPLiFT upscaler (a few thousand parameters), in eval mode.

    ``seed=None`` draws the weights from torch's global generator as it stands (to continue the
    stream of :func:`build_sd_components`) instead of reseeding it.
    """
    from uplift_diffusers import UPLiFTLatentUpscaler

    if seed is not None:
        torch.manual_seed(seed)
    return UPLiFTLatentUpscaler(
        latent_channels=latent_channels,
        encoder_channels=(8, 8, 16),
        encoder_blocks_per_group=1,
        decoder_channels=16,
        decoder_blocks_after_upsample=1,
        refiner_channels=16,
        refiner_blocks=1,
        noise_scale=noise_scale,
    ).eval()


def make_scheduler(kind: str = "pndm"):
    """The SD1.5 noise schedule in a ``"pndm"`` (SD1.5's default) or ``"ddim"`` scheduler."""
    from diffusers import DDIMScheduler, PNDMScheduler

    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    if kind == "pndm":
        return PNDMScheduler(**schedule, skip_prk_steps=True)
    if kind == "ddim":
        return DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False)
    raise ValueError(f"`kind` must be 'pndm' or 'ddim', got {kind!r}; pass one of these scheduler names.")


def build_sd_components(tokenizer_dir, seed: int = 0, scheduler: str = "pndm", with_upscaler: bool = False) -> dict:
    """vae, text_encoder, tokenizer, unet and scheduler (see :func:`make_scheduler`) of a tiny SD model.

    With ``with_upscaler=True`` the dict also holds ``upscaler``: a 4-channel :func:`make_upscaler`
    whose weights continue the same seeded random stream.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer, vocab_size = make_tokenizer(tokenizer_dir)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=16,
            projection_dim=16,
        )
    )
    components = dict(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(), scheduler=make_scheduler(scheduler)
    )
    if with_upscaler:
        components["upscaler"] = make_upscaler(seed=None)
    return components


def save_sd_pipeline(folder, seed: int = 0) -> Path:
    """Save a tiny ``StableDiffusionPipeline`` (no safety checker) to ``folder``; returns it."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    components = build_sd_components(folder.parent / f"{folder.name}-tokenizer", seed=seed)
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_clip(folder, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` (32 px images) and the character tokenizer to ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    tokenizer, vocab_size = make_tokenizer(folder, max_length=16)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32,
            num_attention_heads=2, num_hidden_layers=1, vocab_size=vocab_size, max_position_embeddings=16,
        ),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
