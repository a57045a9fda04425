"""Bad TrainingJob manifests are refused with the exact field path and a hint of what is allowed."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubetrain.api import ManifestError, parse_training_job

VALID: dict[str, Any] = {
    "apiVersion": "kubetrain.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "digits-cnn", "labels": {"team": "vision"}},
    "spec": {
        "dataset": {"builtin": "digits", "validationSplit": 0.2},
        "model": {"builtin": "cnn", "params": {"channels": [16, 32]}},
        "training": {
            "epochs": 5,
            "learningRate": 0.001,
            "earlyStopping": {"monitor": "val_accuracy", "patience": 3},
            "resources": {"cpu": "2", "memory": "4Gi"},
        },
    },
}

DELETE = object()
SWEEP = {"learningRate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}


def changed(**changes: Any) -> dict[str, Any]:
    """VALID with fields set (or deleted with DELETE); `a__b` is the path a.b."""
    document = copy.deepcopy(VALID)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = document
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return document


def tuning(**fields: Any) -> dict[str, Any]:
    return {"enabled": True, "searchSpace": SWEEP, **fields}


ACCURACY_AND_COST = [{"name": "val_accuracy"}, {"name": "cost"}]


def cost_aware(**fields: Any) -> dict[str, Any]:
    """A valid multi-objective sweep, with ``fields`` changed."""
    return tuning(**{"objectives": ACCURACY_AND_COST, "pruner": "none", "sampler": "nsga2",
                     **fields})


# (case, manifest, the exact path of the problem, a hint of what is allowed)
BAD: list[tuple[str, Any, str, str]] = [
    ("unknown field typo", changed(spec__training__learningrate=0.1),
     "spec.training.learningrate", "did you mean `learningRate`?"),
    ("unknown top-level section", changed(spec__trainig={"epochs": 3}),
     "spec.trainig", "did you mean `training`?"),
    ("bad optimizer enum", changed(spec__training__optimizer="adam"),
     "spec.training.optimizer", "'adamw' or 'sgd'"),
    ("negative learning rate", changed(spec__training__learningRate=-0.01),
     "spec.training.learningRate", "greater than 0"),
    ("learning rate as text", changed(spec__training__learningRate="fast"),
     "spec.training.learningRate", "valid number"),
    ("both builtin and uri", changed(spec__dataset__uri="data/train.npz"),
     "spec.dataset", "exactly one of `builtin`"),
    ("neither builtin nor uri", changed(spec__dataset={"validationSplit": 0.2}),
     "spec.dataset", "exactly one of `builtin`"),
    ("csv without target", changed(spec__dataset={"uri": "data/train.csv"}),
     "spec.dataset.target", "label column"),
    ("uri without known format", changed(spec__dataset={"uri": "data/train.bin"}),
     "spec.dataset.format", "npz, csv, parquet, imagefolder"),
    ("target on a builtin dataset", changed(spec__dataset__target="label"),
     "spec.dataset.target", "`uri` datasets only"),
    ("bad entrypoint format", changed(spec__model={"entrypoint": "mypkg.models.build"}),
     "spec.model.entrypoint", "package.module:function"),
    ("both builtin model and entrypoint", changed(spec__model__entrypoint="mypkg.models:build"),
     "spec.model", "mlp, cnn, resnet"),
    ("unknown builtin model param", changed(spec__model__params={"depth": 3}),
     "spec.model.params.depth", "allowed: channels, hiddenUnits"),
    ("bad builtin model param value", changed(spec__model__params={"channels": [0, 32]}),
     "spec.model.params.channels", "integers in 1..8192"),
    ("dropout of 1", changed(spec__training__dropout=1.0),
     "spec.training.dropout", "less than 1"),
    ("validation and test splits too big",
     changed(spec__dataset__validationSplit=0.45, spec__dataset__testSplit=0.4),
     "spec.dataset.validationSplit", "below 0.8"),
    ("tuning enabled with empty searchSpace", changed(spec__tuning={"enabled": True}),
     "spec.tuning.searchSpace", "learningRate, weightDecay"),
    ("search dimension low >= high",
     changed(spec__tuning=tuning(searchSpace={"dropout": {"type": "float", "low": 0.5,
                                                           "high": 0.1}})),
     "spec.tuning.searchSpace.dropout.low", "less than `high`"),
    ("log dimension with low <= 0",
     changed(spec__tuning=tuning(searchSpace={"weightDecay": {"type": "float", "low": 0,
                                                               "high": 0.1, "log": True}})),
     "spec.tuning.searchSpace.weightDecay.low", "> 0 with `log: true`"),
    ("categorical without choices",
     changed(spec__tuning=tuning(searchSpace={"optimizer": {"type": "categorical"}})),
     "spec.tuning.searchSpace.optimizer.choices", "list of values"),
    ("unknown search dimension type",
     changed(spec__tuning=tuning(searchSpace={"epochs": {"type": "integer", "low": 2,
                                                          "high": 9}})),
     "spec.tuning.searchSpace.epochs.type", "'float', 'int' or 'categorical'"),
    ("untunable name",
     changed(spec__tuning=tuning(searchSpace={"lerningRate": {"type": "float", "low": 0.1,
                                                               "high": 1}})),
     "spec.tuning.searchSpace.lerningRate", "allowed: learningRate"),
    ("grid sampler without step", changed(spec__tuning=tuning(sampler="grid")),
     "spec.tuning.searchSpace.learningRate.step", "grid sampler"),
    ("objective direction mismatch",
     changed(spec__tuning=tuning(objective={"metric": "val_accuracy", "direction": "minimize"})),
     "spec.tuning.objective.direction", "must be maximize"),
    ("objective metric for the wrong task",
     changed(spec__tuning=tuning(objective={"metric": "val_rmse", "direction": "minimize"})),
     "spec.tuning.objective.metric", "use val_loss or val_accuracy"),
    ("early stopping on val_rmse for classification",
     changed(spec__training__earlyStopping={"monitor": "val_rmse"}),
     "spec.training.earlyStopping.monitor", "use val_loss or val_accuracy"),
    ("early stopping on val_accuracy for regression",
     changed(spec__dataset={"builtin": "diabetes"}),
     "spec.training.earlyStopping.monitor", "use val_loss or val_rmse"),
    ("fp16 on CPU", changed(spec__training__precision="fp16"),
     "spec.training.precision", "use auto or fp32"),
    ("bf16 on CPU", changed(spec__training__precision="bf16"),
     "spec.training.precision", "use auto or fp32"),
    ("CUDA graphs on CPU", changed(spec__training__compile="reduce-overhead"),
     "spec.training.compile", "use default or none"),
    ("bad cpu quantity", changed(spec__training__resources__cpu="2 cores"),
     "spec.training.resources.cpu", "500m"),
    ("bad memory quantity", changed(spec__training__resources__memory="4GB"),
     "spec.training.resources.memory", "4Gi"),
    ("nprocPerNode > gpusPerNode",
     changed(spec__training__resources__gpusPerNode=2, spec__training__resources__nprocPerNode=4),
     "spec.training.resources.nprocPerNode", "one worker per GPU"),
    ("cross-validation on several nodes",
     changed(spec__training__crossValidation={"folds": 5}, spec__training__resources__nodes=2),
     "spec.training.crossValidation", "nodes: 1"),
    ("bad metadata.name", changed(metadata__name="Digits_CNN"),
     "metadata.name", "DNS-1123"),
    ("missing metadata.name", changed(metadata={"labels": {}}),
     "metadata.name", "required field is missing (The job's name: a DNS-1123 label"),
    ("wrong apiVersion", changed(apiVersion="kubetrain.io/v1"),
     "apiVersion", "'kubetrain.io/v1alpha1'"),
    ("wrong kind", changed(kind="TrainJob"),
     "kind", "'TrainingJob'"),
    ("missing spec.model", changed(spec__model=DELETE),
     "spec.model", "or set training.command"),
    ("missing spec", changed(spec=DELETE),
     "spec", "training pipeline"),
    ("bad queueName", changed(spec__runPolicy={"queueName": "Team Queue"}),
     "spec.runPolicy.queueName", "lower-case letters"),
    ("budget maxCost <= 0", changed(spec__findings={"cost": {"budget": {"maxCost": 0}}}),
     "spec.findings.cost.budget.maxCost", "greater than 0"),
    ("bad currency", changed(spec__findings={"cost": {"prices": {"currency": "usd"}}}),
     "spec.findings.cost.prices.currency", "USD"),
    ("augmentation scale range reversed",
     changed(spec__augmentation={"enabled": True, "image": {"scale": [1.2, 0.8]}}),
     "spec.augmentation.image.scale", "0 < min <= max <= 4"),
    ("augmentation scale with one value",
     changed(spec__augmentation={"enabled": True, "image": {"scale": [1.2]}}),
     "spec.augmentation.image.scale", "at least 2"),
    ("unknown objective",
     changed(spec__tuning=cost_aware(objectives=[{"name": "val_accuracy"}, {"name": "price"}])),
     "spec.tuning.objectives[1].name", "'cost' or 'trainSeconds'"),
    ("objective in the wrong direction",
     changed(spec__tuning=cost_aware(objectives=[{"name": "val_accuracy"},
                                                 {"name": "cost", "direction": "maximize"}])),
     "spec.tuning.objectives[1].direction", "must be minimize for cost"),
    ("the same objective twice",
     changed(spec__tuning=cost_aware(objectives=[{"name": "val_accuracy"},
                                                 {"name": "val_accuracy"}])),
     "spec.tuning.objectives[1].name", "each objective once"),
    ("one objective in objectives",
     changed(spec__tuning=cost_aware(objectives=[{"name": "val_accuracy"}])),
     "spec.tuning.objectives", "at least 2"),
    ("objectives without a metric",
     changed(spec__tuning=cost_aware(objectives=[{"name": "cost"}, {"name": "trainSeconds"}])),
     "spec.tuning.objectives", "needs a validation metric"),
    ("objective metric of the other task",
     changed(spec__tuning=cost_aware(objectives=[{"name": "val_rmse"}, {"name": "cost"}])),
     "spec.tuning.objectives[0].name", "needs a regression dataset"),
    ("a pruner with several objectives",
     changed(spec__tuning=cost_aware(pruner="median")),
     "spec.tuning.pruner", "set pruner: none"),
    ("cmaes with several objectives",
     changed(spec__tuning=cost_aware(sampler="cmaes")),
     "spec.tuning.sampler", "nsga2, tpe, gp"),
    ("ray with several objectives",
     changed(spec__tuning=cost_aware(backend="ray")),
     "spec.tuning.backend", "use optuna"),
    ("objective and objectives",
     changed(spec__tuning=cost_aware(objective={"metric": "val_accuracy",
                                                "direction": "maximize"})),
     "spec.tuning.objective", "not both"),
    ("a selection with one objective",
     changed(spec__tuning=tuning(selection={"cheapestWithin": 0.01})),
     "spec.tuning.selection", "needs several objectives"),
    ("a negative selection tolerance",
     changed(spec__tuning=cost_aware(selection={"cheapestWithin": -0.01})),
     "spec.tuning.selection.cheapestWithin", "greater than or equal to 0"),
    ("non-mapping document (a list)", [VALID],
     "(top level)", "YAML mapping"),
    ("non-mapping document (text)", "kind: TrainingJob",
     "(top level)", "YAML mapping"),
]


@pytest.mark.parametrize(("manifest", "path", "hint"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_manifest_is_refused_naming_the_field(manifest: Any, path: str, hint: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_training_job(manifest, source="job.yaml")
    problems = caught.value.problems
    at_path = [p for p in problems if p.startswith(f"{path}: ")]
    assert at_path, f"no problem names {path!r}: {problems}"
    assert any(hint in p for p in at_path), f"no hint {hint!r} in {at_path}"
    assert str(caught.value).startswith("job.yaml is invalid:")


def test_the_table_is_large_and_distinct() -> None:
    assert len(BAD) >= 25
    assert len({case[0] for case in BAD}) == len(BAD)


def test_every_problem_is_reported_at_once() -> None:
    manifest = changed(spec__training__optimizer="adam", spec__training__epochs=0,
                       spec__runPolicy={"backoffLimit": -1})
    with pytest.raises(ManifestError) as caught:
        parse_training_job(manifest)
    paths = sorted(p.split(":")[0] for p in caught.value.problems)
    assert paths == ["spec.runPolicy.backoffLimit", "spec.training.epochs",
                     "spec.training.optimizer"]


def test_a_cost_aware_sweep_parses_and_names_its_metric() -> None:
    job = parse_training_job(changed(spec__tuning=cost_aware(
        selection={"cheapestWithin": 0.01},
        objectives=[{"name": "trainSeconds"}, {"name": "val_accuracy"}, {"name": "cost"}])))
    tuning_spec = job.spec.tuning
    assert tuning_spec.multi_objective
    assert [(o.name, o.resolved_direction) for o in tuning_spec.objective_list] == [
        ("trainSeconds", "minimize"), ("val_accuracy", "maximize"), ("cost", "minimize")]
    assert (tuning_spec.metric_objective.metric,
            tuning_spec.metric_objective.direction) == ("val_accuracy", "maximize")
    # A written-out job (defaults filled in, the default objective too) parses again.
    assert parse_training_job(job.to_manifest()) == job
    # The single-objective form is unchanged: its one objective.
    single = parse_training_job(changed(spec__tuning=tuning(
        objective={"metric": "val_accuracy", "direction": "maximize"}))).spec.tuning
    assert not single.multi_objective
    assert [(o.name, o.resolved_direction) for o in single.objective_list] == [
        ("val_accuracy", "maximize")]


def test_valid_manifest_parses_and_round_trips() -> None:
    job = parse_training_job(copy.deepcopy(VALID))
    assert job.metadata.name == "digits-cnn"
    assert job.spec.training.learning_rate == 0.001
    assert job.spec.training.early_stopping is not None
    assert job.spec.training.early_stopping.monitor == "val_accuracy"
    assert job.spec.model.params == {"channels": [16, 32]}

    manifest = job.to_manifest()
    # camelCase on the wire, defaults filled in, unset optionals left out
    assert manifest["spec"]["training"]["learningRate"] == 0.001
    assert manifest["spec"]["training"]["batchSize"] == 64
    assert manifest["spec"]["dataset"]["validationSplit"] == 0.2
    assert "uri" not in manifest["spec"]["dataset"]
    assert "learning_rate" not in manifest["spec"]["training"]
    # and it is a valid manifest that means the same thing
    again = parse_training_job(manifest)
    assert again == job
    assert again.to_manifest() == manifest
