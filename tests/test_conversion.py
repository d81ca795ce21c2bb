"""Loading the authors' checkpoints: parity with the official implementation's outputs, and
generality of the converter on a variant config that is not among the shared fixtures.

The variant check does not use the package to build its expectations: the official-layout
state dict is generated from the YAML following the architecture doc's key layout, and the
expected outputs come from a plain functional forward pass written from the doc below
(``reference_forward``), which itself is first checked against the official outputs.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.loaders.single_file import (
    OFFICIAL_FIELDS_NOT_IN_WEIGHTS,
    config_from_original,
    config_from_state_dict,
    convert_original_state_dict,
    convert_to_original_state_dict,
)
from uplift_diffusers.utils.state_dicts import load_state_dict_file

MINI = ("fixtures", "uplift-reference", "sd15vae-mini")
CASES = ["square", "batch2_nonsquare"]
# Local Attender neighbourhoods, as listed in the architecture doc (channel order).
OFFSETS = {
    5: [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)],
    9: [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)],
    17: [
        (-2, -2), (-2, 0), (-2, 2), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0),
        (0, 1), (0, 2), (1, -1), (1, 0), (1, 1), (2, -2), (2, 0), (2, 2),
    ],
    25: [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)],
}
PADDING = {5: 1, 9: 1, 17: 2, 25: 2}


# ----------------------------------------------------------------------------- reference forward (from the doc)
def ref_conv_block(sd, prefix, x):
    """Conv3x3 (no bias) -> LayerNorm over channels (eps 1e-6) -> ReLU -> Conv1x1, + residual."""
    y = F.conv2d(x, sd[f"{prefix}.conv.0.weight"], padding=1)
    mean = y.mean(dim=1, keepdim=True)
    var = ((y - mean) ** 2).mean(dim=1, keepdim=True)
    y = (y - mean) / torch.sqrt(var + 1e-6)
    y = y * sd[f"{prefix}.conv.1.weight"][None, :, None, None] + sd[f"{prefix}.conv.1.bias"][None, :, None, None]
    y = F.conv2d(torch.relu(y), sd[f"{prefix}.conv.3.weight"], sd[f"{prefix}.conv.3.bias"])
    c_out, c_in = y.shape[1], x.shape[1]
    if c_in >= c_out:
        residual = x[:, :c_out]
    else:
        residual = torch.cat([x, x.new_zeros(x.shape[0], c_out - c_in, *x.shape[-2:])], dim=1)
    return y + residual


def ref_nearest(feature, size):
    """Nearest resampling, source index = floor(dst * in / out), in integer arithmetic."""
    (in_h, in_w), (out_h, out_w) = feature.shape[-2:], size
    rows = torch.arange(out_h) * in_h // out_h
    cols = torch.arange(out_w) * in_w // out_w
    return feature[:, :, rows][:, :, :, cols]


def ref_concat(x, skip, noise_channels):
    parts = [x] if skip is None else [x, ref_nearest(skip, x.shape[-2:])]
    parts.append(x.new_zeros(x.shape[0], noise_channels, *x.shape[-2:]))  # ncat_s = 0: zero channels
    return torch.cat(parts, dim=1)


def ref_attender(sd, guide, value, n):
    logits = F.conv2d(guide, sd["attender.conv1.weight"], sd["attender.conv1.bias"]) + guide[:, :n]
    weights = torch.softmax(logits, dim=1)
    pad = PADDING[n]
    padded = F.pad(value, (pad, pad, pad, pad), mode="replicate")
    h, w = value.shape[-2:]
    out = 0
    for k, (dy, dx) in enumerate(OFFSETS[n]):
        shifted = padded[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        shifted = shifted.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # [2y+i, 2x+j] <- [y, x]
        out = out + weights[:, k : k + 1] * shifted
    return out


def reference_forward(sd, config, latents, image, num_steps):
    """The doc's UPLiFT, straight from an official-layout state dict; returns every step."""
    uplift = config["uplift"]
    enc, dec, ref = uplift["encoder"], uplift["decoder"], uplift["refiner"]
    features, x = [], image
    for g in range(enc["down_steps"] + 1):
        for i in range(enc[f"block_{g}"]["count"]):
            x = ref_conv_block(sd, f"encoder.block_{g}.blocks.{i}", x)
        features.append(x)
    z, steps = latents, []
    for _ in range(num_steps):
        x = ref_concat(z, features[-1], dec.get("ncat_c", 0))
        for i in range(dec["block_0"]["count"]):
            x = ref_conv_block(sd, f"decoder.block_0.blocks.{i}", x)
        up = F.conv_transpose2d(x, sd["decoder.up_1.up.weight"], sd["decoder.up_1.up.bias"], stride=2)
        if dec["up_1"]["residual"] == "bilinear":
            up = up + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = ref_concat(up, features[-2], dec.get("ncat_c", 0))
        for i in range(dec["block_1"]["count"]):
            x = ref_conv_block(sd, f"decoder.block_1.blocks.{i}", x)
        attended = ref_attender(sd, x, z, uplift["attender"])
        ref_con = ref.get("ref_con")
        x = ref_concat(attended, None if ref_con is None else features[ref_con], ref.get("ncat_c", 0))
        for i in range(ref["block_0"]["count"]):
            x = ref_conv_block(sd, f"refiner.blocks.{i}", x)
        z = F.conv2d(x, sd["ref_outc.weight"], sd["ref_outc.bias"])
        steps.append(z)
    return steps


