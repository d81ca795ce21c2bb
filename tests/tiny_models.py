"""The one definition of every tiny, randomly initialised model the tests use.

The builders the evaluation scripts' ``--smoke-test`` mode also needs live in the library,
:mod:`uplift_diffusers.utils.testing_utils`, and are re-exported here; the test-only ones are
defined below. Test helper (not a test module). conftest.py turns the common ones into fixtures; a test imports
a builder from here (``from tiny_models import make_upscaler``) only when it needs a parameter:
another width, seed or noise scale is an argument of the builder, never a second copy of it.

- :func:`make_upscaler`: a tiny UPLiFT upscaler (any number of latent channels);
  :func:`make_small_upscaler`: the released layout at small widths, for the model's own tests.
- :func:`save_original_file`: an upscaler saved as the authors save their release.
- :func:`make_kl_vae` (an ``AutoencoderKL``, 8x by default) and :func:`make_tiny_autoencoder`
  (our TAESD-family ``TinyAutoencoder``, 4 latent channels).
- Stable Diffusion: :func:`make_tokenizer` (character level), :func:`make_unet`,
  :func:`build_sd_components` (also :func:`build_sd_components_with_upscaler`), :func:`save_sd_pipeline`.
- CLIP: :func:`make_tiny_clip`, :func:`save_tiny_clip` (transformers).
- SDXL rows: :func:`build_sdxl_components`, :func:`save_sdxl_pipeline` and :func:`save_unet_lora`.
- :func:`offload`: a pipeline's models offloaded on the CPU (model, sequential or group offloading).

The builders of whole models and folders seed torch themselves (``seed``), so the same call gives
the same weights in any test order; the component builders used inside them (:func:`make_kl_vae`,
:func:`make_tiny_autoencoder`, :func:`make_unet`) draw from torch's generator as it stands (seeded 0
at the start of every test by conftest.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import cpu_offload

from uplift_diffusers.utils.testing_utils import (  # noqa: F401 - the library's tiny builders, re-exported for the tests
    FLUX2_TEXT_HIDDEN,
    FLUX2_TEXT_LAYERS,
    build_flux2_components,
    build_sd_components,
    make_kl_vae,
    make_tiny_clip,
    make_tokenizer,
    make_unet,
    make_upscaler,
    save_sd_pipeline,
    save_tiny_clip,
    tiny_text_config,
)

#: The released architecture's layout (5 encoder groups, a decoder block before the upsampling,
#: noise scale 1) at small widths, one block per group: for the tests of the model itself.
SMALL_RELEASED_LAYOUT = dict(
    encoder_channels=(8, 16, 16, 32, 32),
    encoder_blocks_per_group=1,
    decoder_channels=32,
    decoder_blocks_before_upsample=1,
    decoder_blocks_after_upsample=1,
    refiner_channels=32,
    refiner_blocks=2,
    noise_scale=1.0,
)
#: Native image side of the tiny SDXL pipeline (UNet sample_size 8 x VAE factor 8), its "1024".
SDXL_TINY_NATIVE_SIZE = 64


# ------------------------------------------------------------------------------------ UPLiFT
def make_small_upscaler(**overrides):
    """:func:`make_upscaler` with :data:`SMALL_RELEASED_LAYOUT` (any key overridden), seed 0 unless ``seed`` is given."""
    return make_upscaler(**{**SMALL_RELEASED_LAYOUT, **overrides})


def save_original_file(model, path) -> Path:
    """Save ``model`` as the authors save their release: official keys, one .safetensors file, no config."""
    from safetensors.torch import save_file

    from uplift_diffusers.loaders.single_file import convert_to_original_state_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(convert_to_original_state_dict(model.state_dict()), str(path))
    return path


def build_sd_components_with_upscaler(tokenizer_dir) -> dict:
    """:func:`build_sd_components` (seed 0) with a DDIM scheduler and ``upscaler``, a
    :func:`make_upscaler` whose weights continue the same seeded random stream."""
    from diffusers import DDIMScheduler

    components = build_sd_components(tokenizer_dir)
    scheduler = DDIMScheduler.from_config(components["scheduler"].config, clip_sample=False, set_alpha_to_one=False)
    return dict(components, scheduler=scheduler, upscaler=make_upscaler(seed=None))


# ------------------------------------------------------------------------------------ VAEs
def make_tiny_autoencoder(**overrides):
    """Our ``TinyAutoencoder`` (TAESD layout, factor 8) with 4 latent channels and 8-channel blocks."""
    from uplift_diffusers.models.autoencoder_tiny import TinyAutoencoder

    return TinyAutoencoder(**{"latent_channels": 4, "block_out_channels": [8] * 4, "pool_hidden_channels": 16, **overrides})


# ------------------------------------------------------------------------------------ text
# ------------------------------------------------------------------------------------ SDXL
def build_sdxl_components(tokenizer_dir, seed: int = 0) -> dict:
    """The components of a tiny ``StableDiffusionXLPipeline``, laid out as SDXL's are.

    UNet: ``addition_embed_type="text_time"`` (pooled text embedding + the six size / crop
    numbers, 4 features each), cross-attention over both encoders' hidden states (16 + 16);
    ``text_encoder`` a ``CLIPTextModel``, ``text_encoder_2`` a ``CLIPTextModelWithProjection``
    (projection 16 = the pooled embedding); the character tokenizer twice (``tokenizer_dir`` /
    ``1`` and ``/ 2``); SDXL base's default scheduler, ``EulerDiscreteScheduler`` with its
    schedule. Native size :data:`SDXL_TINY_NATIVE_SIZE`.
    """
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer, vocab_size = make_tokenizer(tokenizer_dir / "1")
    tokenizer_2, _ = make_tokenizer(tokenizer_dir / "2")
    time_embed_dim, pooled_dim = 4, 16
    unet = make_unet(
        sample_size=SDXL_TINY_NATIVE_SIZE // 8,
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,
    )
    text_config = tiny_text_config(vocab_size, hidden_act="gelu")
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config, projection_dim=pooled_dim))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return dict(
        vae=make_kl_vae(sample_size=SDXL_TINY_NATIVE_SIZE), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
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


def offload(pipe, kind: str, names=("unet", "vae")) -> None:
    """The pipeline's models offloaded on the CPU (no accelerator here) as ``kind`` does it:
    ``"model"``: ``enable_model_cpu_offload``; ``"sequential"``: accelerate's ``cpu_offload`` of the
    models ``names`` (default the UNet and the VAE; their weights on the meta device between uses, as under
    ``enable_sequential_cpu_offload``, which the CLIP text encoder of this transformers version
    refuses); ``"group"``: diffusers' group offloading of the UNet and the VAE."""
    if kind == "model":
        pipe.enable_model_cpu_offload(device="cpu")
        return
    for name in names:
        module = pipe.components[name]
        if kind == "sequential":
            cpu_offload(module, execution_device=torch.device("cpu"))
        else:
            module.enable_group_offload(torch.device("cpu"), offload_type="leaf_level")
