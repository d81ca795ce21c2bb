"""Tests for uplift_diffusers.models.autoencoder_tiny (TAESD-family model) and uplift_diffusers.loaders.vae."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image

from tiny_models import make_kl_vae, make_tiny_autoencoder
from uplift_diffusers.models.autoencoder_tiny import TinyAutoencoder
from uplift_diffusers.loaders.vae import decode_latents, encode_latents, load_vae, vae_scale_factor

TAEF2_ENCODER_PARAMS = 1_338_528
TAEF2_DECODER_PARAMS = 1_338_499
# First sorted BSDS500 test images (centre 256 x 256 crops), mean per-image PSNR measured with this
# model: first 12 -> 28.12 dB, first 24 -> 28.28 dB, all 200 -> 28.29 dB (the README's 28.3 dB).
PSNR_IMAGES = 12


# --------------------------------------------------------------------------- helpers
def _conv_params(sd, key, cin, cout, k=3, bias=True, gen=None):
    std = math.sqrt(2.0 / (cin * k * k)) * 0.5
    sd[f"{key}.weight"] = (torch.randn(cout, cin, k, k, generator=gen) * std).half()
    if bias:
        sd[f"{key}.bias"] = (torch.randn(cout, generator=gen) * 0.01).half()


def _block_params(sd, index, width, pooled, gen):
    for j in (0, 2, 4):
        _conv_params(sd, f"{index}.conv.{j}", width, width, gen=gen)
    if pooled:
        _conv_params(sd, f"{index}.pool.0", width, 4 * width, k=1, bias=False, gen=gen)
        sd[f"{index}.pool.1.weight"] = (1 + 0.1 * torch.randn(4 * width, generator=gen)).half()
        sd[f"{index}.pool.1.bias"] = (0.1 * torch.randn(4 * width, generator=gen)).half()
        _conv_params(sd, f"{index}.pool.3", 4 * width, width, k=1, bias=False, gen=gen)


def make_original_state_dicts(latent=4, width=64, enc_pooled=(), dec_pooled=(), seed=0):
    """State dicts in the original madebyollin/taesd layout, written from the layout description."""
    gen = torch.Generator().manual_seed(seed)
    enc, dec = {}, {}
    _conv_params(enc, "0", 3, width, gen=gen)
    _block_params(enc, 1, width, 1 in enc_pooled, gen)
    for stride_conv in (2, 6, 10):
        _conv_params(enc, str(stride_conv), width, width, bias=False, gen=gen)
        for b in (1, 2, 3):
            _block_params(enc, stride_conv + b, width, stride_conv + b in enc_pooled, gen)
    _conv_params(enc, "14", width, latent, gen=gen)
    _conv_params(dec, "1", latent, width, gen=gen)
    for b in (3, 4, 5):
        _block_params(dec, b, width, b in dec_pooled, gen)
    for up, count in ((6, 3), (11, 3), (16, 1)):
        _conv_params(dec, str(up + 1), width, width, bias=False, gen=gen)
        for b in range(count):
            _block_params(dec, up + 2 + b, width, up + 2 + b in dec_pooled, gen)
    _conv_params(dec, "19", width, 3, gen=gen)
    return enc, dec


def _ref_conv(sd, key, x, stride=1):
    w = sd[f"{key}.weight"].float()
    b = sd.get(f"{key}.bias")
    return F.conv2d(x, w, None if b is None else b.float(), stride=stride, padding=w.shape[-1] // 2)


def _ref_block(sd, i, x):
    if f"{i}.pool.0.weight" in sd:
        h = _ref_conv(sd, f"{i}.pool.0", x)
        h = F.group_norm(h, 4, sd[f"{i}.pool.1.weight"].float(), sd[f"{i}.pool.1.bias"].float())
        x = x + _ref_conv(sd, f"{i}.pool.3", F.relu(h))
    h = F.relu(_ref_conv(sd, f"{i}.conv.0", x))
    h = F.relu(_ref_conv(sd, f"{i}.conv.2", h))
    return F.relu(_ref_conv(sd, f"{i}.conv.4", h) + x)


def reference_encode(sd, x01):
    """Plain functional TAESD encoder on images in [0, 1] (independent of the model code)."""
    x = _ref_block(sd, 1, _ref_conv(sd, "0", x01))
    for s in (2, 6, 10):
        x = _ref_conv(sd, str(s), x, stride=2)
        for b in (1, 2, 3):
            x = _ref_block(sd, s + b, x)
    return _ref_conv(sd, "14", x)


def reference_decode(sd, z):
    """Plain functional TAESD decoder returning images in [0, 1]."""
    x = F.relu(_ref_conv(sd, "1", 3 * torch.tanh(z / 3)))
    for b in (3, 4, 5):
        x = _ref_block(sd, b, x)
    for up, count in ((6, 3), (11, 3), (16, 1)):
        x = _ref_conv(sd, str(up + 1), F.interpolate(x, scale_factor=2, mode="nearest"))
        for b in range(count):
            x = _ref_block(sd, up + 2 + b, x)
    return _ref_conv(sd, "19", x)


def save_pair(directory: Path, enc, dec, enc_name="encoder.pth", dec_name="decoder.pth"):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(enc, directory / enc_name)
    torch.save(dec, directory / dec_name)
    return directory / enc_name, directory / dec_name


@pytest.fixture
def classic_pair(tmp_path):
    enc, dec = make_original_state_dicts(latent=4, width=64)
    return (*save_pair(tmp_path / "taesd", enc, dec), enc, dec)


def load_center_crops(directory: Path, count: int, size: int = 256) -> torch.Tensor:
    images = []
    for path in sorted(directory.glob("*.jpg"))[:count]:
        with Image.open(path) as img:
            img = img.convert("RGB")
            left, top = (img.width - size) // 2, (img.height - size) // 2
            crop = np.array(img.crop((left, top, left + size, top + size)), dtype=np.float32)
        images.append(torch.from_numpy(crop).permute(2, 0, 1) / 255.0)
    return torch.stack(images)


# --------------------------------------------------------------------------- real TAEF2
def test_taef2_detects_variant_and_parameter_counts(taef2):
    assert sum(p.numel() for p in taef2.encoder.parameters()) == TAEF2_ENCODER_PARAMS
    assert sum(p.numel() for p in taef2.decoder.parameters()) == TAEF2_DECODER_PARAMS
    cfg = taef2.config
    assert cfg.latent_channels == 32
    assert list(cfg.encoder_pooled_blocks) == [11, 12, 13]
    assert list(cfg.decoder_pooled_blocks) == [3, 4, 5]
    assert list(cfg.block_out_channels) == [64, 64, 64, 64]
    assert (cfg.scaling_factor, cfg.shift_factor) == (1.0, 0.0)
    assert 2 ** (len(cfg.block_out_channels) - 1) == 8 == vae_scale_factor(taef2)
    assert taef2.dtype == torch.float32 and not taef2.training
    with torch.no_grad():
        latents = taef2.encode(torch.zeros(2, 3, 48, 64)).latents
    assert latents.shape == (2, 32, 6, 8)


def test_taef2_state_dict_is_a_prefix_mapping_of_the_files(taef2, taef2_dir):
    d = taef2_dir
    enc_file = torch.load(d / "encoder.pth", map_location="cpu", weights_only=True)
    state = taef2.state_dict()
    assert set(state) == {f"encoder.layers.{k}" for k in enc_file} | {
        f"decoder.layers.{k}" for k in torch.load(d / "decoder.pth", map_location="cpu", weights_only=True)
    }
    enc_back = taef2.encoder.layers.state_dict()  # the original file layout
    assert set(enc_back) == set(enc_file)
    for key, value in enc_file.items():
        assert torch.equal(enc_back[key].half(), value), key


def test_taef2_matches_functional_reference(taef2, taef2_dir):
    d = taef2_dir
    enc = torch.load(d / "encoder.pth", map_location="cpu", weights_only=True)
    dec = torch.load(d / "decoder.pth", map_location="cpu", weights_only=True)
    x01 = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        latents = taef2.encode(x01 * 2 - 1).latents
        images = taef2.decode(latents).sample
        torch.testing.assert_close(latents, reference_encode(enc, x01), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close((images + 1) / 2, reference_decode(dec, latents), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_taef2_reconstruction_psnr_on_bsds500(taef2, shared_path):
    images01 = load_center_crops(shared_path("data", "bsds500", "test"), PSNR_IMAGES)
    assert images01.shape == (PSNR_IMAGES, 3, 256, 256)
    with torch.no_grad():
        recon = taef2(images01 * 2 - 1).sample
    recon01 = ((recon + 1) / 2).clamp(0, 1)
    mse = (recon01 - images01).pow(2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    assert 27.0 < psnr < 31.0, psnr
    # A constant grey image is far worse: the metric really measures reconstruction.
    grey_psnr = (10 * torch.log10(1 / (images01 - 0.5).pow(2).mean(dim=(1, 2, 3)))).mean().item()
    assert psnr > grey_psnr + 10


def test_save_pretrained_round_trip(taef2, tmp_path):
    taef2.save_pretrained(tmp_path / "taef2")
    assert (tmp_path / "taef2" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "taef2" / "config.json").read_text())
    assert config["_class_name"] == "TinyAutoencoder" and config["latent_channels"] == 32
    loaded = TinyAutoencoder.from_pretrained(tmp_path / "taef2")
    assert list(loaded.config.encoder_pooled_blocks) == [11, 12, 13]
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).latents, taef2.encode(x).latents)
        z = taef2.encode(x).latents
        assert torch.equal(loaded.decode(z).sample, taef2.decode(z).sample)


def test_dtype_bfloat16(taef2_dir, taef2):
    d = taef2_dir
    half = TinyAutoencoder.from_original_checkpoint(d / "encoder.pth", d / "decoder.pth", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = taef2(x).sample
        out = half(x.bfloat16()).sample
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean() < 0.05
    with pytest.raises(ValueError, match="dtype"):
        half.encode(x)  # float32 input into a bfloat16 model


# --------------------------------------------------------------------------- synthetic variants
def test_classic_taesd_state_dict_loads_and_matches_reference(classic_pair):
    enc_path, dec_path, enc, dec = classic_pair
    model = TinyAutoencoder.from_original_checkpoint(enc_path, dec_path)
    assert model.config.latent_channels == 4
    assert list(model.config.encoder_pooled_blocks) == [] and list(model.config.decoder_pooled_blocks) == []
    assert not any(".pool." in k for k in model.state_dict())
    x01 = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        latents = model.encode(x01 * 2 - 1).latents
        assert latents.shape == (2, 4, 4, 6)
        torch.testing.assert_close(latents, reference_encode(enc, x01), rtol=1e-4, atol=1e-4)
        images = model.decode(latents).sample
        assert images.shape == (2, 3, 32, 48)
        torch.testing.assert_close((images + 1) / 2, reference_decode(dec, latents), rtol=1e-4, atol=1e-4)
        assert torch.equal(model(x01 * 2 - 1).sample, images)


def test_pooled_blocks_are_detected_anywhere(tmp_path):
    enc, dec = make_original_state_dicts(latent=16, width=16, enc_pooled=(1, 8), dec_pooled=(18,), seed=3)
    model = TinyAutoencoder.from_original_checkpoint(*save_pair(tmp_path, enc, dec))
    cfg = model.config
    assert (cfg.latent_channels, list(cfg.block_out_channels), cfg.pool_hidden_channels) == (16, [16] * 4, 64)
    assert list(cfg.encoder_pooled_blocks) == [1, 8] and list(cfg.decoder_pooled_blocks) == [18]
    x01 = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        latents = model.encode(x01 * 2 - 1).latents
        torch.testing.assert_close(latents, reference_encode(enc, x01), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            (model.decode(latents).sample + 1) / 2, reference_decode(dec, latents), rtol=1e-4, atol=1e-4
        )


def test_wrong_keys_are_listed(tmp_path):
    enc, dec = make_original_state_dicts(latent=4, width=16)
    del enc["3.conv.2.bias"]
    enc["99.weight"] = torch.zeros(1)
    dec["8.conv.0.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(ValueError) as info:
        TinyAutoencoder.from_original_checkpoint(*save_pair(tmp_path, enc, dec))
    message = str(info.value)
    assert "3.conv.2.bias" in message and "missing" in message
    assert "99.weight" in message and "unexpected" in message
    assert "8.conv.0.weight" in message and "(16, 16, 1, 1)" in message and "(16, 16, 3, 3)" in message
    assert "encoder_path" in message and "decoder_path" in message


def test_mismatched_pair_and_bad_files(tmp_path):
    enc4, _ = make_original_state_dicts(latent=4, width=16)
    _, dec8 = make_original_state_dicts(latent=8, width=16)
    with pytest.raises(ValueError, match="4 latent channels.*expects 8"):
        TinyAutoencoder.from_original_checkpoint(*save_pair(tmp_path / "mix", enc4, dec8))
    with pytest.raises(ValueError, match=r"encoder_path .* gives None latent channels .* decoder_path .* expects None"):
        TinyAutoencoder.from_original_checkpoint(*save_pair(tmp_path / "none", {"0.weight": enc4["0.weight"]}, {}))
    with pytest.raises(FileNotFoundError, match="encoder_path"):
        TinyAutoencoder.from_original_checkpoint(tmp_path / "nope.pth", tmp_path / "mix" / "decoder.pth")
    with pytest.raises(FileNotFoundError, match="decoder_path"):
        TinyAutoencoder.from_original_checkpoint(tmp_path / "mix" / "encoder.pth", tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="encoder_path"):
        TinyAutoencoder.from_original_checkpoint(tmp_path / "junk.pth", tmp_path / "mix" / "decoder.pth")
    with pytest.raises(ValueError, match="`dtype` must be a floating torch.dtype"):
        TinyAutoencoder.from_original_checkpoint(
            tmp_path / "mix" / "encoder.pth", tmp_path / "mix" / "decoder.pth", dtype=torch.int8
        )


def test_bad_config_values():
    with pytest.raises(ValueError, match="encoder_pooled_blocks"):
        TinyAutoencoder(encoder_pooled_blocks=[2])  # index 2 is a stride conv, not a block
    with pytest.raises(ValueError, match="block_out_channels"):
        TinyAutoencoder(block_out_channels=[64, 64])
    with pytest.raises(ValueError, match="latent_channels"):
        TinyAutoencoder(latent_channels=0)


def test_bad_inputs_raise(tiny_autoencoder):
    model = tiny_autoencoder
    good = torch.zeros(1, 3, 16, 16)
    bad_images = [
        (good[0], r"`x` must have shape B x 3 x H x W, got \(3, 16, 16\)"),
        (torch.zeros(1, 1, 16, 16), "`x` must have 3 channels, got 1"),
        (torch.zeros(1, 3, 20, 16), "multiples of 8.*pad"),
        (torch.zeros(0, 3, 16, 16), "empty"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating"),
        (good.double(), "dtype"),
    ]
    for tensor, pattern in bad_images:
        with pytest.raises(ValueError, match=pattern):
            model.encode(tensor)
    with pytest.raises(ValueError, match="`z` must have 4 channels, got 3"):
        model.decode(torch.zeros(1, 3, 2, 2))
    assert model.decode(torch.zeros(1, 4, 3, 5)).sample.shape == (1, 3, 24, 40)
    # values are not checked here (a device synchronisation per call): the pipelines check their inputs
    with torch.no_grad():
        assert torch.isnan(model.encode(torch.full((1, 3, 16, 16), float("nan"))).latents).all()


def test_grad_modes():
    model = make_tiny_autoencoder(encoder_pooled_blocks=[11], decoder_pooled_blocks=[3])
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_()
    with torch.no_grad():
        out = model(x).sample
    assert out.grad_fn is None and not out.requires_grad
    model(x).sample.square().mean().backward()  # usable inside training losses
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------- vae_loading
def test_load_vae_pth_pair_directories(tmp_path, classic_pair, taef2_dir):
    enc_path, dec_path, enc, _ = classic_pair
    vae = load_vae(enc_path.parent)
    assert isinstance(vae, TinyAutoencoder) and vae.config.latent_channels == 4
    assert torch.equal(vae.encoder.layers.state_dict()["0.weight"], enc["0.weight"].float())
    # prefixed names (taesd_encoder.pth / taesd_decoder.pth) are found too
    named = tmp_path / "named"
    named.mkdir()
    for src, name in ((enc_path, "taesd_encoder.pth"), (dec_path, "taesd_decoder.pth")):
        (named / name).symlink_to(src)
    assert load_vae(str(named), dtype=torch.float16).dtype == torch.float16
    (named / "other_encoder.pth").symlink_to(enc_path)
    with pytest.raises(ValueError, match="exactly one"):
        load_vae(named)
    real = tmp_path / "taef2"
    real.mkdir()
    for name in ("encoder.pth", "decoder.pth"):
        (real / name).symlink_to(taef2_dir / name)
    assert load_vae(real).config.latent_channels == 32


def test_load_vae_diffusers_directories(tmp_path, tiny_autoencoder):
    kl = make_kl_vae(blocks=2)  # factor 2: the factor is read from the config, not assumed to be 8
    kl.save_pretrained(tmp_path / "pipeline" / "vae")  # pipeline layout: VAE under vae/
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    loaded = load_vae(tmp_path / "pipeline")
    assert type(loaded) is AutoencoderKL
    assert vae_scale_factor(loaded) == 2

    tiny = tiny_autoencoder
    tiny.save_pretrained(tmp_path / "ours")
    assert type(load_vae(tmp_path / "ours")) is TinyAutoencoder

    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4).save_pretrained(
        tmp_path / "diffusers_tiny"
    )
    dtiny = load_vae(tmp_path / "diffusers_tiny")
    assert type(dtiny) is AutoencoderTiny
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(encode_latents(dtiny, x), dtiny.encode(x).latents)
        assert torch.equal(encode_latents(tiny, x), tiny.encode(x).latents)


def test_encode_latents_returns_kl_posterior_mode(tmp_path):
    kl = make_kl_vae(blocks=2)
    kl.save_pretrained(tmp_path / "kl")
    vae = load_vae(tmp_path / "kl")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        latents = encode_latents(vae, x)
        assert latents.shape == (2, 4, 8, 8)
        assert torch.equal(latents, posterior.mode())
        assert torch.equal(latents, posterior.mean)
        assert not torch.allclose(latents, posterior.sample(generator=torch.Generator().manual_seed(1)))
        images = decode_latents(vae, latents)
        raw = decode_latents(vae, latents * 50, clamp=False)
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, vae.decode(latents).sample.clamp(-1, 1))
    assert raw.abs().max() > 1  # clamp=False leaves the raw decoder output
    with pytest.raises(ValueError, match="multiples of 2"):
        encode_latents(vae, torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="3 channels"):
        encode_latents(vae, torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="4 channels, got 32"):
        decode_latents(vae, torch.zeros(1, 32, 8, 8))
    with pytest.raises(ValueError, match="vae must be"):
        encode_latents(object(), x)
    with pytest.raises(ValueError, match="block_out_channels"):
        vae_scale_factor(torch.nn.Linear(2, 2))


def test_load_vae_missing_and_invalid_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in ("./no_such_vae", str(tmp_path / "no_such_vae"), "~/no_such_vae_dir_xyz", "/no/such/dir"):
        with pytest.raises(FileNotFoundError, match="path_or_id"):
            load_vae(missing)
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileNotFoundError, match="path_or_id"):
        load_vae("sub/missing")  # relative path whose parent exists
    with pytest.raises(ValueError, match="neither"):
        load_vae(tmp_path / "sub")
    (tmp_path / "file.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="directory"):
        load_vae(tmp_path / "file.pth")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel.*AutoencoderKL"):
        load_vae(bad)
    with pytest.raises(ValueError, match="path_or_id"):
        load_vae("")


def test_load_vae_hub_id_falls_back_to_vae_subfolder(tmp_path, monkeypatch):
    """Online: a repository whose root has no config.json (the Hub answers "not found") is read
    from vae/. (Offline, from the cache: tests/test_hub_loading.py.)"""
    import huggingface_hub.constants as hub_constants
    from huggingface_hub.errors import EntryNotFoundError

    from uplift_diffusers.loaders import hub as hub_utils

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"_class_name": "TinyAutoencoder"}))
    requests = []

    def fake_download(repo_id, filename, **kwargs):
        requests.append((repo_id, filename))
        if filename == "config.json":
            raise EntryNotFoundError("no root config")  # what the Hub answers for a missing file
        return str(config)

    calls = []

    def fake_from_pretrained(cls, name, subfolder=None, dtype=None, **kwargs):
        calls.append((cls.__name__, name, subfolder, dtype))
        return make_tiny_autoencoder()

    monkeypatch.setattr(hub_utils, "hf_hub_download", fake_download)
    monkeypatch.setattr(TinyAutoencoder, "from_pretrained", classmethod(fake_from_pretrained))
    assert isinstance(load_vae("someone/some-pipeline", dtype=torch.float16), TinyAutoencoder)
    assert requests == [("someone/some-pipeline", "config.json"), ("someone/some-pipeline", "vae/config.json")]
    assert calls == [("TinyAutoencoder", "someone/some-pipeline", "vae", torch.float16)]
    # a repository with neither: one error naming both places
    def nothing_there(repo_id, filename, **kwargs):
        raise EntryNotFoundError(filename)

    monkeypatch.setattr(hub_utils, "hf_hub_download", nothing_there)
    with pytest.raises(FileNotFoundError, match=r"'someone/empty' holds none of \['config.json', 'vae/config.json'\]"):
        load_vae("someone/empty")


def test_encode_and_decode_under_sequential_cpu_offload():
    """Under accelerate's sequential offload (what ``enable_sequential_cpu_offload`` sets up) the
    weights rest on the ``meta`` device and the hooks bring them for each call: the inputs stay
    on the caller's (execution) device, only the dtype is the VAE's."""
    from accelerate import cpu_offload
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected_latents = encode_latents(vae, x)
        expected_images = decode_latents(vae, expected_latents)
        cpu_offload(vae, execution_device=torch.device("cpu"))
        assert next(vae.parameters()).device.type == "meta"
        latents = encode_latents(vae, x.double())
        images = decode_latents(vae, latents)
    assert latents.device.type == "cpu" and latents.dtype == torch.float32
    torch.testing.assert_close(latents, expected_latents)
    torch.testing.assert_close(images, expected_images)