# ----------------------------------------------------------------------------- official-layout state dict (from the doc)
def official_state_dict(config, seed=0):
    """Random weights in the official key layout, with the shapes the doc's description implies."""
    gen = torch.Generator().manual_seed(seed)
    uplift = config["uplift"]
    latent = config["backbone"]["channel"]
    sd = {}

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def block(prefix, c_in, c_out):
        sd[f"{prefix}.conv.0.weight"] = randn(c_out, c_in, 3, 3, scale=1 / math.sqrt(9 * c_in))
        sd[f"{prefix}.conv.1.weight"] = 1 + randn(c_out, scale=0.1)
        sd[f"{prefix}.conv.1.bias"] = randn(c_out, scale=0.1)
        sd[f"{prefix}.conv.3.weight"] = randn(c_out, c_out, 1, 1, scale=1 / math.sqrt(c_out))
        sd[f"{prefix}.conv.3.bias"] = randn(c_out, scale=0.1)
        return c_out

    def stage(prefix, section, c_in):
        for i, width in enumerate(section["hc"]):
            c_in = block(f"{prefix}.{i}", c_in, width)
        return c_in

    enc = uplift["encoder"]
    widths, c = [], 3
    for g in range(enc["down_steps"] + 1):
        c = stage(f"encoder.block_{g}.blocks", enc[f"block_{g}"], c)
        widths.append(c)
    dec = uplift["decoder"]
    c = stage("decoder.block_0.blocks", dec["block_0"], latent + widths[-1] + dec.get("ncat_c", 0))
    sd["decoder.up_1.up.weight"] = randn(c, c, 2, 2, scale=1 / math.sqrt(4 * c))  # ConvTranspose2d: in x out x 2 x 2
    sd["decoder.up_1.up.bias"] = randn(c, scale=0.1)
    c = stage("decoder.block_1.blocks", dec["block_1"], c + widths[-2] + dec.get("ncat_c", 0))
    n = uplift["attender"]
    sd["attender.conv1.weight"] = randn(n, c, 1, 1, scale=1 / math.sqrt(c))
    sd["attender.conv1.bias"] = randn(n, scale=0.1)
    ref = uplift["refiner"]
    skip = 0 if ref.get("ref_con") is None else widths[ref["ref_con"]]
    c = stage("refiner.blocks", ref["block_0"], latent + skip + ref.get("ncat_c", 0))
    sd["ref_outc.weight"] = randn(latent, c, 1, 1, scale=1 / math.sqrt(c))
    sd["ref_outc.bias"] = randn(latent, scale=0.1)
    return sd


