"""Features of new face images computed as `pipeline extract` computed a run's files: the one
way `predict` (and any user of a trained run) gets them.

`FeatureComputer` is built from the identities the feature files recorded (weights sha256,
preprocessing, precision, spatial grid, a descriptor's parameters and fitted arrays) and
refuses what does not match them; CNNs run through `stage.model_job` and `engine.forward`
(torch or ONNX Runtime), descriptors through their `apply_fitted` (`decode.Descriptor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from affectpipe.errors import InputError
from affectpipe.extract import registry


class BackboneSource(Protocol):
    """What a run recorded of one backbone's features (`predict.runfiles.BackboneRecord`)."""

    name: str
    identity: dict[str, Any]
    arrays: dict[str, np.ndarray]  # a descriptor's fitted arrays (`descriptor_arrays`)


@dataclass
class ComputedFeatures:
    """Per backbone: its parts' rows for a batch of images, and which rows are ok."""

    arrays: dict[str, dict[str, np.ndarray]]
    ok: np.ndarray  # [N] every backbone processed the image
    reasons: list[str | None]  # [N] why an image is not ok (None where it is)


def is_descriptor(name: str) -> bool:
    """Whether backbone `name` is a registered descriptor (computed per image on the CPU,
    projected with fitted arrays), by its registration, not its name."""
    return registry.get(name).kind == "descriptor"


def descriptor_arrays(name: str) -> tuple[str, ...]:
    """The fitted arrays a backbone's feature file keeps (under ``extra/``) for computing new
    rows: a descriptor's `fitted_arrays`; none for a CNN."""
    if not is_descriptor(name):
        return ()
    return tuple(registry.get(name, "descriptor").load()().fitted_arrays)


class FeatureComputer:
    """A run's backbones built once from their feature files' identities (`BackboneSource`):
    CNNs with their verified weights (on `runtime`; those in `spatial` with their `spatial`
    part on the recorded grid), descriptors with their stored fitted arrays. `features`
    computes every backbone's parts for a collated batch (`decode.Batch`) as `pipeline
    extract` computed them; `dataset` prepares images for it."""

    def __init__(
        self,
        backbones: Mapping[str, BackboneSource],
        device: str,
        weights: Mapping[str, Path],
        spatial: set[str],
        runtime: str,
    ) -> None:
        from affectpipe.extract.backbones import get_backbone
        from affectpipe.extract.decode import DecodeDataset
        from affectpipe.extract.engine import resolve_device
        from affectpipe.extract.onnx_runtime import resolve_runtime

        self.device = resolve_device(device)
        self.records = backbones
        resolved = resolve_runtime(runtime, self.device.type)
        self.models = {
            n: self._model(r, weights, n in spatial, resolved, runtime == "onnx")
            for n, r in backbones.items()
            if not is_descriptor(n)
        }
        self.descriptors = {
            n: self._descriptor(r) for n, r in backbones.items() if is_descriptor(n)
        }
        specs = [get_backbone(n) for n in self.models]
        self.dataset = DecodeDataset(
            [],
            [s.resize for s in specs],
            [s.input_size for s in specs],
            list(self.descriptors.values()),
        )

    def _model(
        self,
        record: BackboneSource,
        weights: Mapping[str, Path],
        spatial: bool,
        runtime: str,
        strict: bool,
    ) -> Any:
        from affectpipe.extract.backbones import get_backbone
        from affectpipe.extract.plan import resolve_backbone_weights
        from affectpipe.extract.stage import model_job

        spec = get_backbone(record.name)
        if record.identity.get("precision") == "int8":
            # The int8 graph is calibrated on the training dataset's images, which a run does
            # not carry: refuse rather than compute other (fp32) features without saying so.
            raise InputError(
                f"{record.name}: the run's features were computed at --precision int8, which "
                "predict does not reproduce: train the run on fp32 features"
            )
        recorded = record.identity.get("weights_sha256")
        if record.identity.get("random_init"):
            path = None
        else:
            resolved = resolve_backbone_weights(record.name, weights)
            if resolved.sha256 != recorded:
                raise InputError(
                    f"{record.name}: the weights at {resolved.path} (sha256 {resolved.sha256}) "
                    f"are not those the run's features were computed with ({recorded})"
                )
            path = resolved.path
        if record.identity.get("preprocessing") not in (None, spec.preprocessing_attrs()):
            raise InputError(f"{record.name}: the run's preprocessing differs from this version")
        grid = record.identity.get("spatial_grid") if spatial else None
        if spatial and not grid:
            raise InputError(
                f"the run's heads read {record.name}:spatial, but its features "
                "record no spatial grid"
            )
        # The graphs output embedding and logits only: a spatial part needs torch.
        job = model_job(
            spec,
            path,
            str(recorded),
            self.device,
            channels_last=True,
            runtime="torch" if grid else runtime,
            strict=strict and not grid,
        )
        if grid and not hasattr(job.model, "feature_map"):
            raise InputError(f"{record.name} exposes no feature map for its spatial part")
        job.spatial_grid = grid
        return job

    @staticmethod
    def _descriptor(record: BackboneSource) -> Any:
        from affectpipe.extract import registry
        from affectpipe.extract.plan import describe_descriptor

        descriptor = registry.get(record.name, "descriptor").load()()
        recorded = record.identity.get("descriptor")
        if recorded is not None and recorded != describe_descriptor(descriptor):
            raise InputError(f"{record.name}: the run's descriptor parameters differ ({recorded})")
        try:  # the stored arrays must fit this descriptor's rows (a shared run may not)
            descriptor.apply_fitted(np.zeros((1, descriptor.raw_dim), np.float32), record.arrays)
        except (KeyError, ValueError) as exc:
            raise InputError(f"{record.name}: the run's fitted arrays do not fit ({exc})") from None
        return descriptor

    def features(self, samples: Any) -> ComputedFeatures:
        """The run's features of one collated batch (`affectpipe.extract.decode.Batch`)."""
        import torch

        from affectpipe.extract.engine import AMP_DTYPES, forward

        arrays: dict[str, dict[str, np.ndarray]] = {}
        with torch.inference_mode():
            for k, (name, job) in enumerate(self.models.items()):
                precision = str(self.records[name].identity.get("precision", "fp32"))
                arrays[name] = forward(
                    job,
                    samples.inputs[k],
                    self.device,
                    channels_last=True,
                    amp_dtype=AMP_DTYPES.get(precision) if self.device.type != "cpu" else None,
                )
        for k, (name, descriptor) in enumerate(self.descriptors.items()):
            stored = self.records[name].arrays
            arrays[name] = {"embedding": descriptor.apply_fitted(samples.raws[k], stored)}
        ok = samples.ok.all(axis=1)  # an image that was not decoded is not ok for any backbone
        decoded = ok.copy()
        for parts in arrays.values():
            for values in parts.values():
                ok &= np.isfinite(values).all(axis=1)
        reasons = [
            None if good else (why or ("non-finite features" if fine else "not processed"))
            for good, fine, why in zip(ok, decoded, samples.reasons, strict=True)
        ]
        return ComputedFeatures(arrays, ok, reasons)
