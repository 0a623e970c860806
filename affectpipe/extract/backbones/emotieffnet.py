"""HSEmotion / EmotiEffLib EfficientNets (MT-EmotiEffNet and friends) on timm 1.x.

The official files are whole pickled timm models (``torch.save(model)``) written under
timm 0.9. Unpickling them for real needs a matching timm, and the resulting modules fail in
timm 1.0's forward; it would also execute whatever the pickle names. So the file is read
by torch's weights-only unpickler (`affectpipe.extract.weights.load_checkpoint`: the file is
sniffed first, TorchScript and other non-plain archives are refused) with one addition to
its allowlist: the classes the pickle names from ``torch.nn.modules.*`` and ``timm.*``
become inert `PickledModule` holders that only keep the attribute dict the pickle sets (no
module code runs, nothing from timm is imported). Any other global (``os.system``,
``builtins.eval``, ...) aborts the load.

The state_dict is then rebuilt by walking the holders' ``_parameters``, ``_buffers`` and
``_modules`` in torch's own order and loaded strictly into a freshly built timm 1.x model,
which gives the official outputs bit-exactly. The same reader accepts a plain state_dict
(``.pt``/``.pth``) and safetensors files.

Outputs: the embedding is the pooled feature vector (the official ``extract_features``,
i.e. the model with ``classifier = Identity``), the logits are the classifier's outputs.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from affectpipe.errors import InputError
from affectpipe.extract.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from affectpipe.extract.vision import import_timm
from affectpipe.extract.weights import checkpoint_globals, load_checkpoint, state_dict_of

# EmotiEffLib's 8-class order (alphabetical ImageFolder order of the training folders).
HSEMOTION_CLASSES_8 = (
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
)
# logits[:, index] gives ABAW codes 0..7; Contempt stands in for ABAW's Other.
HSEMOTION_TO_ABAW = (5, 0, 2, 3, 4, 6, 7, 1)


class PickledModule:
    """Inert stand-in for a pickled module: keeps the attribute dict, runs no module code."""

    state: Any = None  # set by __setstate__ (the unpickler creates holders without __init__)

    def __setstate__(self, state: Any) -> None:
        # Objects with __slots__ pickle (dict, slots); modules only have the dict part.
        self.state = state[0] if isinstance(state, tuple) else state


_MODULE_PREFIXES = ("torch.nn.modules.", "timm.")
# Far beyond any real network; they bound what a hostile file can make the walk do.
MAX_MODULE_DEPTH = 64
MAX_MODULES = 100_000
_placeholders: dict[str, type[PickledModule]] = {}


def _placeholder(qualname: str) -> type[PickledModule]:
    if qualname not in _placeholders:
        name = qualname.rsplit(".", 1)[-1]
        _placeholders[qualname] = type(name, (PickledModule,), {"pickled_class": qualname})
    return _placeholders[qualname]


def module_holders(path: Path) -> list[tuple[type[PickledModule], str]]:
    """Allowlist entries mapping the module classes a checkpoint names to inert holders."""
    return [
        (_placeholder(name), name)
        for name in checkpoint_globals(path)
        if name.startswith(_MODULE_PREFIXES) and name.rsplit(".", 1)[-1].isidentifier()
    ]


def module_state_dict(root: PickledModule, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a pickled module tree, in torch's order (params, buffers, children)."""
    out: dict[str, torch.Tensor] = {}

    def entries(state: dict[str, Any], attr: str) -> list[tuple[str, Any]]:
        value = state.get(attr, {})
        if not isinstance(value, dict):
            raise InputError(f"{path}: pickled module has a malformed {attr}")
        return [(str(name), item) for name, item in value.items() if item is not None]

    # An explicit stack, not recursion: a hostile file may nest, loop or fan out its modules.
    stack: list[tuple[PickledModule, str, tuple[int, ...]]] = [(root, "", ())]
    visited = 0
    while stack:
        node, prefix, ancestors = stack.pop()
        if id(node) in ancestors:
            raise InputError(f"{path}: pickled module tree has a cycle at {prefix[:-1]}")
        visited += 1
        if len(ancestors) > MAX_MODULE_DEPTH or visited > MAX_MODULES:
            raise InputError(
                f"{path}: pickled module tree is too deep or too large for a network "
                f"(over {MAX_MODULE_DEPTH} levels or {MAX_MODULES} modules)"
            )
        state = node.state if isinstance(node.state, dict) else {}
        skip = state.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, set) else set()
        tensors = entries(state, "_parameters") + [
            (name, item) for name, item in entries(state, "_buffers") if name not in skip
        ]
        for name, tensor in tensors:
            if not isinstance(tensor, torch.Tensor):
                raise InputError(f"{path}: {prefix}{name} is not a tensor")
            out[prefix + name] = tensor.detach()
        children = [
            (child, f"{prefix}{name}.", (*ancestors, id(node)))
            for name, child in entries(state, "_modules")
            if isinstance(child, PickledModule)
        ]
        stack.extend(reversed(children))  # depth-first, in torch's order
    return out


