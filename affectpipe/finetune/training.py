"""The fine-tuning loop: a registered backbone + task outputs trained on a dataset's train split.

One run (per bag) trains `FinetuneNet` with the heads' task losses (`affectpipe.tasks`' `Task.loss`:
CCC for VA, class-weighted cross-entropy or focal for EXPR, positive-weighted BCE for AUs;
a missing label never reaches a loss), AdamW with linear warm-up and cosine decay, mixed
precision on CUDA, and early stopping on the validation split's task metrics
(`Task.score`: the sum of the tasks' main metrics, the ABAW P score). The best epoch's
weights become the variant (`variants`).

Resumable: a checkpoint (model, optimiser, scaler, best weights, history, position) is
written atomically at every epoch end and every `checkpoint_every` steps; a killed run started
again with the same settings resumes from it. Every random draw (data order, augmentation)
is seeded from the run seed, the bag, the epoch and the step, so the resumed run continues
exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectpipe import __version__
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.finetune.augment import augment
from affectpipe.finetune.network import FinetuneNet, OutputLayout, build_network, channels_of
from affectpipe.finetune.recipes import Recipe
from affectpipe.fsutil import atomic_path, file_lock, sha256_file, write_text_atomic
from affectpipe.tasks import get_task

logger = logging.getLogger(__name__)

MIN_TASK_ROWS = 2  # a task's loss needs this many labelled rows in a batch (the batch CCC)


@dataclass(frozen=True)
class TrainData:
    """The rows of one split that a run uses, with their files and labels per task."""

    rows: np.ndarray  # manifest row indices
    files: list[str]
    labels: dict[str, np.ndarray]  # task -> labels of `rows`
    valid: dict[str, np.ndarray]  # task -> bool [len(rows)]


@dataclass(frozen=True)
class VariantResult:
    """What one fine-tuning run (one bag) produced."""

    name: str
    weights_path: Path
    record_path: Path
    action: str  # trained | resumed | current
    best_epoch: int
    val_scores: dict[str, float]
    steps: int
    images_per_s: float | None
    epoch_seconds: float | None
    resumed_at_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class FinetuneResult:
    variants: tuple[VariantResult, ...]
    tasks: tuple[str, ...]
    skipped_tasks: dict[str, str]


def select_tasks(
    manifest: Any, recipe: Recipe, requested: Sequence[str]
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The tasks to train: those requested (else the recipe's) with labelled train rows."""
    chosen = tuple(dict.fromkeys(requested)) or recipe.tasks
    train = (manifest["split"] == "train").to_numpy() & manifest["has_image"].to_numpy()
    tasks, skipped = [], {}
    for name in chosen:
        task = get_task(name)
        if task.valid_rows(task.targets(manifest))[train].any():
            tasks.append(name)
        elif requested:
            raise InputError(f"--task {name}: the dataset has no labelled train rows for it")
        else:
            skipped[name] = "no labelled train rows"
    if not tasks:
        raise InputError(
            f"recipe {recipe.name!r} trains {', '.join(chosen)}: none has labelled train rows"
        )
    return tuple(tasks), skipped


def split_data(manifest: Any, files: np.ndarray, split: str, tasks: Sequence[str]) -> TrainData:
    """Rows of `split` with an image and a label for at least one of `tasks`."""
    labels = {t: get_task(t).targets(manifest) for t in tasks}
    valid = {t: get_task(t).valid_rows(labels[t]) for t in tasks}
    usable = (manifest["split"] == split).to_numpy() & np.array([f is not None for f in files])
    usable &= np.logical_or.reduce([valid[t] for t in tasks])
    rows = np.flatnonzero(usable)
    return TrainData(
        rows,
        [str(files[r]) for r in rows],
        {t: labels[t][rows] for t in tasks},
        {t: valid[t][rows] for t in tasks},
    )


