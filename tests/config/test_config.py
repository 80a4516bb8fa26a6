"""The experiment file: valid files parse, --set overrides apply, broken files give one-line key-path errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pbt_mq.config.experiment import Ready, Stop
from pbt_mq.config.parse import ConfigError, apply_override, load_file, load_json, parse
from pbt_mq.core.space import CategoricalSpace, FloatSpace, IntSpace
from pbt_mq.rules.base import ExploitSpec

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
name = "exp"
trainable = "pkg.mod:Net"
metric = "accuracy"
mode = "max"

[population]
size = 4

[ready]
steps = 10

[stop]
steps = 100

[hparams.lr]
type = "float"
low = 0.001
high = 0.1
log = true

[hparams.layers]
type = "int"
low = 1
high = 8

[hparams.opt]
type = "categorical"
values = ["sgd", "adam"]
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def patched(*edits: tuple[str, str], append: str = "") -> str:
    """BASE with each (old, new) replaced exactly once, then ``append`` added."""
    text = BASE
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text + append


# ---------------------------------------------------------------- valid files


def test_base_file(tmp_path: Path):
    exp = load_file(write(tmp_path, BASE))
    assert (exp.name, exp.trainable, exp.metric, exp.mode, exp.population) == ("exp", "pkg.mod:Net", "accuracy", "max", 4)
    assert exp.ready == Ready(steps=10) and exp.stop == Stop(steps=100)
    assert exp.spaces == {
        "lr": FloatSpace(0.001, 0.1, log=True),
        "layers": IntSpace(1, 8),
        "opt": CategoricalSpace(("sgd", "adam")),
    }
    assert exp.exploit == ExploitSpec("truncation", 0.2)
    assert exp.explore.rule == "perturb" and exp.explore.perturb.factors == (0.8, 1.2)
    assert (exp.seed, exp.queue, exp.store, exp.initial, exp.trainable_args) == (0, "pbt", None, (), {})


def test_toy_file():
    exp = load_file(ROOT / "workers" / "toy.toml")
    assert exp.name == "toy" and exp.trainable == "workers.toy:Toy" and exp.population == 2
    assert exp.initial == ({"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0})
    assert all(isinstance(v, float) for entry in exp.initial for v in entry.values())
    assert exp.ready == Ready(steps=4) and exp.stop == Stop(steps=100)
    assert exp.explore.perturb.mode == "noise" and exp.explore.resample_probability == 0.0
    assert exp.exploit == ExploitSpec("truncation", 0.2, ties="random")  # the two members tie exactly
    assert exp.spaces == {"h0": FloatSpace(0.0, 1.0), "h1": FloatSpace(0.0, 1.0)}
    assert exp.trainable_args == {"step_size": 0.05}


def test_digits_file():
    exp = load_file(ROOT / "workers" / "digits.toml")
    assert exp.population == 8 and exp.exploit == ExploitSpec("truncation", 0.25)
    assert exp.spaces["lr"] == FloatSpace(0.0005, 0.5, log=True)
    assert exp.spaces["batch_size"] == CategoricalSpace((16, 32, 64, 128), ordered=True)
    assert set(exp.spaces) == {"lr", "momentum", "weight_decay", "batch_size"}


@pytest.mark.parametrize("path", ["workers/toy.toml", "workers/digits.toml"])
def test_json_copy_parses_to_the_same_experiment(path: str):
    exp = load_file(ROOT / path)
    assert load_json(exp.to_json()) == exp


def test_name_defaults_to_file_stem(tmp_path: Path):
    exp = load_file(write(tmp_path, BASE.replace('name = "exp"\n', ""), "my run.v2.toml"))
    assert exp.name == "my-run-v2"


def test_full_file(tmp_path: Path):
    text = patched(
        ("[ready]\nsteps = 10", "[ready]\nseconds = 2.5"),
        ("[stop]\nsteps = 100", "[stop]\nseconds = 60\nscore = 0.99"),
        ('mode = "max"', 'mode = "min"\nseed = 7\nstore = "file:///tmp/x"\nqueue = "gpu"'),
        append="""
[exploit]
rule = "tournament"
quantile = 0.5

[explore]
rule = "resample"
factors = [0.5, 2]
perturb = "noise"
noise_std = 0.2
resample_probability = 1.0

[worker]
segment_timeout_s = 60
max_retries = 0

