"""The extraction pass on Ray Data: the chunks of `engine.extract_pass`, computed on a cluster.

The driver plans the batches exactly as the single-process engine does (chunk-aligned,
`batch_size` rows each), so every number is computed on the same batch as in a local run.
The plan becomes a Ray Dataset with one row per batch:

    plan rows --map(_decode: Ray tasks, 1 CPU each)--> uint8 pixels per CNN backbone
              --map_batches(_Backbones: fixed actor pool, 1 GPU or 2 CPUs each)--> features

Decoding reuses `images.DecodeDataset` (same files, same resize, same failure policy); each
actor holds every model of the pass, built once in the driver (so weights need only be
readable there) and prepared on the actor's device by `engine.prepare_model`. Results come
back in any order; the driver commits a chunk to every backbone's `PartStore` as soon as all
its batches are back, so a killed job resumes from its committed chunks with either engine.
Ray Data restarts dead actors and retries their batches (its defaults for actor pools:
max_restarts=-1, max_task_retries=-1) and retries failed decode tasks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract.decode import DecodeDataset, collate
from affectpipe.extract.engine import (
    DescriptorJob,
    ModelJob,
    PassStats,
    _ChunkBuffer,
    checked_rows,
    forward,
    pass_layout,
    prepare_model,
    probe_batch,
    resolve_device,
)
from affectpipe.machine import usable_cores

INSTALL_HINT = "pip install 'affectpipe[ray]'  (or: pip install 'ray[data]>=2.50')"
DECODE_CPUS = 1  # one decode task per core
# Torch threads of a CPU actor. Differing from DECODE_CPUS also keeps Ray from fusing the
# decode step into the actors, so decoding stays in tasks spread over the cluster's cores.
CPU_ACTOR_CPUS = 2
MAX_PLAN_BLOCKS = 20_000  # one block per batch up to this many (a few batches per task beyond)


def import_ray() -> Any:
    """The `ray` module, or InputError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the `data` extra)
    except ImportError:
        raise InputError(
            f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


@dataclass
class RayEngine:
    """Runs extraction passes on a Ray cluster (`address`) or on a local Ray instance.

    `actors` model actors: default one per GPU of the cluster with a CUDA device, one on CPU.
    Ray already running in this process is reused; one started here stops when the process
    exits (Ray's own exit hook).
    """

    address: str | None = None
    actors: int | None = None
    _device: str = field(default="cpu", init=False)
    _pool: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        import_ray()  # fail at once, with the install command
        if self.actors is not None and self.actors < 1:
            raise InputError("--actors must be >= 1")

    def connect(self, device: str) -> torch.device:
        """Start or join Ray and check that it can run `device` ("cpu", "cuda"); the
        device the models will run on (each GPU actor sees its own GPU as cuda:0)."""
        ray = import_ray()
        gpu = device.startswith("cuda")
        if not gpu and device != "cpu":
            raise InputError(f"unsupported device {device!r} for --engine ray: use cpu or cuda")
        if not ray.is_initialized():
            if self.address is None:
                cores = usable_cores()
                # Decode tasks and model actors share the cores, as in the local engine.
                wanted = 0 if gpu else (self.actors or 1) * CPU_ACTOR_CPUS + DECODE_CPUS
                ray.init(num_cpus=max(cores, wanted), include_dashboard=False)
            else:
                try:
                    ray.init(address=self.address)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise InputError(
                        f"cannot join the Ray cluster at --address {self.address}: {exc} "
                        "(start one with `ray start --head`, see docs/ray.md)"
                    ) from None
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if gpu:
            if gpus == 0:
                raise InputError("--device cuda: the Ray cluster has no GPU")
            pool = self.actors or gpus
            if pool > gpus:
                raise InputError(f"--actors {pool}: the Ray cluster has only {gpus} GPU(s)")
            need = pool + DECODE_CPUS
        else:
            pool = self.actors or 1
            need = pool * CPU_ACTOR_CPUS + DECODE_CPUS
        if cpus < need:
            raise InputError(
                f"{pool} model actor(s) on {device} and one decode task need {need:g} CPUs; "
                f"the Ray cluster has {cpus:g}: use fewer --actors or a bigger cluster"
            )
        self._device, self._pool = ("cuda" if gpu else "cpu"), pool
        return torch.device(self._device)

    def describe(self) -> str:
        kind = "GPU" if self._device == "cuda" else "CPU"
        return f"ray: {self._pool} {kind} actor(s)"

    def extract_pass(
        self,
        paths: Sequence[str | None],
        offset: int,
        model_jobs: Sequence[ModelJob],
        descriptor_jobs: Sequence[DescriptorJob],
        *,
        batch_size: int,
        device: torch.device | None = None,
        workers: int = 0,
        channels_last: bool = True,
        amp_dtype: torch.dtype | None = None,
        progress: bool = True,
    ) -> PassStats:
        """`engine.extract_pass` on Ray; `model_jobs` hold built models, not yet prepared.

        `device` and `workers` are those of the local engine's signature: here the device
        is the one `connect` checked, and decode tasks use every free CPU of the cluster.
        """
        ray = import_ray()
        jobs = [*model_jobs, *descriptor_jobs]
        stores = [job.store for job in jobs]
        store, missing = pass_layout(stores)
        plan = []  # the local engine's batches: chunk-aligned, `batch_size` rows
        for start in sorted(set().union(*missing)):
            need = np.array([start in m for m in missing])
            for first in range(start, store.chunk_stop(start), batch_size):
                stop = min(first + batch_size, store.chunk_stop(start))
                batch_paths = json.dumps(paths[offset + first : offset + stop])
                plan.append(
                    {"first": first, "rows": stop - first, "need": need, "paths": batch_paths}
                )
        rows = sum(p["rows"] for p in plan)
        if not rows:
            return PassStats(0, 0.0)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        decoder = DecodeDataset(
            [],
            [job.spec.resize for job in model_jobs],
            [job.spec.input_size for job in model_jobs],
            [job.descriptor for job in descriptor_jobs],
        )
        gpu = self._device == "cuda"
        dataset = (
            ray.data.from_items(plan, override_num_blocks=min(len(plan), MAX_PLAN_BLOCKS))
            .map(_decode, fn_kwargs={"decoder": decoder}, num_cpus=DECODE_CPUS)
            .map_batches(
                _Backbones,
                batch_size=1,  # one planned batch per call: batches are never re-cut
                compute=ray.data.ActorPoolStrategy(size=self._pool),
                num_cpus=1 if gpu else CPU_ACTOR_CPUS,
                num_gpus=1 if gpu else 0,
                fn_constructor_kwargs={
                    "models": [job.model for job in model_jobs],  # stored once by Ray
                    "specs": [job.spec for job in model_jobs],
                    "device": self._device,
                    "channels_last": channels_last,
                    "amp_dtype": amp_dtype,
                },
            )
        )
        chunks = _Chunks(jobs, missing, store.chunk_rows)
        names = ", ".join(s.target.stem for s in stores)
        started = time.perf_counter()
        desc = f"extract {names} ({self.describe()})"
        with tqdm(total=rows, unit="img", desc=desc, disable=not progress) as bar:
            try:
                for result in dataset.iter_rows():
                    bar.update(chunks.add(result, n_models=len(model_jobs)))
            except ray.exceptions.RayError as exc:
                raise AffectpipeError(
                    f"Ray extraction failed ({type(exc).__name__}: {exc}); the chunks committed "
                    "so far are kept: rerun the command to resume"
                ) from exc
        if chunks.pending:
            raise AffectpipeError(f"Ray returned no result for chunks {sorted(chunks.pending)}")
        return PassStats(rows, time.perf_counter() - started)


def _decode(item: dict[str, Any], decoder: DecodeDataset) -> dict[str, Any]:
    """Ray task: decode one planned batch (the same `DecodeDataset` as the local workers)."""
    paths = json.loads(item["paths"])
    dataset = DecodeDataset(paths, decoder.resizes, decoder.input_sizes, decoder.descriptors)
    batch = collate([dataset[i] for i in range(len(paths))])
    out = {
        "first": item["first"],
        "need": item["need"],
        "ok": batch.ok,
        "reasons": json.dumps(batch.reasons),
    }
    out.update({f"pixels_{k}": t.numpy() for k, t in enumerate(batch.inputs)})
    out.update({f"raws_{k}": raw for k, raw in enumerate(batch.raws)})
    return out


class _Backbones:
    """Ray actor: every model of the pass, prepared on this actor's device."""

    def __init__(
        self,
        models: list[torch.nn.Module],
        specs: list[Any],
        device: str,
        channels_last: bool,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.device = resolve_device(device)  # Ray shows a GPU actor only its own GPU
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
        self.channels_last, self.amp_dtype = channels_last, amp_dtype
        prepare = partial(prepare_model, device=self.device, channels_last=channels_last)
        self.jobs = [
            ModelJob(spec, prepare(model, probe=probe_batch(spec)), None)  # driver owns stores
            for spec, model in zip(specs, models, strict=True)
        ]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        need = batch["need"][0]
        out = {key: value for key, value in batch.items() if not key.startswith("pixels_")}
        with torch.inference_mode():
            for k, job in enumerate(self.jobs):
                pixels = torch.from_numpy(np.array(batch[f"pixels_{k}"][0]))  # Ray's is read-only
                if need[k]:
                    parts = forward(
                        job,
                        pixels,
                        self.device,
                        channels_last=self.channels_last,
                        amp_dtype=self.amp_dtype,
                    )
                    embedding, logits = parts["embedding"], parts["logits"]
                else:  # this backbone committed the chunk before an interruption
                    embedding = logits = np.zeros((len(pixels), 0), np.float32)
                out[f"embedding_{k}"], out[f"logits_{k}"] = embedding[None], logits[None]
        return out


class _Chunks:
    """Batches arriving in any order -> chunks committed to each job's store when whole."""

    def __init__(
        self, jobs: Sequence[ModelJob | DescriptorJob], missing: list[set[int]], size: int
    ) -> None:
        self.jobs, self.missing, self.size = list(jobs), missing, size
        self.pending: dict[int, dict[int, dict[str, Any]]] = {}  # chunk start -> first -> row
        self.seen: set[int] = set()

    def add(self, row: dict[str, Any], *, n_models: int) -> int:
        """Take one batch result; returns its number of images."""
        first = int(row["first"])
        if first in self.seen:  # a retried batch must replace, never add to, its first result
            raise AffectpipeError(f"Ray delivered the batch starting at row {first} twice")
        self.seen.add(first)
        start = first // self.size * self.size
        batches = self.pending.setdefault(start, {})
        batches[first] = row
        store = self.jobs[0].store
        n = len(row["ok"])
        if sum(len(b["ok"]) for b in batches.values()) == store.chunk_stop(start) - start:
            self._commit(start, [batches[f] for f in sorted(batches)], n_models)
            del self.pending[start]
        return n

    def _commit(self, start: int, batches: list[dict[str, Any]], n_models: int) -> None:
        for k, job in enumerate(self.jobs):
            if start not in self.missing[k]:
                continue
            buffer = _ChunkBuffer()
            for row in batches:
                ok_all = np.asarray(row["ok"], dtype=bool)
                ok = ok_all[:, k].copy()
                if k < n_models:
                    arrays = {"embedding": row[f"embedding_{k}"], "logits": row[f"logits_{k}"]}
                else:
                    arrays = {"embedding": np.array(row[f"raws_{k - n_models}"])}
                arrays = {name: np.array(a, dtype=np.float32) for name, a in arrays.items()}
                local = np.arange(int(row["first"]), int(row["first"]) + len(ok))
                failures = checked_rows(arrays, ok, json.loads(row["reasons"]), local)
                buffer.add(start, arrays, failures)
            buffer.commit_if_full(job.store)
