"""Head models with scikit-learn's estimator contract (params in __init__, fitted attrs end in _).

Every model takes the task name as a parameter and labels in the task's form (va: [N, 2]
floats; expr: [N] codes; au: [N, 12] with -1 for a missing AU). Rows without a valid label
must already be dropped (see `tasks.Task.valid_rows`); AU entries of -1 are masked here.

`fit(X, y, eval_set=(X_val, y_val))` follows the LightGBM convention for early stopping.
`model.predict_outputs(X)` gives what a prediction file stores: VA values, or class / AU
probabilities. Torch weights are kept as numpy arrays (plus the params), so a saved head
(`affectpipe.heads.storage`) loads on any machine without torch state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone

from affectpipe.errors import InputError
from affectpipe.machine import usable_cores
from affectpipe.tasks import get_task

SMALL_PROBLEM = 1 << 22  # input values (rows x columns) below which LightGBM uses one thread


def lightgbm_threads(n_values: int) -> int:
    """LightGBM threads for `n_values` inputs: one for small problems, else the usable cores,
    capped by OMP_NUM_THREADS where it is set. The heads' fit workers (heads.fit_workers runs
    fits in one per core) set it to 1, so trees in two workers on two cores take one thread
    each: measured at load ~6 on 2 cores, two threads per fit used 3x the CPU time of one
    (42 vs 13 s for a VA fit), spinning while waiting for a core."""
    if n_values < SMALL_PROBLEM:
        return 1
    cores = usable_cores()
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(budget))) if budget.isdigit() else cores


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch on one thread (restored after): head matrices (a batch x ~128 columns) are
    too small to share, and on a busy machine a second thread made an MLP epoch 7x slower
    (measured: 0.55 s CPU per epoch of 100k rows on one thread, 6.7 s on two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _to_numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


class _HeadBase(BaseEstimator):
    """predict / predict_proba on top of `_raw_outputs` (VA values or probabilities)."""

    task: str

    def predict_outputs(self, X: np.ndarray) -> np.ndarray:
        return self._raw_outputs(np.asarray(X, dtype=np.float32))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return get_task(self.task).decide(self.predict_outputs(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if get_task(self.task).is_regression:
            raise AttributeError(f"a {self.task} head is a regressor: use predict")
        return self.predict_outputs(X)

    def _raw_outputs(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LinearHead(_HeadBase):
    """Linear head. VA: closed-form ridge (clipped to [-1, 1]); expr/au: full-batch L-BFGS of a
    weighted softmax / sigmoid model with L2 penalty `alpha` (per row).

    alpha: L2 strength; max_iter: L-BFGS iterations; class_weighting: class / positive
    weights in the loss; focal_gamma: focal loss for expr (0 = plain cross-entropy).
    On small data `alpha` is chosen from `regularisation`'s grid on held-out train videos
    (`heads.regularisation.choose_regularisation`) unless the candidate's params set it.
    """

    regularisation = ("alpha", (1e-4, 1e-3, 1e-2, 1e-1, 1.0))

    def __init__(
        self,
        task: str = "expr",
        alpha: float = 1e-4,
        max_iter: int = 50,
        class_weighting: bool = True,
        focal_gamma: float = 0.0,
    ):
        self.task = task
        self.alpha = alpha
        self.max_iter = max_iter
        self.class_weighting = class_weighting
        self.focal_gamma = focal_gamma

    def fit(self, X: np.ndarray, y: np.ndarray, eval_set: object = None) -> LinearHead:
        X = np.asarray(X, dtype=np.float32)
        if get_task(self.task).is_regression:
            self._fit_ridge(X, np.asarray(y, dtype=np.float64))
        else:
            with single_torch_thread():
                self._fit_lbfgs(X, np.asarray(y))
        return self

    def _fit_ridge(self, X: np.ndarray, y: np.ndarray) -> None:
        mean_x = X.mean(axis=0, dtype=np.float64)
        mean_y = y.mean(axis=0)
        centred = X - mean_x.astype(np.float32)
        gram = (centred.T @ centred).astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.alpha * len(X)
        coef = np.linalg.solve(gram, (centred.T @ (y - mean_y).astype(np.float32)).astype(float))
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = (mean_y - mean_x @ coef).astype(np.float32)

    def _fit_lbfgs(self, X: np.ndarray, y: np.ndarray) -> None:
        task = get_task(self.task)
        loss_fn = task.loss(y, self.focal_gamma, self.class_weighting)
        xs, ts = torch.from_numpy(X), task.target_tensor(y)
        # Weight as [n_out, n_in] for F.linear: on one CPU thread its backward is ~4x faster
        # than that of `xs @ weight` (measured: 15 vs 61 ms on 90k x 138 rows).
        weight = torch.zeros(task.n_outputs, X.shape[1], requires_grad=True)
        bias = torch.zeros(task.n_outputs, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=self.max_iter,
            history_size=20,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            logits = torch.nn.functional.linear(xs, weight, bias)
            loss = loss_fn(logits, ts) + 0.5 * self.alpha * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.coef_ = weight.detach().numpy().T.copy()
        self.intercept_ = bias.detach().numpy().copy()
        self.n_iter_ = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))

    def _raw_outputs(self, X: np.ndarray) -> np.ndarray:
        raw = X @ self.coef_ + self.intercept_
        task = get_task(self.task)
        if task.is_regression:  # a ridge fit: the values themselves, kept in range
            return np.clip(raw, -1.0, 1.0)
        return task.activate(torch.from_numpy(np.ascontiguousarray(raw)))


class MLPHead(_HeadBase):
    """PyTorch MLP with 0 or 1 hidden layer, dropout, AdamW, early stopping on the task metric.

    hidden: hidden width (0 = a linear model trained by AdamW); dropout: on the input of the
    output layer; lr, weight_decay: AdamW (lr is the peak of a cosine decay over the budget);
    batch_size: rows per step (less on small data, see fit). The budget is `max_epochs`
    passes over the data, extended to at least `min_steps` optimiser steps: at Aff-Wild2
    scale a few epochs of 4096-row batches suffice, while a few hundred rows need many
    epochs of small batches (3 epochs were ~20 steps, and the MLPs lost to linear heads).
    The default 96 is 3 epochs of 32 batches, which every set of 2,048 rows or more has
    (a batch is a 32nd of the rows, up to `batch_size`): only smaller sets are extended.
    (At 100, s-Aff-Wild2's ~93k-row fits ran a 4th epoch: a third more time, no better.)
    Early stopping on `eval_set` (the task's validation metric, from affectpipe.metrics),
    checked `EVALUATIONS` times over the budget, stopping after `patience` checks without a
    better score and keeping the best weights; without an eval set the whole budget runs.
    focal_gamma, class_weighting: as in LinearHead. random_state: seeds init and shuffling.
    """

    EVALUATIONS = 20  # early-stopping checks over the budget (at most one per epoch)
    stops_early = True  # uses `eval_set`: training gives it held-out train rows
    # AdamW's decoupled decay shrinks by lr * weight_decay per step: 10 is strong over the
    # ~100 steps of a small set (see LinearHead on how the grid is used).
    regularisation = ("weight_decay", (1e-2, 1.0, 10.0))

    def __init__(
        self,
        task: str = "expr",
        hidden: int = 128,
        dropout: float = 0.0,
        lr: float = 6e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 4096,
        max_epochs: int = 3,
        min_steps: int = 96,
        patience: int = 4,
        class_weighting: bool = True,
        focal_gamma: float = 0.0,
        random_state: int = 0,
    ):
        self.task = task
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.min_steps = min_steps
        self.patience = patience
        self.class_weighting = class_weighting
        self.focal_gamma = focal_gamma
        self.random_state = random_state

    def _module(self, n_in: int) -> torch.nn.Sequential:
        n_out = get_task(self.task).n_outputs
        if self.hidden:
            layers = [torch.nn.Linear(n_in, self.hidden), torch.nn.GELU()]
            layers += [torch.nn.Dropout(self.dropout), torch.nn.Linear(self.hidden, n_out)]
        else:
            layers = [torch.nn.Dropout(self.dropout), torch.nn.Linear(n_in, n_out)]
        return torch.nn.Sequential(*layers)

    def fit(
        self, X: np.ndarray, y: np.ndarray, eval_set: tuple[np.ndarray, np.ndarray] | None = None
    ) -> MLPHead:
        with single_torch_thread():
            self._fit(X, y, eval_set)
        return self

    def _fit(
        self, X: np.ndarray, y: np.ndarray, eval_set: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        task = get_task(self.task)
        generator = torch.Generator().manual_seed(int(self.random_state))
        torch.manual_seed(int(self.random_state))
        module = self._module(X.shape[1])
        optimizer = torch.optim.AdamW(
            module.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        xs = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        ts = task.target_tensor(np.asarray(y))
        loss_fn = task.loss(np.asarray(y), self.focal_gamma, self.class_weighting)
        # A batch keeps >= 64 rows for a stable batch CCC (a smaller last batch is skipped).
        batch_size = min(self.batch_size, max(64, len(xs) // 32))
        min_batch = min(len(xs), 64)
        steps_per_epoch = max(1, len(xs) // batch_size)
        epochs = max(self.max_epochs, -(-self.min_steps // steps_per_epoch))
        # Cosine decay over the whole budget: a few epochs at a higher peak LR reach the score
        # of ~3x as many epochs at a constant one.
        total_steps = epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + np.cos(np.pi * min(step / total_steps, 1.0)))
        )
        check_every = max(1, epochs // self.EVALUATIONS)
        best_score, best_state, best_epoch, stale = -np.inf, None, 0, 0
        self.history_: list[float] = []
        self.n_steps_ = 0
        for epoch in range(1, epochs + 1):
            module.train()
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < min_batch:
                    continue
                optimizer.zero_grad()
                loss_fn(module(xs[idx]), ts[idx]).backward()
                optimizer.step()
                schedule.step()
                self.n_steps_ += 1
            if eval_set is None:
                best_state, best_epoch = _to_numpy_state(module), epoch
                continue
            if epoch % check_every and epoch != epochs:
                continue
            self.weights_ = _to_numpy_state(module)
            self.n_features_in_ = X.shape[1]
            score = task.score(eval_set[1], self.predict_outputs(eval_set[0]))[task.main_metric]
            score = -np.inf if np.isnan(score) else score
            self.history_.append(float(score))
            if score > best_score:
                best_score, best_state, best_epoch, stale = score, self.weights_, epoch, 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        self.weights_ = best_state
        self.best_epoch_ = best_epoch
        self.n_features_in_ = X.shape[1]

    def _raw_outputs(self, X: np.ndarray) -> np.ndarray:
        module = self._module(self.n_features_in_)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights_.items()})
        module.eval()
        with torch.no_grad():
            raw = module(torch.from_numpy(np.ascontiguousarray(X)))
            return get_task(self.task).activate(raw)

    def refit_params(self) -> dict[str, int]:
        """Params for a refit without an eval set (cross-fitting): the early-stopped epochs."""
        return {"max_epochs": max(1, self.best_epoch_), "min_steps": 0}


class AttentionHead(MLPHead):
    """`AttentionPool` over the tokens of a ``BACKBONE:spatial`` part (the cells of the
    backbone's pooled last feature map), then dropout and a linear output: MLPHead's
    training (losses, AdamW, budget, early stopping, regularisation grid) on another network.

    tokens: cells per row (``spatial_grid`` squared; training sets it from the feature
    file, see `heads.training`); hidden: width of the attention scorer. The input's columns
    must be the part's own, standardised but not projected (`LoadedFeatures.has_spatial`).
    """

    token_input = True  # reads one `spatial` part, columns unprojected

    def __init__(self, task: str = "expr", tokens: int = 0, **params: Any):
        super().__init__(task=task, **params)
        self.tokens = tokens

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return sorted({"tokens", *MLPHead._get_param_names()})

    def _module(self, n_in: int) -> torch.nn.Sequential:
        from affectpipe.heads.attention import AttentionPool

        tokens = self.tokens
        if type(tokens) is not int or tokens < 1 or n_in % tokens or self.hidden < 1:
            raise ValueError(
                f"an attention head needs tokens >= 1 dividing its {n_in} inputs and hidden "
                f">= 1 (tokens={tokens!r}, hidden={self.hidden!r}): train it on a "
                "BACKBONE:spatial part"
            )
        channels = n_in // tokens
        return torch.nn.Sequential(
            torch.nn.Unflatten(1, (tokens, channels)),
            AttentionPool(channels, self.hidden),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(2 * channels, get_task(self.task).n_outputs),
        )


class LightGBMHead(_HeadBase):
    """Gradient-boosted trees (LightGBM) on the projected input, set up for speed.

    The input is binned once per fit (`max_bin` bins per column, bin edges from at most
    BIN_SAMPLE_ROWS rows, raw data freed) into one Dataset that every output reuses through
    its label and weights: 2 VA regressors, or 12 AU binary models (missing AUs weighted 0);
    expr is one multiclass model with class weights as sample weights. The early-stopping
    set is binned with the train bins (a reference Dataset). Each round fits trees of
    `num_leaves` leaves (at least `min_data_in_leaf` rows each) on a `bagging_fraction`
    sample of the rows and `feature_fraction` of the columns; fitting stops after
    `early_stopping_rounds` rounds without a better loss on `eval_set` (the objective's own
    loss) and keeps the best round. n_jobs: threads (0 = `lightgbm_threads`).
    """

    stops_early = True
    BIN_SAMPLE_ROWS = 50000  # rows the bin edges are computed from (LightGBM's default: 200k)

    def __init__(
        self,
        task: str = "expr",
        n_estimators: int = 300,
        learning_rate: float = 0.1,
        num_leaves: int = 15,
        min_data_in_leaf: int = 20,
        feature_fraction: float = 0.5,
        bagging_fraction: float = 0.5,
        max_bin: int = 63,
        early_stopping_rounds: int = 10,
        class_weighting: bool = True,
        n_jobs: int = 0,
        random_state: int = 0,
    ):
        self.task = task
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.class_weighting = class_weighting
        self.n_jobs = n_jobs
        self.random_state = random_state

    def lightgbm_params(self, n_values: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(Dataset params, training params) for an input of `n_values` values."""
        binning = {
            "max_bin": self.max_bin,
            "bin_construct_sample_cnt": self.BIN_SAMPLE_ROWS,
            "min_data_in_leaf": self.min_data_in_leaf,  # binning drops columns that cannot split
            "num_threads": self.n_jobs or lightgbm_threads(n_values),
            "verbose": -1,
        }
        params = {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "force_col_wise": True,  # skips LightGBM's timing of both layouts on every fit
            "seed": int(self.random_state),
            "deterministic": True,
            **binning,
        }
        return binning, params

    def fit(
        self, X: np.ndarray, y: np.ndarray, eval_set: tuple[np.ndarray, np.ndarray] | None = None
    ) -> LightGBMHead:
        import lightgbm as lgb

        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y)
        binning, params = self.lightgbm_params(X.size)
        train = lgb.Dataset(X, params=binning, free_raw_data=True).construct()
        valid = None
        if eval_set is not None:
            X_val = np.ascontiguousarray(eval_set[0], dtype=np.float32)
            valid = lgb.Dataset(X_val, reference=train, params=binning).construct()
            eval_targets = get_task(self.task).booster_targets(np.asarray(eval_set[1]))
        self.boosters_: list[str] = []
        self.n_rounds_: list[int] = []
        task = get_task(self.task)
        for j, (objective, label, weight) in enumerate(task.booster_jobs(y, self.class_weighting)):
            train.set_label(label)
            _set_weight(train, weight)
            valid_sets, callbacks = [], []
            if valid is not None:
                label, labelled = eval_targets[j]
                valid.set_label(np.where(labelled > 0, label, 0))
                _set_weight(valid, labelled)
                valid_sets = [valid]
                callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
            booster = lgb.train(
                {**params, **objective},
                train,
                num_boost_round=self.n_estimators,
                valid_sets=valid_sets,
                callbacks=callbacks,
            )
            # With early stopping, model_to_string keeps the rounds up to the best one.
            self.boosters_.append(booster.model_to_string())
            self.n_rounds_.append(int(booster.best_iteration or booster.current_iteration()))
        return self

    def refit_params(self) -> dict[str, int]:
        """Params for a refit without an eval set (cross-fitting): the early-stopped rounds."""
        return {"n_estimators": max(self.n_rounds_)}

    def _raw_outputs(self, X: np.ndarray) -> np.ndarray:
        import lightgbm as lgb

        X = np.ascontiguousarray(X)
        outs = []
        for text in self.boosters_:
            try:
                booster = lgb.Booster(model_str=text)
            except lgb.basic.LightGBMError as exc:
                raise InputError(f"not a LightGBM text model: {exc}") from None
            outs.append(booster.predict(X, num_threads=lightgbm_threads(X.size)))
        return get_task(self.task).join_boosters(outs)


def _set_weight(dataset: Any, weight: np.ndarray | None) -> None:
    """Set a reused Dataset's weights. `Dataset.set_weight` ignores None and all-ones
    weights, which would keep the previous booster's weights: those are cleared instead."""
    if weight is None or np.all(weight == 1):
        dataset.set_field("weight", None)
        dataset.weight = None
    else:
        dataset.set_weight(weight)


class SeedBag(BaseEstimator):
    """Soft voting over copies of `estimator` trained with seeds random_state + 0..n_seeds-1."""

    def __init__(self, estimator: BaseEstimator, n_seeds: int = 1):
        self.estimator = estimator
        self.n_seeds = n_seeds

    @property
    def task(self) -> str:
        return self.estimator.task

    @property
    def stops_early(self) -> bool:
        return getattr(self.estimator, "stops_early", False)

    @property
    def regularisation(self) -> tuple[str, tuple[float, ...]] | None:
        inner = getattr(self.estimator, "regularisation", None)
        return None if inner is None else (f"estimator__{inner[0]}", inner[1])

    def fit(self, X: np.ndarray, y: np.ndarray, eval_set: object = None) -> SeedBag:
        base_seed = int(self.estimator.get_params()["random_state"])
        self.estimators_ = []
        for i in range(self.n_seeds):
            model = clone(self.estimator).set_params(random_state=base_seed + i)
            self.estimators_.append(model.fit(X, y, eval_set=eval_set))
        return self

    def predict_outputs(self, X: np.ndarray) -> np.ndarray:
        return np.mean([m.predict_outputs(X) for m in self.estimators_], axis=0)

    def refit_params(self) -> dict[str, object]:
        inner = self.estimators_[0]
        return {f"estimator__{k}": v for k, v in getattr(inner, "refit_params", dict)().items()}