def _set_stage(section, widths):
    section["hc"] = list(widths)
    section["count"] = len(widths)


def variant_config(mini_config, kind):
    """Official-format YAML variants that are not among the shared fixtures."""
    config = copy.deepcopy(mini_config)
    uplift = config["uplift"]
    if kind == "widths-attender9-refcon-2":
        config["backbone"]["channel"] = 16
        for g, width in enumerate([8, 12, 16, 24, 32]):
            _set_stage(uplift["encoder"][f"block_{g}"], [width] * 3)
        uplift["attender"] = 9
        _set_stage(uplift["decoder"]["block_0"], [20])
        _set_stage(uplift["decoder"]["block_1"], [20, 20])
        uplift["decoder"]["ncat_c"] = 2
        uplift["refiner"]["ncat_c"] = 3
        _set_stage(uplift["refiner"]["block_0"], [24] * 5)
        uplift["refiner"]["ref_con"] = -2
    elif kind == "no-bilinear-attender25-refcon0":
        config["backbone"]["channel"] = 3
        for g, width in enumerate([6, 6, 10, 10, 14]):
            _set_stage(uplift["encoder"][f"block_{g}"], [width, width])
        uplift["attender"] = 25
        uplift["decoder"]["up_1"]["residual"] = "none"
        _set_stage(uplift["decoder"]["block_0"], [26, 26])
        _set_stage(uplift["decoder"]["block_1"], [26])
        uplift["decoder"]["ncat_c"] = 0
        uplift["refiner"]["ncat_c"] = 1
        _set_stage(uplift["refiner"]["block_0"], [12, 12])
        uplift["refiner"]["ref_con"] = 0
    else:
        raise AssertionError(kind)
    return config


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def mini(shared_path):
    folder = shared_path(*MINI)
    with open(folder / "uplift_original.yaml") as handle:
        config = yaml.safe_load(handle)
    return dict(
        folder=folder,
        checkpoint=folder / "uplift_original.safetensors",
        yaml=folder / "uplift_original.yaml",
        config=config,
        state_dict=load_file(str(folder / "uplift_original.safetensors")),
        cases=load_file(str(folder / "cases.safetensors")),
    )


def _max_error_over_cases(model, cases):
    worst = 0.0
    for case in CASES:
        latents, image = cases[f"{case}.latents"], cases[f"{case}.image"]
        for iters in (1, 2):
            with torch.no_grad():
                out = model(latents, image, num_steps=iters, output_intermediate=True)
            assert len(out.intermediate) == iters
            for step in range(1, iters + 1):
                expected = cases[f"{case}.iters{iters}.step{step}"]
                got = out.intermediate[step - 1]
                assert got.shape == expected.shape, (case, iters, step)
                worst = max(worst, (got - expected).abs().max().item())
    return worst


# ----------------------------------------------------------------------------- parity with the official outputs
@pytest.mark.parametrize("source", ["safetensors", "pth", "pth-wrapped", "state-dict"])
def test_parity_with_official_outputs(mini, tmp_path, source):
    if source == "safetensors":
        checkpoint = mini["checkpoint"]
    elif source == "pth":
        checkpoint = tmp_path / "uplift.pth"
        torch.save(mini["state_dict"], checkpoint)
    elif source == "pth-wrapped":  # a training checkpoint: {"state_dict": ...} with DataParallel prefixes
        checkpoint = tmp_path / "uplift.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in mini["state_dict"].items()}}, checkpoint)
    else:
        checkpoint = dict(mini["state_dict"])
    model = UPLiFTLatentUpscaler.from_single_file(checkpoint, mini["yaml"])
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in mini["state_dict"].values())
    assert model.config.noise_scale == 0.0  # ncat_s: 0 in the YAML -> deterministic
    worst = _max_error_over_cases(model, mini["cases"])
    print(f"max abs error vs official outputs ({source}): {worst:.3g}")
    assert worst <= 1e-4


