"""Options defined once (issue 21, item 6): each stage's options dataclass gives the defaults
of its command, of its Python API and of `pipeline run`, whose TOML tables are checked
against the dataclasses; the stages' records store the options."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import click
import pytest
from conftest import run_cli

from affectpipe.blend.options import BlendOptions
from affectpipe.data.options import IndexOptions
from affectpipe.errors import InputError
from affectpipe.extract.options import ExtractOptions, InferenceOptions
from affectpipe.finetune.options import FinetuneOptions
from affectpipe.heads.options import HeadsOptions
from affectpipe.options import build, check_table, record, table_schema
from affectpipe.pipeline import cli
from affectpipe.predict.options import PredictOptions

STAGE_COMMANDS = [
    (("index",), IndexOptions),
    (("extract",), ExtractOptions),
    (("bench", "extract"), InferenceOptions),
    (("heads",), HeadsOptions),
    (("predict",), PredictOptions),
    (("blend",), BlendOptions),
    (("finetune",), FinetuneOptions),
    (("run",), ExtractOptions),
    (("run",), HeadsOptions),
]


def _command(path: tuple[str, ...]) -> click.Command:
    command = cli
    for name in path:
        command = command.commands[name]
    return command


def _cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "cli" in f.metadata]


@pytest.mark.parametrize(
    ("path", "cls"), STAGE_COMMANDS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else ""
)
def test_each_stage_command_takes_its_defaults_and_help_from_the_dataclass(path, cls) -> None:
    params = {p.name: p for p in _command(path).params}
    fields = _cli_fields(cls)
    if path == ("bench", "extract"):  # its --runtime takes a list of runtimes to time
        fields = [f for f in fields if f.name != "runtime"]
    assert fields
    for f in fields:
        assert params[f.name].default == f.default, (path, f.name)
        assert params[f.name].help == f.metadata["cli"]["help"], (path, f.name)


def _api_defaults(function) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


# finetune's fields that drive the run; the others override the recipe the API takes whole
RUN_FIELDS = ("workers", "seed", "max_steps", "checkpoint_every", "fresh", "force")


def test_the_python_api_has_the_dataclass_defaults() -> None:
    from affectpipe import extract
    from affectpipe.data.index import index_dataset
    from affectpipe.finetune import finetune
    from affectpipe.heads.training import train
    from affectpipe.predict.api import Predictor

    for function, cls, names in [
        (extract.run, ExtractOptions, None),
        (Predictor.__init__, PredictOptions, None),
        (train, HeadsOptions, None),
        (index_dataset, IndexOptions, ("lenient", "force")),  # the rest: **format_options
        (
            finetune,
            FinetuneOptions,
            ("workers", "seed", "max_steps", "checkpoint_every", "fresh", "force"),
        ),
    ]:
        api = _api_defaults(function)
        for f in dataclasses.fields(cls):
            if names is None or f.name in names:
                assert api[f.name] == f.default, (function.__qualname__, f.name)


def test_every_index_option_is_a_format_option() -> None:
    from affectpipe.data.formats import format_names, get_format

    taken = {option for name in format_names() for option in get_format(name).option_names}
    fields = {f.name for f in dataclasses.fields(IndexOptions)} - {"lenient", "force"}
    assert fields <= taken


def test_a_table_is_checked_against_the_dataclass_and_built_from_it(tmp_path: Path) -> None:
    schema = table_schema(ExtractOptions)
    check_table({"batch_size": 8, "amp": "bf16"}, schema, "f.toml [x]")
    for table, message in [
        ({"batch_sise": 8}, "f.toml [x]: unknown key 'batch_sise' (known: amp, batch_size"),
        ({"batch_size": 0}, "f.toml [x]: $.batch_size: 0 is less than the minimum of 1"),
        ({"amp": "fp8"}, "$.amp: 'fp8' is not one of ['off', 'bf16', 'fp16']"),
        ({"channels_last": "yes"}, "$.channels_last: 'yes' is not of type 'boolean'"),
    ]:
        with pytest.raises(InputError) as caught:
            check_table(table, schema, "f.toml [x]")
        assert message in str(caught.value)
    with pytest.raises(InputError, match=r"\$.val_fraction: 1.0 is greater than or equal"):
        check_table({"val_fraction": 1.0}, table_schema(IndexOptions), "f.toml [index]")
    built = build(IndexOptions, {"test_list": "a/b.txt", "lenient": True, "other": 1})
    assert built == IndexOptions(test_list=Path("a/b.txt"), lenient=True)
    assert record(built)["test_list"] == "a/b.txt"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[run]\ndataset = 'toy'\nbatchsize = 8\n", "[run]: unknown key 'batchsize'"),
        ("[index]\ntest_lists = 'x.txt'\n", "[index]: unknown key 'test_lists'"),
        ("[blend]\nsmooting = false\n", "[blend]: unknown key 'smooting'"),
        ("[blend]\ncrossfit_folds = 'three'\n", "[blend]: $.crossfit_folds: 'three' is not"),
        ("[blend]\ndisabled_stages = ['gatng']\n", "[blend]: blend stage 'gatng' is not"),
        ("[extract]\namp = 'bf16'\n", "unknown tables ['extract']"),
    ],
)
def test_run_config_with_an_unknown_key_exits_2_naming_it(tmp_path: Path, text, named) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text(text)
    result = run_cli("--cache-dir", tmp_path, "run", "--config", config, "--dataset", "toy")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{config} {named}" in result.stderr or f"{config}: {named}" in result.stderr


def test_run_passes_each_stage_its_options_group(tmp_path: Path, monkeypatch) -> None:
    """Stage options from the command line and from the [run], [index] and [blend] tables
    reach the stages as their dataclasses' fields."""
    from click.testing import CliRunner
    from test_workflow import Recorder

    from affectpipe.blend.tuning import BlendOptions
    from affectpipe.workflow import Stages

    recorder = Recorder()
    monkeypatch.setattr(Stages, "default", classmethod(lambda cls: recorder.stages()))
    config = tmp_path / "pipeline.toml"
    config.write_text(
        '[run]\ndataset = "toy"\nformat = "csv"\namp = "bf16"\nfolds = 3\n'
        "[index]\nval_fraction = 0.25\nlenient = true\n[blend]\nsmoothing = false\n"
    )
    args = ["--cache-dir", str(tmp_path), "run", "--config", str(config), "--data", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--seeds", "2", "--no-channels-last", "--partial"])
    assert result.exit_code == 0, result.output
    index, extract, heads, blend = (c[2] for c in recorder.calls)
    assert index == dataclasses.asdict(IndexOptions(val_fraction=0.25, lenient=True))
    extract_options = {k: extract[k] for k in ExtractOptions.__dataclass_fields__}
    assert extract_options == dataclasses.asdict(ExtractOptions(amp="bf16", channels_last=False))
    assert {k: heads[k] for k in HeadsOptions.__dataclass_fields__} == dataclasses.asdict(
        HeadsOptions(folds=3, seeds=2)
    )
    assert blend["options"] == BlendOptions(smoothing=False)


def test_the_heads_run_record_stores_its_options(tmp_path: Path) -> None:
    from test_heads_runs import linear_config, tiny_cache

    from affectpipe.heads.training import train

    paths = tiny_cache(tmp_path / "rec")
    result = train(
        paths, tasks=["expr"], config_path=linear_config(tmp_path, seed=4), seeds=2, progress=False
    )
    options = json.loads(result.record_path.read_text())["options"]
    assert options == {**record(HeadsOptions(seeds=2)), "seed": 4, "n_components": 128}