def balanced_subset(data: TrainData, seed: int) -> np.ndarray:
    """Positions of a class-balanced subset: every EXPR class present undersampled to the
    rarest one's count; rows without an EXPR label are all kept."""
    rng = np.random.default_rng(seed)
    codes = np.where(data.valid["expr"], data.labels["expr"], -1)
    keep = [np.flatnonzero(codes < 0)]
    present = [c for c in np.unique(codes) if c >= 0]
    smallest = min(int((codes == c).sum()) for c in present)
    for code in present:
        keep.append(rng.choice(np.flatnonzero(codes == code), smallest, replace=False))
    return np.sort(np.concatenate(keep))


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over `warmup` of the steps, then cosine decay to 0 at `total`."""
    ramp = max(1, int(round(warmup * total)))
    if step < ramp:
        return (step + 1) / ramp
    progress = (step - ramp) / max(1, total - ramp)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def epoch_batches(
    positions: np.ndarray, batch_size: int, seed: int, bag: int, epoch: int
) -> list[np.ndarray]:
    """This epoch's batches of `positions`, shuffled by (seed, bag, epoch); a last batch under
    half the batch size is dropped (a tiny batch makes the batch CCC noisy)."""
    generator = torch.Generator().manual_seed(_mix(seed, bag, epoch))
    order = positions[torch.randperm(len(positions), generator=generator).numpy()]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(MIN_TASK_ROWS, batch_size // 2):
        batches.pop()
    return batches


def _mix(*values: int) -> int:
    """One 63-bit seed from several integers (distinct tuples give distinct streams)."""
    out = 0x9E3779B97F4A7C15
    for v in values:
        out = (out * 6364136223846793005 + int(v) + 1442695040888963407) % (1 << 63)
    return out


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: `auto` is bf16 on CUDA (fp16 where bf16 is unsupported), off on CPU."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Trainer:
    """One bag of one run: the network, its optimiser and the loop with checkpoints."""

    def __init__(
        self,
        spec: Any,
        module: torch.nn.Module,
        layout: OutputLayout,
        recipe: Recipe,
        train: TrainData,
        val: TrainData,
        *,
        device: torch.device,
        seed: int,
        bag: int,
        workers: int,
        max_steps: int | None,
        progress: bool,
    ):
        self.spec, self.layout, self.recipe = spec, layout, recipe
        self.train_data, self.val_data = train, val
        self.device, self.seed, self.bag = device, seed, bag
        self.workers, self.progress = workers, progress
        module.train().requires_grad_(True)
        channels = channels_of(spec, module, recipe.pool)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(seed, bag))
            self.net: FinetuneNet = build_network(spec, layout, recipe.pool, channels, module)
        self.channels = channels
        self.net.to(device)
        if device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        new = {id(p) for p in self.net.new_parameters()}
        old = [p for p in self.net.parameters() if id(p) not in new]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": old, "lr": recipe.lr, "base_lr": recipe.lr},
                {"params": self.net.new_parameters(), "lr": recipe.head_lr,
                 "base_lr": recipe.head_lr},
            ],
            weight_decay=recipe.weight_decay,
        )  # fmt: skip
        self.amp_dtype = resolve_amp(recipe.amp, device)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.amp_dtype == torch.float16 and device.type == "cuda"
        )
        self.positions = np.arange(len(train.rows))
        if recipe.balanced and "expr" in layout.tasks:
            self.positions = balanced_subset(train, _mix(seed, bag) % (1 << 32))
        batches = len(epoch_batches(self.positions, recipe.batch_size, seed, bag, 0))
        self.total_steps = recipe.epochs * batches
        if max_steps is not None:
            self.total_steps = min(self.total_steps, max_steps)
        self.loss_fns = {}
        for name in layout.tasks:
            labels = train.labels[name][train.valid[name]]
            self.loss_fns[name] = get_task(name).loss(
                labels, recipe.focal_gamma, recipe.class_weighting, device
            )

    # -- data ---------------------------------------------------------------------------

    def _loader(self, data: TrainData, batches: Sequence[np.ndarray]) -> Iterator[Any]:
        from affectpipe.extract.decode import DecodeDataset, collate, die_with_parent

        dataset = DecodeDataset(data.files, [self.spec.resize], [self.spec.input_size])
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[b.tolist() for b in batches],
            collate_fn=collate,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=partial(die_with_parent, os.getpid()) if self.workers else None,
        )
        return iter(loader)

    def _inputs(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = pixels.to(self.device, non_blocking=True)
        if generator is not None:
            x = augment(x, self.recipe.augment, generator)
        x = self.spec.normalize(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- one step, one evaluation -------------------------------------------------------

    def step(self, batch: Any, global_step: int) -> float | None:
        """One optimiser step on a decoded batch; its loss (None when no task had rows)."""
        ok = batch.ok[:, 0]
        positions = batch.indices[ok]
        if len(positions) < MIN_TASK_ROWS:
            return None
        generator = torch.Generator().manual_seed(_mix(self.seed, self.bag, 1, global_step))
        x = self._inputs(batch.inputs[0][torch.from_numpy(ok)], generator)
        factor = lr_factor(global_step, self.total_steps, self.recipe.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.net.train()
        with self._autocast():
            _, out = self.net(x)
        out = out.float()
        total, counted = out.new_zeros(()), 0
        for name, part in self.layout.slices.items():
            valid = self.train_data.valid[name][positions]
            if valid.sum() < MIN_TASK_ROWS:
                continue
            target = get_task(name).target_tensor(self.train_data.labels[name][positions][valid])
            weight = float(self.recipe.task_weights.get(name, 1.0))
            keep = torch.from_numpy(valid).to(self.device)
            total = total + weight * self.loss_fns[name](out[keep, part], target.to(self.device))
            counted += 1
        if not counted:
            return None
        if not torch.isfinite(total):
            raise AffectpipeError(
                f"the training loss is {float(total)} at step {global_step}: the run diverged "
                "(try a lower --lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(total.detach())

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of every task (via `Task.score`) and `score`, their main
        metrics summed (the ABAW P score); empty without validation rows."""
        data = self.val_data
        if not len(data.rows):
            return {}
        size = max(self.recipe.batch_size, 64)
        batches = [
            np.arange(i, min(i + size, len(data.rows))) for i in range(0, len(data.rows), size)
        ]
        raw = np.full((len(data.rows), len(self.layout.names)), np.nan, dtype=np.float32)
        self.net.eval()
        with torch.inference_mode(), self._autocast():
            for batch in self._loader(data, batches):
                ok = batch.ok[:, 0]
                if ok.any():
                    _, out = self.net(self._inputs(batch.inputs[0][torch.from_numpy(ok)], None))
                    raw[batch.indices[ok]] = out.float().cpu().numpy()
        return score_outputs(self.layout, raw, data)

    # -- the loop ------------------------------------------------------------------------

    def run(self, checkpoint: Path, identity: dict[str, Any], checkpoint_every: int) -> dict:
        """Train to the end (or early stop), resuming from `checkpoint` when it exists;
        returns the final state (best weights, scores, history, timing)."""
        from tqdm.auto import tqdm

        state = self._resume(checkpoint, identity)
        resumed_at = state["global_step"] if state["global_step"] else None
        done_images = state["images"]
        planned = self.total_steps * self.recipe.batch_size
        bar = tqdm(
            total=planned, initial=min(done_images, planned), unit="img",
            desc=f"finetune {identity['variant']}", disable=not self.progress, smoothing=0.1,
        )  # fmt: skip
        with bar:
            while not state["finished"]:
                self._epoch(state, checkpoint, identity, checkpoint_every, bar)
        state["resumed_at_step"] = resumed_at
        return state

    def _epoch(self, state: dict, checkpoint: Path, identity: dict, every: int, bar: Any) -> None:
        epoch = state["epoch"]
        batches = epoch_batches(self.positions, self.recipe.batch_size, self.seed, self.bag, epoch)
        start = state["step_in_epoch"]
        clock = [time.perf_counter()]

        def account() -> None:  # training time so far (evaluation and checkpoints excluded)
            now = time.perf_counter()
            state["train_seconds"] += now - clock[0]
            state["epoch_train_seconds"] += now - clock[0]
            clock[0] = now

        for batch in self._loader(self.train_data, batches[start:]):
            if state["global_step"] >= self.total_steps:
                break
            loss = self.step(batch, state["global_step"])
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            state["images"] += len(batch.indices)
            bar.update(len(batch.indices))
            if loss is not None:
                state["loss_sum"] += loss
                state["loss_steps"] += 1
                bar.set_postfix(epoch=f"{epoch + 1}/{self.recipe.epochs}", loss=f"{loss:.4f}")
            if every and state["global_step"] % every == 0:
                account()
                self._save(checkpoint, identity, state)
                clock[0] = time.perf_counter()
        account()
        evaluated = time.perf_counter()
        scores = self.evaluate()
        mean_loss = state["loss_sum"] / max(1, state["loss_steps"])
        entry = {
            "epoch": epoch + 1,
            "steps": state["global_step"],
            "full_epoch": state["step_in_epoch"] == len(batches),  # not cut by max_steps
            "train_loss": mean_loss,
            "train_seconds": state["epoch_train_seconds"],
            "eval_seconds": time.perf_counter() - evaluated,
            **{f"val_{k}": v for k, v in scores.items()},
        }
        state["history"].append(entry)
        logger.info("epoch %d: %s", epoch + 1, entry)
        score = scores.get("score", -math.inf)
        if not scores or score > state["best_score"]:  # without validation: the last epoch
            state["best_score"], state["best_epoch"], state["stale"] = score, epoch + 1, 0
            state["best_state"] = {
                k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()
            }
            state["best_scores"] = scores
        else:
            state["stale"] += 1
        out_of_steps = state["global_step"] >= self.total_steps
        patience_spent = bool(scores) and state["stale"] >= self.recipe.patience
        state["finished"] = out_of_steps or patience_spent or epoch + 1 >= self.recipe.epochs
        state.update(
            epoch=epoch + 1, step_in_epoch=0, loss_sum=0.0, loss_steps=0, epoch_train_seconds=0.0
        )
        self._save(checkpoint, identity, state)

    def _fresh_state(self) -> dict[str, Any]:
        return {
            "epoch": 0, "step_in_epoch": 0, "global_step": 0, "images": 0, "finished": False,
            "loss_sum": 0.0, "loss_steps": 0, "best_score": -math.inf, "best_epoch": 0,
            "stale": 0, "best_state": {}, "best_scores": {}, "history": [],
            "train_seconds": 0.0, "epoch_train_seconds": 0.0,
        }  # fmt: skip

    def _save(self, path: Path, identity: dict[str, Any], state: dict[str, Any]) -> None:
        document = {
            "identity": identity,
            "state": state,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        with atomic_path(path) as tmp:
            torch.save(document, tmp)

    def _resume(self, path: Path, identity: dict[str, Any]) -> dict[str, Any]:
        from affectpipe.extract.weights import load_checkpoint

        if not path.exists():
            return self._fresh_state()
        saved = load_checkpoint(path)
        if saved.get("identity") != identity:
            before = saved.get("identity") or {}
            changed = sorted(k for k in {*before, *identity} if before.get(k) != identity.get(k))
            raise InputError(
                f"{path} was made with other settings (changed: {', '.join(changed)}): "
                "pass --fresh to start over, or rerun with the same settings to resume"
            )
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        state = dict(saved["state"])
        logger.warning(
            "%s: resuming at epoch %d, step %d (of %d)",
            identity["variant"],
            state["epoch"] + 1,
            state["global_step"],
            self.total_steps,
        )
        return state


def score_outputs(layout: OutputLayout, raw: np.ndarray, data: TrainData) -> dict[str, float]:
    """Each task's metrics on the rows with outputs and a label; `score` sums the main ones."""
    scores: dict[str, float] = {}
    total, counted = 0.0, 0
    done = np.isfinite(raw).all(axis=1)
    for name, part in layout.slices.items():
        task = get_task(name)
        keep = data.valid[name] & done
        if not keep.any():
            continue
        outputs = task.activate(torch.from_numpy(raw[keep, part]))
        metrics = task.score(data.labels[name][keep], outputs)
        scores.update(metrics)
        if np.isfinite(metrics[task.main_metric]):
            total += metrics[task.main_metric]
            counted += 1
    if counted:
        scores["score"] = total
    return scores


def publish(
    name: str, state_dict: Mapping[str, torch.Tensor], record: dict[str, Any]
) -> tuple[Path, Path]:
    """Write the variant's weights (safetensors) then its record, each atomically."""
    from safetensors.torch import save_file

    from affectpipe.extract import registry
    from affectpipe.finetune import variants

    weights, record_file = variants.weights_path(name), variants.record_path(name)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"variant": name, "format": record["format"]})
        tmp.chmod(0o644)
    record = {**record, "weights_sha256": sha256_file(weights)}
    write_text_atomic(record_file, json.dumps(record, indent=1) + "\n")
    registry.unregister(name)  # a stale in-process entry (an earlier variant of this name)
    return weights, record_file