def test_parity_with_parsed_yaml_dict(mini):
    model = UPLiFTLatentUpscaler.from_single_file(mini["checkpoint"], mini["config"])
    assert _max_error_over_cases(model, mini["cases"]) <= 1e-4


def test_reference_forward_reproduces_official_outputs(mini):
    """The test's own reference (used for the variants below) is right on the official outputs."""
    worst = 0.0
    for case in CASES:
        latents, image = mini["cases"][f"{case}.latents"], mini["cases"][f"{case}.image"]
        steps = reference_forward(mini["state_dict"], mini["config"], latents, image, 2)
        for step, got in enumerate(steps, start=1):
            worst = max(worst, (got - mini["cases"][f"{case}.iters2.step{step}"]).abs().max().item())
    assert worst <= 1e-4


def test_torch_dtype_argument(mini):
    model = UPLiFTLatentUpscaler.from_single_file(mini["checkpoint"], mini["yaml"], torch_dtype=torch.float64)
    assert model.dtype == torch.float64
    case = mini["cases"]
    with torch.no_grad():
        out = model(case["square.latents"], case["square.image"]).sample
    torch.testing.assert_close(out.float(), case["square.iters1.step1"], rtol=0, atol=1e-4)


def test_official_sd15_yaml_is_the_default_config(shared_path):
    kwargs = config_from_original(shared_path("fixtures", "uplift-reference", "uplift_sd1.5vae.yaml"))
    with torch.device("meta"):
        converted = UPLiFTLatentUpscaler(**kwargs)
        default = UPLiFTLatentUpscaler()
    assert sum(p.numel() for p in converted.parameters()) == 53_487_445
    assert {k: v.shape for k, v in converted.state_dict().items()} == {k: v.shape for k, v in default.state_dict().items()}
    noise_layout = [(None if shape is None else shape[1], scale) for shape, scale in converted._noise_layout((1, 4, 2, 2))]
    assert noise_layout == [(4, 1.0)] * 3 and converted._noise_layout((1, 4, 2, 2)) == default._noise_layout((1, 4, 2, 2))

    def normalised(config):
        out = {k: v for k, v in config.items() if not k.startswith("_")}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out.pop("refiner_noise_channels")  # compared above through the resolved noise settings
        out.pop("refiner_noise_scale")
        out.pop("trained_upscale_factors")  # the class default is None (unknown); the YAML says
        out.pop("latent_space")  # the class default is None (unknown); the authors' format is SD1.5's
        return out

    assert normalised(converted.config) == normalised(default.config)
    assert converted.config.latent_space == "sd15"
    assert converted.config.trained_upscale_factors == [2, 4, 8, 16]  # down_steps 4, multi_step: every depth
    assert converted.attender.offsets == OFFSETS[17]


# ----------------------------------------------------------------------------- a variant not in shared/
@pytest.mark.parametrize("kind", ["widths-attender9-refcon-2", "no-bilinear-attender25-refcon0"])
def test_converter_generalises_to_a_variant(mini, tmp_path, kind):
    config = variant_config(mini["config"], kind)
    yaml_path = tmp_path / "variant.yaml"
    yaml_path.write_text(yaml.safe_dump(config))
    state_dict = official_state_dict(config, seed=3)
    model = UPLiFTLatentUpscaler.from_single_file(state_dict, yaml_path)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in state_dict.values())
    assert model.config.latent_channels == config["backbone"]["channel"]
    assert model.attender.offsets == OFFSETS[config["uplift"]["attender"]]

    latent = config["backbone"]["channel"]
    latents = torch.randn(2, latent, 3, 5)
    image = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        out = model(latents, image, num_steps=2, output_intermediate=True, noise_scale=0.0)
        expected = reference_forward(state_dict, config, latents, image, 2)
    assert [s.shape for s in out.intermediate] == [(2, latent, 6, 10), (2, latent, 12, 20)]
    for got, want in zip(out.intermediate, expected):
        assert want.abs().max() > 1e-2  # not a degenerate all-zero output
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- bad checkpoints and configs
def test_missing_key_is_listed(mini):
    state_dict = dict(mini["state_dict"])
    del state_dict["refiner.blocks.1.conv.1.weight"]
    with pytest.raises(ValueError, match=r"missing keys: \['refiner\.blocks\.1\.conv\.1\.weight'\]"):
        UPLiFTLatentUpscaler.from_single_file(state_dict, mini["yaml"])


