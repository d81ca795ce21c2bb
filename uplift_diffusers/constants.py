"""Model ids and file names used across the package, its scripts and its documentation: defined once."""

#: The authors' released UPLiFT for the Stable Diffusion 1.5 VAE: Hub repository and its single file
#: (official key layout, no ``config.json``; its configuration is the default ``UPLiFTLatentUpscaler()``).
UPLIFT_SD15_REPO_ID = "UPLiFT-upsampler/uplift_sd1.5vae"
UPLIFT_SD15_WEIGHTS_NAME = "uplift_sd1.5vae.safetensors"

#: Stable Diffusion 1.5 pipeline repository (its VAE is in the ``vae/`` subfolder).
SD15_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_VAE_SUBFOLDER = "vae"

#: File suffixes read as images (lower case): the CLI's inputs and every image folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

#: The upscaler's component (and folder) name in this package's pipelines.
UPSCALER_SUBFOLDER = "upscaler"

#: Rounds of back-projection onto the input that the super-resolution pipeline and the CLI's
#: ``upscale`` run by default (0 = the paper's output).
DEFAULT_BACK_PROJECTION_STEPS = 5
#: The super-resolution pipeline's ``ensemble`` values (and the CLI's / evaluation's ``--ensemble``):
#: how many flipped / rotated copies are upscaled and averaged (1: none).
ENSEMBLE_SIZES = (1, 2, 4, 8)

#: The latent spaces an UPLiFT model can be trained for (its config's ``latent_space``): whose raw
#: latents (what a pipeline hands ``vae.decode``) it upscales, with the VAE config that tells them apart:
#: ``(description, latent_channels, scaling_factor, shift_factor)``. Tiny autoencoders (TAESD, TAEF2) take
#: unscaled latents. SDXL / SD3 / FLUX.1 / TAESD are listed so that their VAEs are named when refused.
LATENT_SPACES = {
    "sd15": ("the Stable Diffusion 1.5 VAE (4 channels, scaling_factor 0.18215)", 4, 0.18215, 0.0),
    "sdxl": ("the SDXL VAE (4 channels, scaling_factor 0.13025)", 4, 0.13025, 0.0),
    "sd3": ("the Stable Diffusion 3 VAE (16 channels)", 16, 1.5305, 0.0609),
    "flux1": ("the FLUX.1 VAE (16 channels)", 16, 0.3611, 0.1159),
    "flux2": ("the FLUX.2 VAE and its tiny autoencoder TAEF2 (32 channels)", 32, 1.0, 0.0),
    "taesd": ("a TAESD-family tiny autoencoder with scaled latents (scaling_factor 1.0)", 4, 1.0, 0.0),
}
