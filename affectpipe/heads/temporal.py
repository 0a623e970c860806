"""The `temporal` head: a small sequence model over the frames of each video.

Per video (one split's rows of one video), frames in frame order; the input of each frame is
its scaled feature row (zeros when the features are not ok), an ok flag and the log of the
gaps to the previous and next listed frame (s-Aff-Wild2 lists subsampled frames, so the
model sees how far apart its neighbours are). Rows that repeat a (video, frame) key share one
position. Videos are cut into windows of `window` listed frames (side by side for training,
half-overlapping for predictions); windows of many videos are batched together. Two
architectures, chosen on a held-out part of the train videos (`arch="auto"`): a residual
stack of dilated 1-D convolutions (`tcn`) and a bidirectional GRU (`gru`). Losses are the
frame heads' (CCC for VA, weighted cross-entropy / focal for EXPR, weighted BCE for AUs) over
the frames with ok features and a valid label: a missing label never reaches the loss.
Predictions average the overlapping windows with weights peaking at each window's centre;
frames whose features are not ok get none (NaN).

Residual over a frame head (`residual=True`, the default): a linear frame head is fitted on
the fitting videos first; its pre-activation outputs are an input of every position and the
sequence model adds a correction to them, its output layer starting at zero. Training thus
starts from the frame head's predictions, and early stopping (which scores that start too)
keeps the frame head unless the sequence model beats it on the held-out train videos: on
the demo's 12 training videos, a sequence model on its own lost to the frame heads (VA CCC
0.694 vs 0.743) and its AU outputs sat flat near 0.4.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator

from affectpipe.errors import InputError
from affectpipe.heads.models import LinearHead, single_torch_thread
from affectpipe.heads.regularisation import choose_regularisation
from affectpipe.splits import group_kfold, held_out_groups
from affectpipe.tasks import get_task

ARCHS = ("tcn", "gru")


@dataclass(frozen=True)
class Sequences:
    """Rows grouped into per-video sequences of distinct frames, in frame order.

    key_of_row [n]: sequence position of each row; first_row [K]: a row of each position;
    group [K], frame [K]: video group and frame number per position; windows [W, window]:
    positions per window (-1 = padding).
    """

    key_of_row: np.ndarray
    first_row: np.ndarray
    group: np.ndarray
    frame: np.ndarray
    windows: np.ndarray

    @classmethod
    def of(cls, groups: np.ndarray, frames: np.ndarray, window: int, step: int) -> Sequences:
        order = np.lexsort((frames, groups))
        g, f = groups[order], frames[order]
        new = np.ones(len(order), dtype=bool)
        new[1:] = (g[1:] != g[:-1]) | (f[1:] != f[:-1])
        key_sorted = np.cumsum(new) - 1
        key_of_row = np.empty(len(order), dtype=np.int64)
        key_of_row[order] = key_sorted
        first_row = order[new]
        group, frame = g[new], f[new]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        stops = np.r_[starts[1:], len(group)]
        rows = []
        for start, stop in zip(starts, stops, strict=True):
            length = stop - start
            offsets = list(range(0, max(length - window, 0) + 1, step))
            if offsets[-1] + window < length:
                offsets.append(length - window)  # the last window ends on the last frame
            for offset in offsets:
                positions = np.arange(start + offset, min(start + offset + window, stop))
                rows.append(np.pad(positions, (0, window - len(positions)), constant_values=-1))
        windows = np.stack(rows) if rows else np.zeros((0, window), dtype=np.int64)
        return cls(key_of_row, first_row, group, frame, windows)

    def gap_features(self) -> np.ndarray:
        """[K, 2]: log of the frame gap to the previous / next listed frame (0 at the ends)."""
        same = self.group[1:] == self.group[:-1]
        gap = np.where(same, np.log(np.maximum(np.diff(self.frame), 1)), 0.0)
        return np.stack([np.r_[0.0, gap], np.r_[gap, 0.0]], axis=1).astype(np.float32)


class _Net(torch.nn.Module):
    def __init__(self, n_in: int, width: int, n_out: int, arch: str, dilations: tuple[int, ...]):
        super().__init__()
        self.arch = arch
        self.project = torch.nn.Linear(n_in, width)
        if arch == "tcn":
            self.blocks = torch.nn.ModuleList(
                torch.nn.Conv1d(width, width, 3, dilation=d, padding=d) for d in dilations
            )
        else:
            self.gru = torch.nn.GRU(width, width // 2, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, n_in] -> [B, T, n_out]
        h = torch.nn.functional.gelu(self.project(x))
        if self.arch == "tcn":
            h = h.transpose(1, 2)
            for conv in self.blocks:
                h = h + torch.nn.functional.gelu(conv(h))
            h = h.transpose(1, 2)
        else:
            h = h + self.gru(h)[0]
        return self.out(h)


def _centre_weights(window: int) -> np.ndarray:
    """Weights of a window's positions when overlapping windows are averaged."""
    centre = (window - 1) / 2
    return (1.0 - np.abs(np.arange(window) - centre) / (centre + 1)).astype(np.float32)