@pytest.mark.parametrize(
    "key, shape, match",
    [
        ("refiner.blocks.3.conv.0.weight", (64, 64, 3, 3), r"unexpected keys: \['refiner\.blocks\.3\.conv\.0\.weight'\]"),
        ("decoder.block_0.blocks.0.conv.2.weight", (64,), r"Unexpected keys .*'decoder\.block_0\.blocks\.0\.conv\.2\.weight'"),
        ("ema.shadow", (3,), r"Unexpected keys .*\['ema\.shadow'\]"),
    ],
)
def test_extra_key_is_listed(mini, key, shape, match):
    state_dict = dict(mini["state_dict"])
    state_dict[key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=match):
        UPLiFTLatentUpscaler.from_single_file(state_dict, mini["yaml"])


def test_wrong_shape_is_listed(mini):
    state_dict = dict(mini["state_dict"])
    state_dict["attender.conv1.weight"] = torch.zeros(9, 64, 1, 1)
    with pytest.raises(ValueError, match=r"attender\.conv1\.weight: checkpoint \(9, 64, 1, 1\) vs model \(17, 64, 1, 1\)"):
        UPLiFTLatentUpscaler.from_single_file(state_dict, mini["yaml"])


def test_checkpoint_for_another_config_lists_all_problems(mini):
    """The mini checkpoint with another config: one error listing every kind of mismatch."""
    config = variant_config(mini["config"], "widths-attender9-refcon-2")
    with pytest.raises(ValueError) as info:
        UPLiFTLatentUpscaler.from_single_file(mini["state_dict"], config)
    message = str(info.value)
    assert "pass the YAML the checkpoint was trained with" in message
    assert "missing keys: ['encoder.block_0.blocks.2.conv.0.weight'" in message  # 3 blocks per group in the config
    assert "'refiner.blocks.4.conv.3.bias'" in message  # 5 refiner blocks in the config, 3 in the checkpoint
    assert "encoder.block_0.blocks.0.conv.0.weight:" not in message  # (8, 3, 3, 3) in both: not a mismatch
    assert "encoder.block_1.blocks.0.conv.0.weight: checkpoint (16, 8, 3, 3) vs model (12, 8, 3, 3)" in message
    assert "attender.conv1.weight: checkpoint (17, 64, 1, 1) vs model (9, 20, 1, 1)" in message


def test_convert_original_state_dict_renames_every_key(mini):
    converted = convert_original_state_dict(mini["state_dict"])
    assert len(converted) == len(mini["state_dict"])
    model = UPLiFTLatentUpscaler(**config_from_original(mini["yaml"]))
    assert set(converted) == set(model.state_dict())


def _edit(config, path, value):
    config = copy.deepcopy(config)
    section = config
    for key in path[:-1]:
        section = section[key]
    if value is _DELETE:
        del section[path[-1]]
    else:
        section[path[-1]] = value
    return config


