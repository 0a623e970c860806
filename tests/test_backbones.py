"""Backbone registry, preprocessing and parity with the official code's reference outputs."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectpipe.errors import InputError
from affectpipe.extract.backbones import backbone_names, get_backbone, register
from affectpipe.extract.weights import get_weights_entry, resolve_weights
from affectpipe.schema import EXPR_NAMES

TOLERANCE = 1e-4
# Fixture file, reference file, reference key of the embedding, per backbone.
FIXTURES = {
    "mt-emotieffnet": ("emotieffnet/enet_b0_8_va_mtl_calib.pt", "emotieffnet", "features"),
    "ddamfn": ("ddamfn/ddamfn_affectnet8_calib.pth", "ddamfn", "embedding"),
}
# Words the backbones use for ABAW's classes (Contempt stands in for Other).
ABAW_SYNONYMS = {
    "neutral": {"neutral"},
    "anger": {"anger", "angry"},
    "disgust": {"disgust"},
    "fear": {"fear"},
    "happiness": {"happiness", "happy"},
    "sadness": {"sadness", "sad"},
    "surprise": {"surprise"},
    "other": {"contempt"},
}


@pytest.fixture(scope="module")
def loaded(fixtures_dir: Path) -> dict:
    """Each fixture backbone loaded through the real path: resolve_weights -> spec.load."""
    out = {}
    for name, (weights_file, _, _) in FIXTURES.items():
        spec = get_backbone(name)
        resolved = resolve_weights(spec.weights, override=fixtures_dir / weights_file)
        out[name] = (spec, spec.load(resolved.path))
    return out


def reference(fixtures_dir: Path, name: str) -> dict[str, np.ndarray]:
    folder = FIXTURES[name][1]
    return dict(np.load(fixtures_dir / folder / "ref_calib_dev.npz"))


def preprocess_dev_images(fixtures_dir: Path, spec, names) -> torch.Tensor:
    images = [Image.open(fixtures_dir / "images" / "dev" / str(n)).convert("RGB") for n in names]
    return torch.stack([spec.preprocess(img) for img in images])


def test_registry_lists_the_builtin_backbones():
    assert {"mt-emotieffnet", "ddamfn", "enet_b2_8", "enet_b0_8_best_vgaf"} <= set(backbone_names())
    with pytest.raises(InputError, match="unknown backbone 'nope'.*mt-emotieffnet"):
        get_backbone("nope")


def test_every_backbone_names_a_weights_entry():
    for name in backbone_names():
        entry = get_weights_entry(get_backbone(name).weights)
        assert entry.backbone == name
        # A file comes from https URLs or from a pinned wheel on the package index.
        assert entry.urls or (entry.package and entry.sha256 and entry.package.wheel_sha256)
        assert all(url.startswith("https://") for url in entry.urls)


def test_register_refuses_duplicates_and_bad_expression_maps():
    spec = get_backbone("ddamfn")
    with pytest.raises(ValueError, match="already registered"):
        register(spec)
    bad = dataclasses.replace(spec, name="ddamfn-bad", abaw_expr_index=(0, 0, 1, 2, 3, 4, 5, 6))
    with pytest.raises(ValueError, match="8 distinct"):
        register(bad)
    assert "ddamfn-bad" not in backbone_names()


@pytest.mark.parametrize(
    "name",
    ["mt-emotieffnet", "ddamfn", "enet_b2_8", "enet_b0_8_best_vgaf", "dan", "fer-minixception"],
)
def test_abaw_expression_index_names_the_abaw_classes(name):
    spec = get_backbone(name)
    for abaw, index in zip(EXPR_NAMES, spec.abaw_expr_index, strict=True):
        if index is None:  # a class the backbone does not predict (FER2013 has no Other)
            assert abaw == "other", name
            continue
        assert spec.logit_names[index] in ABAW_SYNONYMS[abaw], (abaw, spec.logit_names[index])


def test_spec_shapes_and_pickling():
    specs = {name: get_backbone(name) for name in ("mt-emotieffnet", "enet_b2_8", "ddamfn")}
    assert (specs["mt-emotieffnet"].input_size, specs["mt-emotieffnet"].embedding_dim) == (
        224,
        1280,
    )
    assert specs["mt-emotieffnet"].logit_names[-2:] == ("valence", "arousal")
    assert (specs["enet_b2_8"].input_size, specs["enet_b2_8"].embedding_dim) == (260, 1408)
    assert (specs["ddamfn"].input_size, specs["ddamfn"].embedding_dim) == (112, 512)
    # Data-loader workers receive specs by pickling.
    assert pickle.loads(pickle.dumps(specs["ddamfn"])).name == "ddamfn"


@pytest.mark.parametrize("name", ["mt-emotieffnet", "ddamfn", "enet_b2_8", "enet_b0_8_best_vgaf"])
def test_built_models_return_embedding_and_logits(name):
    spec = get_backbone(name)
    with torch.inference_mode():
        embedding, logits = spec.build()(torch.zeros(1, 3, spec.input_size, spec.input_size))
    assert embedding.shape == (1, spec.embedding_dim)
    assert logits.shape == (1, len(spec.logit_names))


def test_loaded_models_are_frozen(loaded):
    for _, model in loaded.values():
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())


def test_preprocess_refuses_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        get_backbone("ddamfn").preprocess(Image.new("L", (50, 60)))


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_preprocess_equals_official_input(fixtures_dir, name):
    ref = reference(fixtures_dir, name)
    x = preprocess_dev_images(fixtures_dir, get_backbone(name), ref["names"])
    np.testing.assert_array_equal(x.numpy(), ref["input"])


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_parity_with_official_outputs(fixtures_dir, loaded, name):
    spec, model = loaded[name]
    ref = reference(fixtures_dir, name)
    x = preprocess_dev_images(fixtures_dir, spec, ref["names"])
    with torch.inference_mode():
        embedding, logits = model(x)
    embedding_diff = np.abs(embedding.numpy() - ref[FIXTURES[name][2]]).max()
    logits_diff = np.abs(logits.numpy() - ref["logits"]).max()
    print(f"{name}: max |diff| embedding {embedding_diff:.3g}, logits {logits_diff:.3g}")
    assert embedding_diff <= TOLERANCE
    assert logits_diff <= TOLERANCE


def layout_keys(path: Path) -> list[str]:
    return [line.split("\t")[1] for line in path.read_text().splitlines() if line[:1] != "#"]


def test_ddamfn_state_dict_keys_follow_the_official_order(fixtures_dir):
    keys = layout_keys(fixtures_dir / "ddamfn" / "state_dict_layout.txt")
    assert list(get_backbone("ddamfn").build().state_dict()) == keys


def test_timm09_pickle_is_read_without_timm09(fixtures_dir):
    from affectpipe.extract.backbones.emotieffnet import read_hsemotion_state_dict

    state = read_hsemotion_state_dict(fixtures_dir / "emotieffnet" / "enet_b0_8_va_mtl_calib.pt")
    assert list(state) == layout_keys(fixtures_dir / "emotieffnet" / "state_dict_layout.txt")
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_channels_last_gives_the_same_outputs(fixtures_dir, loaded, name):
    spec, model = loaded[name]
    ref = reference(fixtures_dir, name)
    x = torch.from_numpy(ref["input"][:2])
    with torch.inference_mode():
        expected = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    for a, b in zip(expected, got, strict=True):
        assert (a - b).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_plain_state_dict_and_safetensors_load(tmp_path, loaded, name, suffix):
    from safetensors.torch import save_file

    spec, model = loaded[name]
    # A model's own state_dict, as a user would save it.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    reloaded = spec.load(path).state_dict()
    assert list(reloaded) == list(model.state_dict())
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())


def test_hsemotion_accepts_a_sequential_classifier(tmp_path, loaded):
    spec, model = loaded["mt-emotieffnet"]
    state = {
        k.removeprefix("net.").replace("classifier.", "classifier.0."): v
        for k, v in model.state_dict().items()
    }
    torch.save(state, tmp_path / "seq.pt")
    loaded_again = spec.load(tmp_path / "seq.pt")
    assert torch.equal(loaded_again.net.classifier.weight, model.net.classifier.weight)


class _RunsACommand:
    """Pickles as a call to os.system: what a malicious weights file would contain."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_pickle_with_forbidden_global_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": _RunsACommand(f"touch {marker}")}, path)
    with pytest.raises(InputError, match="evil.pt"):
        get_backbone(name).load(path)
    assert not marker.exists()


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(8, 512)}}, path)
    with pytest.raises(InputError, match="other.pth"):
        get_backbone("ddamfn").load(path)
    with pytest.raises(InputError, match="other.pth"):
        get_backbone("mt-emotieffnet").load(path)