def train_variant(
    paths: DatasetPaths,
    *,
    name: str,
    base: str,
    spec: Any,
    module: torch.nn.Module,
    base_sha256: str,
    layout: OutputLayout,
    recipe: Recipe,
    train: TrainData,
    val: TrainData,
    device: torch.device,
    seed: int,
    bag: int,
    workers: int,
    max_steps: int | None,
    checkpoint_every: int,
    fresh: bool,
    force: bool,
    progress: bool,
) -> VariantResult:
    """Train (or resume, or find current) one variant and publish it."""
    from affectpipe.finetune import variants

    data = {
        "dataset": paths.root.name,
        "manifest_sha256": sha256_file(paths.manifest),
        "train_rows": int(len(train.rows)),
        "val_rows": int(len(val.rows)),
    }
    options = {**recipe.options(), "tasks": list(layout.tasks)}
    identity = {
        "variant": name, "base": base, "base_weights_sha256": base_sha256, "data": data,
        "options": options, "seed": seed, "bag": bag, "max_steps": max_steps,
        "package_version": __version__,
    }  # fmt: skip
    existing = None if force else variants.read_record(name)
    if existing is not None:
        if existing.get("provenance") == identity and variants.weights_path(name).is_file():
            return _result(name, "current", existing)
        raise InputError(
            f"variant {name} exists, trained with other data or settings: pass --force to "
            "replace it, or choose another --name"
        )
    folder = paths.root / "finetune" / name
    checkpoint = folder / "checkpoint.pt"
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        if fresh and checkpoint.exists():
            checkpoint.unlink()
        trainer = Trainer(
            spec, module, layout, recipe, train, val, device=device, seed=seed, bag=bag,
            workers=workers, max_steps=max_steps, progress=progress,
        )  # fmt: skip
        state = trainer.run(checkpoint, identity, checkpoint_every)
        epochs = [h["train_seconds"] for h in state["history"] if h["full_epoch"]]
        record = {
            "format": variants.RECORD_FORMAT,
            "name": name,
            "base": base,
            "base_weights_sha256": base_sha256,
            "tasks": list(layout.tasks),
            "pool": recipe.pool,
            "channels": trainer.channels,
            "provenance": identity,
            "best_epoch": state["best_epoch"],
            "val_scores": state["best_scores"],
            "history": state["history"],
            "steps": state["global_step"],
            "images_per_s": state["images"] / state["train_seconds"]
            if state["train_seconds"] > 0
            else None,
            "epoch_seconds": float(np.median(epochs)) if epochs else None,
            "resumed_at_step": state["resumed_at_step"],
            "device": str(device),
            "package_version": __version__,
        }
        publish(name, state["best_state"] or trainer.net.state_dict(), record)
        checkpoint.unlink(missing_ok=True)
    return _result(name, "resumed" if state["resumed_at_step"] else "trained", record)


def _result(name: str, action: str, record: dict[str, Any]) -> VariantResult:
    from affectpipe.finetune import variants

    return VariantResult(
        name=name,
        weights_path=variants.weights_path(name),
        record_path=variants.record_path(name),
        action=action,
        best_epoch=int(record.get("best_epoch", 0)),
        val_scores=dict(record.get("val_scores") or {}),
        steps=int(record.get("steps", 0)),
        images_per_s=record.get("images_per_s"),
        epoch_seconds=record.get("epoch_seconds"),
        resumed_at_step=record.get("resumed_at_step") if action == "resumed" else None,
        history=list(record.get("history") or []),
    )