_DELETE = object()


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("uplift", "up_factor"), 4, r"`uplift\.up_factor` = 4 is not supported"),
        (("uplift", "no_UEP"), False, r"`uplift\.no_UEP` = False is not supported"),
        (("uplift", "enc_share"), False, r"`uplift\.enc_share` = False is not supported"),
        (("uplift", "encoder", "block_2", "block"), "DoubleConv", r"`uplift\.encoder\.block_2\.block` = 'DoubleConv'"),
        (("uplift", "encoder", "block_1", "norm"), "batch", r"`uplift\.encoder\.block_1\.norm` = 'batch'"),
        (("uplift", "encoder", "down_3", "down_op"), "maxpool", r"`uplift\.encoder\.down_3\.down_op` = 'maxpool'"),
        (("uplift", "encoder", "block_0", "count"), 3, r"`uplift\.encoder\.block_0\.count` = 3 but `hc` lists 2"),
        (("uplift", "decoder", "up_steps"), 2, r"`uplift\.decoder\.up_steps` = 2"),
        (("uplift", "decoder", "enc_resample"), "bilinear", r"`uplift\.decoder\.enc_resample` = 'bilinear'"),
        (("uplift", "decoder", "up_1", "up_op"), "pixelshuffle", r"`uplift\.decoder\.up_1\.up_op` = 'pixelshuffle'"),
        (("uplift", "refiner", "ref_con"), 5, r"`uplift\.refiner\.ref_con` = 5"),
        (("uplift", "attender"), 7, r"`neighborhood` must be one of"),
        (("uplift", "decoder"), _DELETE, r"`uplift\.decoder` is missing"),
        (("uplift",), _DELETE, r"`uplift` is missing"),
    ],
)
def test_unsupported_config_values_are_named(mini, path, value, match):
    config = _edit(mini["config"], path, value)
    with pytest.raises(ValueError, match=match):
        UPLiFTLatentUpscaler.from_single_file(mini["state_dict"], config)