class TemporalHead(BaseEstimator):
    """Sequence head over videos (see the module docstring).

    arch: "tcn", "gru" or "auto" (both, the better on the held-out train videos kept);
    width: hidden width; window: listed frames per window; dilations: of the tcn blocks;
    lr, weight_decay: AdamW (cosine decay over max_epochs); batch_size: windows per step;
    max_epochs, patience: early stopping on the held-out videos' task metric;
    stop_fraction: share of the train videos held out for early stopping (and the arch);
    class_weighting, focal_gamma: as the frame heads; random_state: init, split, shuffling;
    residual: correct a linear frame head's outputs (see the module docstring) rather than
    predict from scratch.
    """

    sequence_input = True  # fit / predict take video groups, frame numbers and ok flags

    def __init__(
        self,
        task: str = "expr",
        arch: str = "auto",
        width: int = 32,
        window: int = 64,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        lr: float = 5e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 128,
        max_epochs: int = 6,
        patience: int = 2,
        stop_fraction: float = 0.2,
        class_weighting: bool = True,
        focal_gamma: float = 0.0,
        random_state: int = 0,
        residual: bool = True,
    ):
        self.task = task
        self.arch = arch
        self.width = width
        self.window = window
        self.dilations = dilations
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.stop_fraction = stop_fraction
        self.class_weighting = class_weighting
        self.focal_gamma = focal_gamma
        self.random_state = random_state
        self.residual = residual

    # -- inputs ---------------------------------------------------------------------------
    def _inputs(
        self, X: np.ndarray, groups: np.ndarray, frames: np.ndarray, ok: np.ndarray, step: int
    ) -> tuple[Sequences, torch.Tensor, np.ndarray, torch.Tensor]:
        """Sequences, per-position inputs [K + 1, D + 3 (+ n_out)] (last row: padding), ok
        [K] and the frame head's pre-activation outputs [K + 1, n_out] (zeros without one)."""
        frames = np.asarray(frames, dtype=np.int64)
        seq = Sequences.of(np.asarray(groups), frames, self.window, step)
        ok_key = np.asarray(ok, dtype=bool)[seq.first_row]
        feats = np.asarray(X, dtype=np.float32)[seq.first_row]
        feats = np.where(ok_key[:, None], feats, 0.0)  # masked on input (NaN never enters)
        base = np.zeros((len(seq.first_row) + 1, get_task(self.task).n_outputs), np.float32)
        parts = [feats, ok_key[:, None], seq.gap_features()]
        if getattr(self, "base_", None) is not None:
            raw = get_task(self.task).raw_from_outputs(self.base_.predict_outputs(feats))
            base[:-1] = np.where(ok_key[:, None], raw, 0.0)
            parts.append(base[:-1])
        inputs = np.concatenate(parts, axis=1)
        inputs = np.vstack([inputs, np.zeros((1, inputs.shape[1]))]).astype(np.float32)
        return seq, torch.from_numpy(inputs), ok_key, torch.from_numpy(base)

    def _targets(self, y: np.ndarray, seq: Sequences, ok_key: np.ndarray):
        """Per position: the label of a row with a valid one, and whether it trains (ok too)."""
        task = get_task(self.task)
        y = np.asarray(y)
        valid = task.valid_rows(y)
        target = np.zeros((len(seq.first_row) + 1,) + y.shape[1:], dtype=y.dtype)
        labelled = np.zeros(len(seq.first_row) + 1, dtype=bool)
        rows = np.flatnonzero(valid)
        target[seq.key_of_row[rows]] = y[rows]
        labelled[seq.key_of_row[rows]] = True
        labelled[:-1] &= ok_key
        target[~labelled] = 0  # masked: never read by the loss, zero so no NaN is around
        return target, labelled

    # -- training -------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray,
        frames: np.ndarray,
        ok: np.ndarray,
    ) -> TemporalHead:
        """Fit on every row of the training videos (labels may be missing, features not ok)."""
        if self.arch not in (*ARCHS, "auto"):
            raise InputError(f"temporal head: arch must be tcn, gru or auto, not {self.arch!r}")
        with single_torch_thread():
            # Training windows do not overlap (half the cost); predictions overlap by half.
            self.base_ = None
            seq = Sequences.of(np.asarray(groups), np.asarray(frames), self.window, self.window)
            fit_windows, stop_windows = self._stop_split(seq)
            if self.residual:
                self.base_ = self._fit_base(X, y, groups, ok, seq, stop_windows)
            seq, inputs, ok_key, base = self._inputs(X, groups, frames, ok, self.window)
            target, labelled = self._targets(y, seq, ok_key)
            if labelled.sum() < 2:
                raise InputError("temporal head: fewer than 2 frames with ok features and a label")
            self.n_features_in_ = inputs.shape[1]
            self.arch_scores_: dict[str, float] = {}
            best = None
            for arch in ARCHS if self.arch == "auto" else (self.arch,):
                state, score, epoch = self._train(
                    arch, inputs, base, target, labelled, fit_windows, stop_windows
                )
                self.arch_scores_[arch] = score
                if best is None or score > best[1]:
                    best = (arch, score, state, epoch)
            self.arch_, _, self.weights_, self.best_epoch_ = best
            if self.base_ is not None:
                # The correction was chosen against a frame head unseen by the early-stopping
                # videos; the head keeps it on top of the frame head of every train video
                # (what the frame candidates are), so it never starts behind them.
                self.base_ = self._fit_base(X, y, groups, ok, seq, None)
        return self

    def _fit_base(
        self,
        X: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray,
        ok: np.ndarray,
        seq: Sequences,
        stop_windows: np.ndarray | None,
    ):
        """The linear frame head the sequence model corrects, fitted on the rows of the
        fitting videos with ok features and a label (the early-stopping videos stay
        unseen, so the score of the start is honest); None when they are too few."""
        held = np.zeros(len(groups), dtype=bool)
        if stop_windows is not None:
            held = np.isin(groups, np.unique(seq.group[stop_windows[:, 0]]))
        rows = np.flatnonzero(
            ~held & np.asarray(ok, dtype=bool) & get_task(self.task).valid_rows(np.asarray(y))
        )
        if len(rows) < 2:
            return None
        X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
        base = LinearHead(task=self.task)
        choose_regularisation(base, get_task(self.task), X, y, rows, np.asarray(groups), {})
        return base.fit(X[rows], y[rows])

    def _stop_split(self, seq: Sequences) -> tuple[np.ndarray, np.ndarray | None]:
        """Windows of the fitting videos and of the held-out (early-stopping) videos."""
        videos = np.unique(seq.group)
        n_stop = int(round(self.stop_fraction * len(videos)))
        if n_stop == 0 or n_stop == len(videos):
            return seq.windows, None
        stop_videos = held_out_groups(videos, n_stop, self.random_state)
        held = np.isin(seq.group[seq.windows[:, 0]], stop_videos)
        return seq.windows[~held], seq.windows[held]

    def _train(
        self,
        arch: str,
        inputs: torch.Tensor,
        base: torch.Tensor,
        target: np.ndarray,
        labelled: np.ndarray,
        fit_windows: np.ndarray,
        stop_windows: np.ndarray | None,
    ) -> tuple[dict[str, np.ndarray], float, int]:
        """(weights of the best epoch, its held-out score, the epoch) for one architecture.
        With a frame head (`base_`), epoch 0 is the untrained correction: the frame head."""
        task = get_task(self.task)
        torch.manual_seed(int(self.random_state))
        generator = torch.Generator().manual_seed(int(self.random_state))
        net = _Net(inputs.shape[1], self.width, task.n_outputs, arch, tuple(self.dilations))
        if self.base_ is not None:
            with torch.no_grad():  # the correction starts at zero: the frame head's outputs
                net.out.weight.zero_()
                net.out.bias.zero_()
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        train_labels = target[:-1][labelled[:-1]]
        loss_fn = task.loss(train_labels, self.focal_gamma, self.class_weighting)
        targets = task.target_tensor(target)
        mask = torch.from_numpy(labelled)
        windows = torch.from_numpy(fit_windows)
        # Small data still gets ~16 steps per epoch (batches of >= 4 windows).
        batch_size = min(self.batch_size, max(4, len(windows) // 16))
        steps = max(1, -(-len(windows) // batch_size))
        total = self.max_epochs * steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + np.cos(np.pi * min(step / total, 1.0)))
        )
        stop_positions = None
        if stop_windows is not None:
            stop_positions = np.unique(stop_windows[stop_windows >= 0])
            stop_positions = stop_positions[labelled[stop_positions]]
            if not len(stop_positions):
                stop_windows = None
        best = (-np.inf, None, 0)
        stale = 0

        def held_out_score() -> float:
            outputs = self._run(net, inputs, base, stop_windows, len(labelled) - 1)
            score = task.score(target[stop_positions], outputs[stop_positions])[task.main_metric]
            return -np.inf if np.isnan(score) else float(score)

        if self.base_ is not None and stop_windows is not None:
            best = (held_out_score(), _state(net), 0)
        for epoch in range(1, self.max_epochs + 1):
            net.train()
            order = torch.randperm(len(windows), generator=generator)
            for start in range(0, len(windows), batch_size):
                batch = windows[order[start : start + batch_size]]  # -1 -> padding row
                out = base[batch] + net(inputs[batch])
                keep = mask[batch]
                if keep.sum() < 2:
                    continue
                optimizer.zero_grad()
                loss_fn(out[keep], targets[batch][keep]).backward()
                optimizer.step()
                schedule.step()
            if stop_windows is None:
                best = (np.nan, _state(net), epoch)
                continue
            stop_score = held_out_score()
            if stop_score > best[0]:
                best, stale = (stop_score, _state(net), epoch), 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        return best[1], best[0], best[2]

    def _run(
        self,
        net: _Net,
        inputs: torch.Tensor,
        base: torch.Tensor,
        windows: np.ndarray,
        n_keys: int,
    ) -> np.ndarray:
        """Outputs per position [n_keys, n_out] from overlapping windows (centre-weighted)."""
        net.eval()
        weights = _centre_weights(self.window)
        task = get_task(self.task)
        total = np.zeros((n_keys + 1, task.n_outputs), dtype=np.float64)
        weight_sum = np.zeros(n_keys + 1)
        with torch.no_grad():
            for start in range(0, len(windows), 256):
                batch = torch.from_numpy(windows[start : start + 256])
                out = task.activate(base[batch] + net(inputs[batch]))  # [B, T, n_out]
                flat = batch.numpy().ravel()
                w = np.broadcast_to(weights, batch.shape).ravel()
                np.add.at(total, flat, out.reshape(len(flat), -1) * w[:, None])
                np.add.at(weight_sum, flat, w)
        return (total[:-1] / np.maximum(weight_sum[:-1], 1e-12)[:, None]).astype(np.float32)

    # -- prediction -----------------------------------------------------------------------
    def predict_outputs(
        self, X: np.ndarray, groups: np.ndarray, frames: np.ndarray, ok: np.ndarray
    ) -> np.ndarray:
        """Outputs per row (VA values or probabilities), from whole videos; NaN where the
        row's features are not ok."""
        with single_torch_thread():
            step = max(1, self.window // 2)
            seq, inputs, ok_key, base = self._inputs(X, groups, frames, ok, step)
            net = _Net(
                self.n_features_in_,
                self.width,
                get_task(self.task).n_outputs,
                self.arch_,
                tuple(self.dilations),
            )
            net.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights_.items()})
            per_key = self._run(net, inputs, base, seq.windows, len(seq.first_row))
        per_key[~ok_key] = np.nan
        return per_key[seq.key_of_row]


def _state(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def sequence_groups(split: np.ndarray, video: np.ndarray) -> np.ndarray:
    """One code per (split, video): a video's rows of one split form one sequence."""
    return pd.factorize(pd.Series(split).astype(str) + "\0" + pd.Series(video).astype(str))[0]


def fit_temporal_candidate(
    model: TemporalHead,
    task_name: str,
    Z: np.ndarray,
    ok: np.ndarray,
    split: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    y: np.ndarray,
    folds: int,
) -> tuple[TemporalHead, np.ndarray, dict[str, Any]]:
    """The temporal counterpart of `fitting.fit_candidate`: fit on the train videos (early
    stopping on a held-out part of them), predict every val and test row from whole videos
    (NaN where not ok), score on val. With `folds`, train and val rows get out-of-fold
    predictions from refits on the other train+val videos."""
    task = get_task(task_name)
    valid = task.valid_rows(y)
    train = split == "train"
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(Z[train], y[train], groups[train], frames[train], ok[train])
    outputs = np.full((len(ok), task.n_outputs), np.nan, dtype=np.float32)
    predict = np.isin(split, ("val", "test"))
    outputs[predict] = model.predict_outputs(
        Z[predict], groups[predict], frames[predict], ok[predict]
    )
    val_rows = np.flatnonzero(valid & ok & (split == "val"))
    info: dict[str, Any] = {
        "n_train": int((valid & ok & train).sum()),
        "n_val": len(val_rows),
        "scores": task.score(y[val_rows], outputs[val_rows]) if len(val_rows) else {},
        "arch": model.arch_,
        "arch_scores": model.arch_scores_,
    }
    if folds:
        pool = np.flatnonzero(np.isin(split, ("train", "val")))
        if len(np.unique(groups[pool])) < folds:
            raise InputError(f"--folds {folds}: only {len(np.unique(groups[pool]))} videos")
        for fit_rows, held_rows in group_kfold(pool, groups[pool], folds):
            fold = model.__class__(**{**model.get_params(), "arch": model.arch_})
            fold.fit(Z[fit_rows], y[fit_rows], groups[fit_rows], frames[fit_rows], ok[fit_rows])
            outputs[held_rows] = fold.predict_outputs(
                Z[held_rows], groups[held_rows], frames[held_rows], ok[held_rows]
            )
        info["oof_scores"] = task.score(y[val_rows], outputs[val_rows]) if len(val_rows) else {}
    info["fit_seconds"] = time.perf_counter() - start
    info["cpu_seconds"] = time.process_time() - cpu_start
    return model, outputs, info
