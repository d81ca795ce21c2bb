"""Tiny, randomly initialised Stable Diffusion components for offline tests.

Shared test helper (not a test module), the one place the tests build these models: an 8x VAE
with 4 latent channels, a 2-block UNet, a 2-layer CLIP text encoder with a character-level
tokenizer written to a folder, a PNDM or DDIM scheduler, a small UPLiFT upscaler (any number of
latent channels), and a tiny CLIP model (text + vision) for CLIP-score tests. For the SDXL rows:
a tiny SDXL pipeline (UNet with SDXL's ``text_time`` added conditioning, two CLIP text encoders,
the second with a projection, SDXL's default Euler scheduler) and a tiny LoRA for its UNet.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Optional

import torch

__all__ = [
    "make_tokenizer",
    "make_upscaler",
    "make_scheduler",
    "build_sd_components",
    "save_sd_pipeline",
    "save_tiny_clip",
    "save_tiny_open_clip",
    "SDXL_TINY_NATIVE_SIZE",
    "build_sdxl_components",
    "save_sdxl_pipeline",
    "save_unet_lora",
]


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
    from diffusers import UNet2DConditionModel
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
    vae = _tiny_kl_vae(sample_size=32)
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
    """Save a tiny random ``CLIPModel`` (32 px images), the character tokenizer and the PIL
    ``CLIPImageProcessorPil`` (shortest side 32, centre crop 32) to ``folder``: a ``CLIPProcessor`` folder."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

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
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_tiny_open_clip(folder, weights: bool = True, seed: int = 0) -> str:
    """A tiny open_clip model (32 px images, OpenAI mean / std, open_clip's own tokenizer) as a
    ``local-dir:`` folder; returns its ``local-dir:...`` name. ``weights``: save random weights
    (seeded) as ``open_clip_model.safetensors``, so every load gives the same model; otherwise
    open_clip initialises it randomly on each load."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    name = f"local-dir:{folder}"
    if weights:
        import open_clip
        from safetensors.torch import save_file

        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return name


#: Native image side of the tiny SDXL pipeline (UNet sample_size 8 x VAE factor 8), its "1024".
SDXL_TINY_NATIVE_SIZE = 64


def _tiny_kl_vae(sample_size: int):
    """An 8x ``AutoencoderKL`` with 4 latent channels and 8-channel blocks."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=sample_size,
    )


def build_sdxl_components(tokenizer_dir, seed: int = 0) -> dict:
    """The components of a tiny ``StableDiffusionXLPipeline``, laid out as SDXL's are.

    UNet: ``addition_embed_type="text_time"`` (pooled text embedding + the six size / crop
    numbers, 4 features each), cross-attention over both encoders' hidden states (16 + 16);
    ``text_encoder`` a ``CLIPTextModel``, ``text_encoder_2`` a ``CLIPTextModelWithProjection``
    (projection 16 = the pooled embedding); the character tokenizer twice (``tokenizer_dir`` /
    ``1`` and ``/ 2``); SDXL base's default scheduler, ``EulerDiscreteScheduler`` with its
    schedule. Native size :data:`SDXL_TINY_NATIVE_SIZE`.
    """
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer, vocab_size = make_tokenizer(tokenizer_dir / "1")
    tokenizer_2, _ = make_tokenizer(tokenizer_dir / "2")
    time_embed_dim, pooled_dim = 4, 16
    unet = UNet2DConditionModel(
        sample_size=SDXL_TINY_NATIVE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_head_dim=2,
        norm_num_groups=4,
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,
    )
    text_config = dict(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=vocab_size, max_position_embeddings=16, hidden_act="gelu",
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config, projection_dim=pooled_dim))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return dict(
        vae=_tiny_kl_vae(SDXL_TINY_NATIVE_SIZE).eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(), tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet.eval(), scheduler=scheduler,
    )


def save_sdxl_pipeline(folder, seed: int = 0) -> Path:
    """Save a tiny ``StableDiffusionXLPipeline`` (:func:`build_sdxl_components`) to ``folder``; returns it."""
    from diffusers import StableDiffusionXLPipeline

    folder = Path(folder)
    components = build_sdxl_components(folder.parent / f"{folder.name}-tokenizers", seed=seed)
    StableDiffusionXLPipeline(**components).save_pretrained(folder)
    return folder


def save_unet_lora(folder, unet_folder, rank: int = 2, seed: int = 0) -> Path:
    """Save a random LoRA (peft, attention projections, rank ``rank``) for the UNet in
    ``unet_folder`` as ``folder/pytorch_lora_weights.safetensors``, the layout of the Hub's
    LCM-LoRA (what ``load_lora_weights(folder)`` reads); returns ``folder``.

    Both LoRA matrices are random (peft's ``init_lora_weights=False``), so the LoRA changes the UNet.
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(unet_folder))
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(str(folder), unet_lora_layers=layers)
    return Path(folder)