def read_hsemotion_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an official whole-model pickle, a plain state_dict or a safetensors file."""
    loaded = load_checkpoint(path, module_holders(path))
    if isinstance(loaded, PickledModule):
        return module_state_dict(loaded, path)
    return state_dict_of(loaded, path)


class TimmEmotionNet(nn.Module):
    """A timm classifier returning ``(pooled features, classifier outputs)``."""

    def __init__(self, arch: str, num_outputs: int):
        super().__init__()
        self.net = import_timm().create_model(arch, pretrained=False, num_classes=num_outputs)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last map before pooling (N, 1280, 7, 7) for B0 at 224."""
        return self.net.forward_features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        return embedding, self.net.get_classifier()(embedding)


def load_timm_emotion_net(arch: str, num_outputs: int, path: Path) -> TimmEmotionNet:
    """Build the timm 1.x model and load an official file's tensors into it strictly."""
    model = TimmEmotionNet(arch, num_outputs)
    state = read_hsemotion_state_dict(path)
    # Some HSEmotion files wrap the classifier in a Sequential (classifier.0.*), and a saved
    # TimmEmotionNet state_dict has a `net.` prefix: map both onto timm's own keys.
    state = {
        key.removeprefix("net.").replace("classifier.0.", "classifier.", 1): value
        for key, value in state.items()
    }
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"{path}: weights do not fit {arch} with {num_outputs} outputs: {exc}"
        ) from exc
    return model


def hsemotion_spec(
    name: str,
    *,
    arch: str,
    input_size: int,
    embedding_dim: int,
    valence_arousal: bool = False,
    description: str = "",
) -> BackboneSpec:
    """Spec of an 8-class HSEmotion EfficientNet (optionally with valence and arousal outputs)."""
    logit_names = HSEMOTION_CLASSES_8 + (("valence", "arousal") if valence_arousal else ())
    num_outputs = len(logit_names)
    return BackboneSpec(
        name=name,
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        embedding_dim=embedding_dim,
        logit_names=logit_names,
        abaw_expr_index=HSEMOTION_TO_ABAW,
        # partials, not lambdas: specs must pickle into data-loader worker processes
        builder=partial(TimmEmotionNet, arch, num_outputs),
        loader=partial(load_timm_emotion_net, arch, num_outputs),
        description=description,
    )


MT_EMOTIEFFNET = hsemotion_spec(
    "mt-emotieffnet",
    arch="tf_efficientnet_b0",
    input_size=224,
    embedding_dim=1280,
    valence_arousal=True,
    description="MT-EmotiEffNet (EmotiEffLib enet_b0_8_va_mtl): 8 emotions + valence/arousal",
)
ENET_B2_8 = hsemotion_spec(
    "enet_b2_8",
    arch="tf_efficientnet_b2",
    input_size=260,
    embedding_dim=1408,
    description="HSEmotion EfficientNet-B2, 8 AffectNet emotions",
)
ENET_B0_8_BEST_VGAF = hsemotion_spec(
    "enet_b0_8_best_vgaf",
    arch="tf_efficientnet_b0",
    input_size=224,
    embedding_dim=1280,
    description="HSEmotion EfficientNet-B0, 8 AffectNet emotions (best on VGAF)",
)