[trainable_args]
hidden = [64, 64]
data = { path = "x", shuffle = true }
""",
    )
    text = text.replace("size = 4", 'size = 4\ninitial = [{ lr = 0.01, opt = "adam" }, { layers = 3 }]')
    exp = load_file(write(tmp_path, text))
    assert exp.mode == "min" and exp.higher_is_better(0.3) == -0.3
    assert (exp.seed, exp.store, exp.queue) == (7, "file:///tmp/x", "gpu")
    assert exp.ready == Ready(seconds=2.5) and exp.stop == Stop(seconds=60.0, score=0.99)
    assert exp.exploit == ExploitSpec("tournament", 0.5)
    assert exp.explore.rule == "resample" and exp.explore.perturb.factors == (0.5, 2.0)
    assert exp.explore.perturb.mode == "noise" and exp.explore.perturb.noise_std == 0.2
    assert (exp.worker.segment_timeout_s, exp.worker.max_retries) == (60, 0)
    assert exp.trainable_args == {"hidden": [64, 64], "data": {"path": "x", "shuffle": True}}
    assert exp.initial == ({"lr": 0.01, "opt": "adam"}, {"layers": 3})
    assert load_json(exp.to_json()) == exp


# ---------------------------------------------------------------- --set overrides


def test_overrides_apply(tmp_path: Path):
    exp = load_file(
        write(tmp_path, BASE),
        ["population.size=16", "hparams.lr.low=1e-4", "exploit.rule=tournament", "mode = min",
         'metric="loss"', "trainable_args.depth=3", "hparams.opt.values=['a', 'b', 'c']", "name=renamed"],
    )
    assert exp.population == 16 and exp.spaces["lr"].low == 1e-4
    assert exp.exploit.rule == "tournament" and exp.mode == "min" and exp.metric == "loss"
    assert load_file(write(tmp_path, BASE), ['exploit.ties="random"']).exploit.ties == "random"
    assert exp.trainable_args == {"depth": 3} and exp.name == "renamed"
    assert exp.spaces["opt"] == CategoricalSpace(("a", "b", "c"))


def test_override_values_are_toml_else_strings():
    raw: dict = {}
    for item in ["a.int=3", "a.float=0.5", "a.bool=true", "a.list=[1, 2]", "a.word=hello", "a.path=pkg.m:C",
                 'a.quoted="3"', "a.empty="]:
        apply_override(raw, item)
    assert raw == {"a": {"int": 3, "float": 0.5, "bool": True, "list": [1, 2], "word": "hello",
                         "path": "pkg.m:C", "quoted": "3", "empty": ""}}


def test_override_is_validated_like_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^population\.size: must be >= 1, got 0$"):
        load_file(write(tmp_path, BASE), ["population.size=0"])
    with pytest.raises(ConfigError, match=r"^exploit\.rul: unknown key; did you mean 'rule'\?$"):
        load_file(write(tmp_path, BASE), ["exploit.rul=none"])


@pytest.mark.parametrize(
    ("item", "gist"),
    [
        ("population.size", r"^--set population\.size: expected section\.key=value$"),
        ("=3", r"^--set =3: empty key in ''$"),
        ("population..size=3", r"^--set population\.\.size=3: empty key"),
        ("population.size.x=3", r"^--set population\.size\.x=3: size is not a table$"),
    ],
)
def test_bad_override(item: str, gist: str):
    with pytest.raises(ConfigError, match=gist):
        apply_override({"population": {"size": 4}}, item)


# ---------------------------------------------------------------- broken files

NOT_A_TABLE = patched(
    ('[hparams.lr]\ntype = "float"\nlow = 0.001\nhigh = 0.1\nlog = true\n', ""),
    ("[hparams.layers]", "[hparams]\nlr = 0.01\n\n[hparams.layers]"),
)

BROKEN = [
    # (id, file text, the exact start of the error: key path and gist)
    ("low>=high", patched(("low = 0.001\nhigh = 0.1", "low = 0.1\nhigh = 0.001")),
     "hparams.lr.low: must be < high (got low=0.1, high=0.001)"),
    ("int low==high", patched(("low = 1\nhigh = 8", "low = 8\nhigh = 8")), "hparams.layers.low: must be < high"),
    ("unknown key", patched(("[stop]\nsteps = 100", "[stop]\nsteps = 100\nstep = 3")),
     "stop.step: unknown key; did you mean 'steps'?"),
    ("unknown top key", 'metrics = "x"\n' + BASE, "metrics: unknown key; did you mean 'metric'?"),
    ("unknown hparam key", patched(("log = true", "log = true\nlogg = 1")),
     "hparams.lr.logg: unknown key; did you mean 'log'?"),
    ("unknown section", BASE + "[exploitt]\nrule = 'none'\n", "exploitt: unknown key; did you mean 'exploit'?"),
    ("missing trainable", patched(('trainable = "pkg.mod:Net"\n', "")), "trainable: required"),
    ("typo required", patched(("metric =", "metrc =")), "metric: required (found 'metrc': a typo?)"),
    ("bad trainable", patched(('"pkg.mod:Net"', '"pkg.mod.Net"')), "trainable: 'pkg.mod.Net' must be an import path"),
    ("bad mode", patched(('mode = "max"', 'mode = "maximize"')), "mode: must be one of max, min; got 'maximize'"),
    ("ready both", patched(("[ready]\nsteps = 10\n", "[ready]\nsteps = 10\nseconds = 5\n")), "ready: set exactly one of steps and seconds"),
    ("ready neither", patched(("[ready]\nsteps = 10", "[ready]")), "ready: set exactly one of steps and seconds"),
    ("ready missing", patched(("[ready]\nsteps = 10\n", "")), "ready: required"),
    ("ready steps 0", patched(("[ready]\nsteps = 10\n", "[ready]\nsteps = 0\n")), "ready.steps: must be >= 1, got 0"),
    ("stop missing", patched(("[stop]\nsteps = 100\n", "")), "stop: required"),
    ("stop empty", patched(("[stop]\nsteps = 100", "[stop]")), "stop: set at least one of steps, seconds and score"),
    ("log low 0", patched(("low = 0.001", "low = 0.0")), "hparams.lr.low: must be > 0 for a log space (got 0.0)"),
    ("log low <0", patched(("low = 0.001", "low = -1.0")), "hparams.lr.low: must be > 0 for a log space"),
    ("categorical dup", patched(('["sgd", "adam"]', '["sgd", "adam", "sgd"]')),
     "hparams.opt.values: entries must be distinct"),
    ("categorical empty", patched(('["sgd", "adam"]', "[]")), "hparams.opt.values: must be a non-empty list"),
    ("categorical nan", patched(('["sgd", "adam"]', "[0.1, nan]")), "hparams.opt.values: entries must be finite"),
    ("categorical table", patched(('["sgd", "adam"]', "[{a = 1}]")),
     "hparams.opt.values: entries must be numbers, booleans or strings"),
    ("bad type", patched(('type = "int"', 'type = "integer"')),
     "hparams.layers.type: must be one of float, int, categorical; got 'integer'"),
    ("int float bound", patched(("low = 1\n", "low = 1.5\n")), "hparams.layers.low: must be an integer, got 1.5"),
    ("inf bound", patched(("high = 0.1", "high = inf")), "hparams.lr.high: must be a finite number, got inf"),
    ("log not bool", patched(("log = true", 'log = "yes"')), "hparams.lr.log: must be true or false, got 'yes'"),
    ("hparam not table", NOT_A_TABLE, "hparams.lr: must be a table, got float"),
    ("initial unknown", patched(("size = 4", "size = 4\ninitial = [{ lrr = 0.01 }]")),
     "population.initial[0].lrr: not a hyperparameter defined under [hparams]"),
    ("initial out of range", patched(("size = 4", "size = 4\ninitial = [{ lr = 0.01 }, { lr = 5.0 }]")),
     "population.initial[1].lr: 5.0 is outside hparams.lr"),
    ("initial wrong categorical", patched(("size = 4", 'size = 4\ninitial = [{ opt = "rmsprop" }]')),
     "population.initial[0].opt: 'rmsprop' is outside hparams.opt"),
    ("initial float for int", patched(("size = 4", "size = 4\ninitial = [{ layers = 2.0 }]")),
     "population.initial[0].layers: 2.0 is outside hparams.layers"),
    ("initial bool for float", patched(("size = 4", "size = 4\ninitial = [{ lr = true }]")),
     "population.initial[0].lr: True is outside hparams.lr"),
    ("initial too many", patched(("size = 4", "size = 1\ninitial = [{ lr = 0.01 }, { lr = 0.02 }]")),
     "population.initial: must be a list of at most size=1 tables"),
    ("initial not table", patched(("size = 4", "size = 4\ninitial = [0.01]")),
     "population.initial[0]: must be a table like {lr = 0.01}"),
    ("quantile > 0.5", BASE + "[exploit]\nquantile = 0.6\n", "exploit.quantile: must be <= 0.5, got 0.6"),
    ("quantile 0", BASE + "[exploit]\nquantile = 0\n", "exploit.quantile: must be >= 1e-09, got 0"),
    ("bad ties", BASE + "[exploit]\nties = 'coin'\n", "exploit.ties: must be one of strict, rank, random; got 'coin'"),
    ("bad exploit rule", BASE + "[exploit]\nrule = 'elitist'\n",
     "exploit.rule: unknown exploit rule 'elitist'; one of truncation, tournament, ttest, none, or a plug-in 'module:callable'"),
    ("bad plug-in form", BASE + "[exploit]\nrule = 'my rules:best'\n",
     "exploit.rule: 'my rules:best' is not a plug-in reference like 'package.module:callable'"),
    ("bad factors", BASE + "[explore]\nfactors = [0.8, -1]\n",
     "explore.factors: must be a non-empty list of positive numbers"),
    ("empty factors", BASE + "[explore]\nfactors = []\n", "explore.factors: must be a non-empty list"),
    ("resample p > 1", BASE + "[explore]\nresample_probability = 1.5\n",
     "explore.resample_probability: must be <= 1.0, got 1.5"),
    ("size bool", patched(("size = 4", "size = true")), "population.size: must be an integer, got True"),
    ("size huge", patched(("size = 4", "size = 1000001")), "population.size: must be <= 10000, got 1000001"),
    ("bad name", patched(('name = "exp"', 'name = "a b"')), "name: 'a b' must be 1-64 letters, digits, '_' or '-'"),
    ("empty metric", patched(('metric = "accuracy"', 'metric = ""')), "metric: must be a non-empty string, got ''"),
    ("no hparams", BASE.split("[hparams.lr]")[0] + "[hparams]\n", "hparams: define at least one hyperparameter"),
    ("population not table", patched(("[population]\nsize = 4\n", "")).replace('mode = "max"', 'mode = "max"\npopulation = 4'),
     "population: must be a table, got int"),
    ("trainable_args date", BASE + "[trainable_args]\nwhen = 1979-05-27\n",
     "trainable_args.when: must be a string, number, boolean, array or table, got date"),
    ("worker timeout 0", BASE + "[worker]\nsegment_timeout_s = 0\n", "worker.segment_timeout_s: must be >= 1, got 0"),
    ("invalid toml", BASE + "x = = 1\n", "{path}: not valid TOML (Invalid value (at line 29, column 5))"),
    ("bad toml table", "[ready\n" + BASE, "{path}: not valid TOML (Expected ']' at the end of a table declaration"),
    ("duplicate toml table", BASE + "[stop]\nsteps = 3\n", "{path}: not valid TOML (Cannot declare ('stop',) twice"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_file(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    msg = str(info.value)
    assert msg.startswith(expected.replace("{path}", str(path))), msg
    assert "\n" not in msg and "Traceback" not in msg
    assert info.value.__context__ is None or info.value.__suppress_context__  # no chained traceback


def test_hparam_name_must_be_an_identifier(tmp_path: Path):
    text = BASE.replace("[hparams.lr]", '[hparams."learning rate"]')
    with pytest.raises(ConfigError, match=r"^hparams\.learning rate: name must be an identifier$"):
        load_file(write(tmp_path, text))


@pytest.mark.parametrize(
    ("make", "gist"),
    [
        (lambda d: d / "missing.toml", r"cannot read the experiment file \(No such file or directory\)"),
        (lambda d: d, r"cannot read the experiment file \(Is a directory\)"),
        (lambda d: (d / "bin.toml").write_bytes(b'name = "\xff\xfe"\n') and d / "bin.toml", "not a UTF-8 text file"),
    ],
    ids=["missing", "directory", "binary"],
)
def test_unreadable_file(tmp_path: Path, make, gist: str):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert re.match(rf"^{re.escape(str(path))}: {gist}", str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "gist"),
    [("{not json", r"^config: the stored experiment is not valid JSON"), ("[1, 2]", r"^file: must be a table, got list$")],
)
def test_bad_json_copy(text: str, gist: str):
    with pytest.raises(ConfigError, match=gist):
        load_json(text)


def test_parse_does_not_need_a_file():
    exp = parse({"trainable": "a:B", "metric": "m", "population": {"size": 2}, "ready": {"seconds": 1},
                 "stop": {"score": 1.0}, "hparams": {"x": {"type": "int", "low": 0, "high": 3}}})
    assert exp.name == "experiment" and exp.ready == Ready(seconds=1.0) and exp.stop == Stop(score=1.0)


def test_initial_int_for_a_float_hparam_becomes_float(tmp_path: Path):
    exp = load_file(write(tmp_path, BASE), ["hparams.lr.low=0.5", "hparams.lr.high=4", "population.initial=[{lr = 1}]"])
    assert exp.initial == ({"lr": 1.0},) and type(exp.initial[0]["lr"]) is float


def test_tracking_keys_are_validated():
    from helpers import TOY

    cfg = load_file(TOY, ["tracking.mlflow='file:///srv/mlruns'", "tracking.wandb='my-project'"])
    assert (cfg.tracking.mlflow, cfg.tracking.wandb) == ("file:///srv/mlruns", "my-project") and cfg.tracking
    assert not load_file(TOY).tracking  # no [tracking]: nothing is sent anywhere
    for bad, msg in (("tracking.wandb='a/b'", "tracking.wandb: 'a/b' is not a W&B project name"),
                     ("tracking.mlflw='x'", "tracking.mlflw: unknown key; did you mean 'mlflow'?"),
                     ("tracking.mlflow=''", "tracking.mlflow: must be a non-empty string")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_file(TOY, [bad])