def test_missing_files(mini, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`pretrained_model_link_or_path` file not found: .*nothing\.safetensors"):
        UPLiFTLatentUpscaler.from_single_file(tmp_path / "nothing.safetensors", mini["yaml"])
    with pytest.raises(FileNotFoundError, match=r"`pretrained_model_link_or_path` file not found: .*nothing\.pth"):
        UPLiFTLatentUpscaler.from_single_file(str(tmp_path / "nothing.pth"), mini["yaml"])
    with pytest.raises(FileNotFoundError, match=r"`config` file not found: .*nothing\.yaml"):
        UPLiFTLatentUpscaler.from_single_file(mini["checkpoint"], tmp_path / "nothing.yaml")


def test_bad_checkpoint_arguments(mini, tmp_path):
    with pytest.raises(ValueError, match=r"`pretrained_model_link_or_path` must be a file path or a state dict, got int"):
        UPLiFTLatentUpscaler.from_single_file(3, mini["yaml"])
    wrong_suffix = tmp_path / "weights.txt"
    wrong_suffix.write_text("not weights")
    with pytest.raises(ValueError, match=r"`checkpoint` .*weights\.txt' has suffix '\.txt'"):
        load_state_dict_file(wrong_suffix)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(ValueError, match=r"`checkpoint` .*list\.pth' does not hold a state dict of tensors"):
        load_state_dict_file(not_a_state_dict)
    with pytest.raises(ValueError, match=r"`config` must be a path to an official UPLiFT YAML or a dict, got list"):
        UPLiFTLatentUpscaler.from_single_file(mini["checkpoint"], [1, 2])


# ----------------------------------------------------------------------------- the config read off the weights
_NOISE_FIELDS = ("noise_scale", "refiner_noise_channels", "refiner_noise_scale")


def _without_noise_fields(kwargs):
    return {k: v for k, v in kwargs.items() if k not in _NOISE_FIELDS}


def test_config_from_state_dict_of_the_mini_fixture_is_its_yaml(mini):
    inferred = config_from_state_dict(mini["state_dict"])
    from_yaml = config_from_original(mini["yaml"])
    assert _without_noise_fields(inferred) == _without_noise_fields(from_yaml)
    # the noise scale is not in the weights: the official value; the refiner's noise channels as the decoder's
    assert (inferred["noise_scale"], inferred["refiner_noise_channels"], inferred["refiner_noise_scale"]) == (1.0, None, None)
    assert from_yaml["refiner_noise_channels"] == inferred["noise_channels"] == 4
    # without the YAML the fixture reproduces the official outputs once its noise scale (0) is given
    model = UPLiFTLatentUpscaler.from_single_file(mini["checkpoint"])
    latents, image = mini["cases"]["batch2_nonsquare.latents"], mini["cases"]["batch2_nonsquare.image"]
    with torch.no_grad():
        steps = model(latents, image, num_steps=2, noise_scale=0.0, output_intermediate=True).intermediate
    for step, got in enumerate(steps, start=1):
        torch.testing.assert_close(got, mini["cases"][f"batch2_nonsquare.iters2.step{step}"], rtol=0, atol=1e-4)


def config_fields(model):
    """The model's config without diffusers' bookkeeping, sequences as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")}


def test_config_from_state_dict_of_the_release_is_the_default_model():
    with torch.device("meta"):
        default = UPLiFTLatentUpscaler()
    inferred = config_from_state_dict(convert_to_original_state_dict(default.state_dict()))
    with torch.device("meta"):
        rebuilt = UPLiFTLatentUpscaler(**inferred)
    # every field is inferred or the official value; the trained factors stay unknown (None, the default)
    assert config_fields(rebuilt) == {**config_fields(default), "latent_space": "sd15"}
    assert {k: inferred[k] for k in OFFICIAL_FIELDS_NOT_IN_WEIGHTS} == OFFICIAL_FIELDS_NOT_IN_WEIGHTS


def test_config_from_state_dict_of_a_variant(mini):
    """A variant with uneven widths, 3 blocks per group, the 9-neighbourhood and ref_con -2."""
    config = variant_config(mini["config"], "widths-attender9-refcon-2")
    config["uplift"]["refiner"]["ncat_c"] = config["uplift"]["decoder"]["ncat_c"]  # as in the official configs
    inferred = config_from_state_dict(official_state_dict(config, seed=4))
    from_yaml = config_from_original(config)
    assert _without_noise_fields(inferred) == _without_noise_fields(from_yaml)
    assert inferred["refiner_encoder_group"] == -2 and inferred["encoder_blocks_per_group"] == 3


@pytest.mark.parametrize("kind", ["widths-attender9-refcon-2", "no-bilinear-attender25-refcon0"])
def test_config_from_state_dict_refuses_what_the_shapes_do_not_tell(mini, kind):
    """Refiner noise channels unlike the decoder's: the YAML is needed, and the error says so."""
    state_dict = official_state_dict(variant_config(mini["config"], kind), seed=4)
    with pytest.raises(ValueError, match="refiner's input width .* matches no encoder group.*pass the official YAML"):
        config_from_state_dict(state_dict)


def test_config_from_state_dict_bad_layouts(mini):
    state_dict = dict(mini["state_dict"])
    del state_dict["ref_outc.weight"]
    with pytest.raises(ValueError, match=r"no 'ref_outc\.weight' \(not the official key layout\?\)"):
        config_from_state_dict(state_dict)
    ours = convert_original_state_dict(mini["state_dict"])  # our key layout is not the official one
    with pytest.raises(ValueError, match="not the official key layout"):
        config_from_state_dict(ours)
    state_dict = dict(mini["state_dict"])
    state_dict["decoder.block_0.blocks.0.conv.0.weight"] = torch.zeros(64, 60, 3, 3)
    with pytest.raises(ValueError, match=r"decoder's input widths \(60, 132\) do not fit"):
        config_from_state_dict(state_dict)


def test_convert_to_original_state_dict_inverts_the_renaming(mini):
    ours = convert_original_state_dict(mini["state_dict"])
    back = convert_to_original_state_dict(ours)
    assert back.keys() == mini["state_dict"].keys()
    assert all(back[k] is mini["state_dict"][k] for k in back)
    with pytest.raises(ValueError, match=r"Keys without an official UPLiFT name .*\['ema'\]"):
        convert_to_original_state_dict({**ours, "ema": torch.zeros(1)})


# ----------------------------------------------------------------------------- files that are no checkpoint (issue #12)
@pytest.mark.parametrize(
    "train, factors",
    [({}, None), ({"down_steps": 3, "multi_step": True}, [2, 4, 8]), ({"down_steps": 3, "multi_step": True, "only_deepest": True}, [2, 4, 8]),
     ({"down_steps": 4, "multi_step": False}, [2])],
)
def test_trained_factors_from_the_yaml(mini, train, factors):
    assert config_from_original({**mini["config"], "train": train})["trained_upscale_factors"] == factors


def test_unreadable_files_are_named_without_unsafe_advice(tmp_path):
    junk = bytes(range(256)) * 16
    (tmp_path / "junk.pth").write_bytes(junk)
    (tmp_path / "junk.safetensors").write_bytes(junk)
    with pytest.raises(ValueError, match=r"`ckpt` '.*junk\.pth' is not a PyTorch checkpoint \(.*\): it is corrupt") as raised:
        load_state_dict_file(tmp_path / "junk.pth", "ckpt")
    assert "weights_only" not in str(raised.value)
    with pytest.raises(ValueError, match=r"'.*junk\.safetensors' is not a readable \.safetensors file \(.*\): it is corrupt"):
        load_state_dict_file(tmp_path / "junk.safetensors")
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.zeros(64)}, whole)
    (tmp_path / "cut.pth").write_bytes(whole.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"'.*cut\.pth' is not a PyTorch checkpoint \(.*\): it is corrupt, truncated") as raised:
        load_state_dict_file(tmp_path / "cut.pth")
    assert "weights_only" not in str(raised.value)


