"""HSEmotion / EmotiEffLib EfficientNets (MT-EmotiEffNet and friends) on timm 1.x.

The official files are whole pickled timm models (``torch.save(model)``) written under
timm 0.9. Unpickling them for real needs a matching timm, and the resulting modules fail in
timm 1.0's forward; it would also execute whatever the pickle names. So the file is read
with a restricted unpickler instead:

* tensors and storages are rebuilt by torch as usual;
* classes from ``torch.nn.modules.*`` and ``timm.*`` become inert `PickledModule` holders
  that only keep the attribute dict the pickle sets (no module code runs, nothing from
  timm is imported);
* ``collections.OrderedDict`` and ``builtins.set`` are allowed (module bookkeeping);
* any other global (``os.system``, ``builtins.eval``, ...) aborts the load.

The state_dict is then rebuilt by walking the holders' ``_parameters``, ``_buffers`` and
``_modules`` in torch's own order and loaded strictly into a freshly built timm 1.x model,
which gives the official outputs bit-exactly. The same reader accepts a plain state_dict
(``.pt``/``.pth``), and safetensors files are read with the safetensors library.

Outputs: the embedding is the pooled feature vector (the official ``extract_features``,
i.e. the model with ``classifier = Identity``), the logits are the classifier's outputs.
"""

from __future__ import annotations

import pickle
import types
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from affectpipe.errors import InputError
from affectpipe.extract.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, register
from affectpipe.extract.weights import is_safetensors, read_state_dict, state_dict_of

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        # Objects with __slots__ pickle (dict, slots); modules only have the dict part.
        self.state = state[0] if isinstance(state, tuple) else state


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}
_MODULE_PREFIXES = ("torch.nn.modules.", "timm.")
_placeholders: dict[str, type[PickledModule]] = {}


def _placeholder(module: str, name: str) -> type[PickledModule]:
    qualname = f"{module}.{name}"
    if qualname not in _placeholders:
        _placeholders[qualname] = type(name, (PickledModule,), {"pickled_class": qualname})
    return _placeholders[qualname]


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor rebuilders, container types and (inert) module classes."""

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol-2 spelling
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        if module.startswith(_MODULE_PREFIXES) and name.isidentifier():
            return _placeholder(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# The `pickle_module` interface torch.load expects: an Unpickler class and a load function.
restricted_pickle = types.SimpleNamespace(
    __name__="affectpipe_restricted_pickle", Unpickler=RestrictedUnpickler, load=_restricted_load
)


def module_state_dict(root: PickledModule, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a pickled module tree, in torch's order (params, buffers, children)."""
    out: dict[str, torch.Tensor] = {}

    def entries(state: dict[str, Any], attr: str) -> list[tuple[str, Any]]:
        value = state.get(attr, {})
        if not isinstance(value, dict):
            raise InputError(f"{path}: pickled module has a malformed {attr}")
        return [(name, item) for name, item in value.items() if item is not None]

    def walk(node: PickledModule, prefix: str) -> None:
        state = node.state if isinstance(node.state, dict) else {}
        skip = state.get("_non_persistent_buffers_set", set())
        tensors = entries(state, "_parameters") + [
            (name, item) for name, item in entries(state, "_buffers") if name not in skip
        ]
        for name, tensor in tensors:
            if not isinstance(tensor, torch.Tensor):
                raise InputError(f"{path}: {prefix}{name} is not a tensor")
            out[prefix + name] = tensor.detach()
        for name, child in entries(state, "_modules"):
            if isinstance(child, PickledModule):
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return out


def read_hsemotion_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an official whole-model pickle, a plain state_dict or a safetensors file."""
    if is_safetensors(path):
        return read_state_dict(path)
    try:
        loaded = torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False
        )
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        raise InputError(f"{path}: cannot read the weights file safely: {exc}") from exc
    if isinstance(loaded, PickledModule):
        return module_state_dict(loaded, path)
    return state_dict_of(loaded, path)


class TimmEmotionNet(nn.Module):
    """A timm classifier returning ``(pooled features, classifier outputs)``."""

    def __init__(self, arch: str, num_outputs: int):
        super().__init__()
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_outputs)

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
    weights: str,
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
        weights=weights,
        # partials, not lambdas: specs must pickle into data-loader worker processes
        builder=partial(TimmEmotionNet, arch, num_outputs),
        loader=partial(load_timm_emotion_net, arch, num_outputs),
        description=description,
    )


register(
    hsemotion_spec(
        "mt-emotieffnet",
        arch="tf_efficientnet_b0",
        input_size=224,
        embedding_dim=1280,
        weights="enet_b0_8_va_mtl",
        valence_arousal=True,
        description="MT-EmotiEffNet (EmotiEffLib enet_b0_8_va_mtl): 8 emotions + valence/arousal",
    )
)
register(
    hsemotion_spec(
        "enet_b2_8",
        arch="tf_efficientnet_b2",
        input_size=260,
        embedding_dim=1408,
        weights="enet_b2_8",
        description="HSEmotion EfficientNet-B2, 8 AffectNet emotions",
    )
)
register(
    hsemotion_spec(
        "enet_b0_8_best_vgaf",
        arch="tf_efficientnet_b0",
        input_size=224,
        embedding_dim=1280,
        weights="enet_b0_8_best_vgaf",
        description="HSEmotion EfficientNet-B0, 8 AffectNet emotions (best on VGAF)",
    )
)