class _Pickled:
    pass


def test_pickled_objects_are_refused_for_safety(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"w": torch.zeros(2), "object": _Pickled()}, path)
    with pytest.raises(ValueError) as raised:
        load_state_dict_file(path)
    message = str(raised.value)
    assert "was refused for safety" in message and "_Pickled" in message and "safetensors.torch.save_file" in message
    assert "weights_only" not in message and "\n" not in message


def test_an_already_converted_state_dict_is_recognised(tmp_path):
    from tiny_models import make_upscaler

    model = make_upscaler(4)
    model.save_pretrained(tmp_path / "converted")
    with pytest.raises(ValueError, match=r"`pretrained_model_link_or_path` '.*converted.*' is already converted.*"
                                         r"load its folder '.*converted' with UPLiFTLatentUpscaler.from_pretrained"):
        UPLiFTLatentUpscaler.from_single_file(next((tmp_path / "converted").glob("*.safetensors")))
    with pytest.raises(ValueError, match="`pretrained_model_link_or_path` 'the state dict' is already converted"):
        UPLiFTLatentUpscaler.from_single_file(model.state_dict())


def test_the_authors_format_is_in_the_sd15_latent_space(mini, tmp_path):
    """A model from the authors' format records the SD1.5 VAE's latent space, unless its YAML names
    another pipeline's VAE or it has other than 4 latent channels; a converted folder keeps it."""
    model = UPLiFTLatentUpscaler.from_single_file(mini["checkpoint"])
    assert model.config.latent_space == "sd15"
    assert UPLiFTLatentUpscaler.from_single_file(mini["checkpoint"], mini["yaml"]).config.latent_space == "sd15"
    sdxl = _edit(mini["config"], ("backbone", "diff_pipe_name"), "stabilityai/stable-diffusion-xl-base-1.0")
    assert UPLiFTLatentUpscaler.from_single_file(mini["state_dict"], sdxl).config.latent_space is None
    config = variant_config(mini["config"], "widths-attender9-refcon-2")  # 16 latent channels
    assert UPLiFTLatentUpscaler.from_single_file(official_state_dict(config), config).config.latent_space is None
    model.save_pretrained(tmp_path / "converted")
    assert UPLiFTLatentUpscaler.from_pretrained(tmp_path / "converted").config.latent_space == "sd15"
