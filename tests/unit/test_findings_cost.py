"""The cost finding: hand-computed resource-hours and prices."""

from __future__ import annotations

import pytest
from kubetrain.api import parse_training_job
from kubetrain.api.spec import BudgetSpec, PricesSpec
from kubetrain.findings import (
    Usage,
    budget_exceeded,
    hourly_rate,
    stage_cost,
    summarize_cost,
)
from kubetrain.pipeline.costing import trial_cost, unit_usage
from kubetrain.pipeline.plan import plan

DEFAULT = PricesSpec()
# Round prices so that expected costs are easy to check by hand.
ROUND = PricesSpec(cpu_hour=0.1, memory_gi_b_hour=0.01, gpu_hour=2.0, currency="EUR")


def test_cpu_only_stage_with_default_prices() -> None:
    # 2 nodes x 4 cores x 0.5 h = 4 cpu-hours; 2 nodes x 8 GiB x 0.5 h = 8 GiB-hours.
    cost = stage_cost(Usage("training", 1800, nodes=2, cpu=4, memory_gib=8), DEFAULT)
    assert cost.seconds == 1800
    assert cost.cpu_hours == 4.0
    assert cost.gpu_hours == 0.0
    assert cost.memory_gi_b_hours == 8.0
    assert cost.cost == pytest.approx(4 * 0.031611 + 8 * 0.004237, abs=1e-12)
    assert cost.cost == 0.16034


def test_gpu_stage() -> None:
    # 1 node, 2 GPUs, 1 core, 2 GiB for one hour.
    cost = stage_cost(Usage("training", 3600, gpus=2), DEFAULT)
    assert cost.gpu_hours == 2.0
    assert cost.cost == 5.907901  # 2 x 2.933908 + 0.031611 + 2 x 0.004237


def test_rounding_to_six_decimals() -> None:
    cost = stage_cost(Usage("tuning", 1.0, cpu=1, memory_gib=0), DEFAULT)
    assert cost.cpu_hours == 0.000278  # 1/3600 = 0.0002777...
    assert cost.cost == 0.000009  # 0.031611 / 3600 = 0.00000878...


def test_a_units_usage_covers_every_node_of_its_requests() -> None:
    job = parse_training_job({"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                              "metadata": {"name": "x"}, "spec": {
                                  "dataset": {"builtin": "digits"}, "model": {"builtin": "mlp"},
                                  "training": {"resources": {"nodes": 2, "cpu": "500m",
                                                             "memory": "512Mi",
                                                             "gpusPerNode": 1}}}})
    train = plan(job.spec).unit("train")
    assert train is not None
    usage = unit_usage(train, 7200)
    assert usage == Usage("training", 7200, nodes=2, cpu=0.5, memory_gib=0.5, gpus=1)
    cost = stage_cost(usage, ROUND)
    # per hour: 2 x (0.5 x 0.1 + 0.5 x 0.01 + 1 x 2.0) = 4.11; two hours = 8.22
    assert cost.cost == 8.22
    assert cost.gpu_hours == 4.0


def test_a_trial_costs_its_seconds_at_one_training_workers_share() -> None:
    job = parse_training_job({"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                              "metadata": {"name": "x"}, "spec": {
                                  "dataset": {"builtin": "digits"}, "model": {"builtin": "mlp"},
                                  "training": {"resources": {"cpu": "4", "memory": "8Gi",
                                                             "nprocPerNode": 2}},
                                  "findings": {"cost": {"prices": {
                                      "cpuHour": 0.1, "memoryGiBHour": 0.01, "gpuHour": 2.0}}},
                                  "tuning": {"enabled": True, "searchSpace": {"dropout": {
                                      "type": "float", "low": 0.0, "high": 0.5}}}}})
    # A trial requests one worker's share: 2 cores, 4 GiB: 0.2 + 0.04 per hour, unrounded.
    assert trial_cost(job.spec, 1800) == pytest.approx(0.12)
    assert trial_cost(job.spec, 1.0) == pytest.approx(0.24 / 3600)


def test_negative_usage_is_refused() -> None:
    with pytest.raises(ValueError, match="seconds"):
        Usage("training", -1)


def test_summarize_sums_stages_and_totals() -> None:
    usages = [
        Usage("augmentation", 360, cpu=2, memory_gib=4),  # 0.1 h
        Usage("training", 1800, cpu=1, memory_gib=2),  # fold 1, 0.5 h
        Usage("training", 1800, cpu=1, memory_gib=2),  # fold 2, 0.5 h
        Usage("explanation", 3600, cpu=1, memory_gib=0, gpus=1),
    ]
    finding = summarize_cost(usages, ROUND)
    assert finding.currency == "EUR"
    assert set(finding.by_stage) == {"augmentation", "training", "explanation"}

    augmentation = finding.by_stage["augmentation"]
    assert augmentation.cpu_hours == 0.2
    assert augmentation.cost == pytest.approx(0.2 * 0.1 + 0.4 * 0.01)

    training = finding.by_stage["training"]
    assert training.seconds == 3600  # summed work-unit seconds of both folds
    assert training.cpu_hours == 1.0
    assert training.memory_gi_b_hours == 2.0
    assert training.cost == 0.12

    assert finding.by_stage["explanation"].cost == 2.1
    assert finding.cpu_hours == 2.2
    assert finding.gpu_hours == 1.0
    assert finding.memory_gi_b_hours == 2.4
    assert finding.total == 2.244  # 0.024 + 0.12 + 2.1
    assert finding.after_best_epoch == 0.0
    assert finding.saved_by_pruning is None
    assert finding.budget is None


def test_cost_after_best_epoch() -> None:
    # 10 epochs of 36 s; best epoch 6, so epochs 7-10 (144 s = 0.04 h) came after it.
    training = Usage("training", 360, nodes=2, cpu=2, memory_gib=0)
    assert hourly_rate(training, ROUND) == pytest.approx(0.4)  # 2 nodes x 2 cores x 0.1
    finding = summarize_cost(
        [training], ROUND, epoch_seconds=[36.0] * 10, best_epoch=6, training_usage=training
    )
    assert finding.total == 0.04
    assert finding.after_best_epoch == 0.016  # 0.04 h x 0.4 per hour


def test_cost_after_best_epoch_defaults_to_the_training_stage() -> None:
    usages = [Usage("tuning", 3600, cpu=8, memory_gib=0), Usage("training", 360, memory_gib=0)]
    finding = summarize_cost(usages, ROUND, epoch_seconds=[360.0, 360.0, 360.0], best_epoch=1)
    assert finding.after_best_epoch == 0.02  # 0.2 h at 1 core x 0.1, not at the tuning rate
    assert summarize_cost(usages, ROUND, epoch_seconds=[360.0] * 3).after_best_epoch == 0.0
    last_best = summarize_cost(usages, ROUND, epoch_seconds=[360.0] * 3, best_epoch=3)
    assert last_best.after_best_epoch == 0.0


def test_saved_by_pruning() -> None:
    finding = summarize_cost([], ROUND, pruned_epochs_saved=12, cost_per_epoch=0.05)
    assert finding.saved_by_pruning == 0.6
    assert summarize_cost([], ROUND, pruned_epochs_saved=12).saved_by_pruning is None


def test_budget_not_exceeded_then_exceeded() -> None:
    usages = [Usage("training", 3600, cpu=1, memory_gib=0)]  # 0.1
    under = summarize_cost(usages, ROUND, budget=BudgetSpec(max_cost=0.5))
    assert under.budget is not None
    assert under.budget.max_cost == 0.5
    assert under.budget.spent == 0.1
    assert under.budget.exceeded is False

    over = summarize_cost(usages * 6, ROUND, budget=BudgetSpec(max_cost=0.5))
    assert over.budget is not None
    assert over.budget.spent == 0.6
    assert over.budget.exceeded is True

    reached = summarize_cost(usages * 5, ROUND, budget=BudgetSpec(max_cost=0.5))
    assert reached.budget is not None and reached.budget.exceeded is True  # reaching counts


def test_budget_exceeded_helper() -> None:
    budget = BudgetSpec(max_cost=10)
    assert budget_exceeded(9.99, budget) is False
    assert budget_exceeded(10.0, budget) is True
    assert budget_exceeded(1e9, None) is False


def test_finding_serializes_camel_case() -> None:
    finding = summarize_cost([Usage("training", 3600)], DEFAULT, budget=BudgetSpec(max_cost=1))
    wire = finding.model_dump(by_alias=True)
    assert wire["memoryGiBHours"] == 2.0
    assert wire["byStage"]["training"]["memoryGiBHours"] == 2.0
    assert wire["budget"] == {"maxCost": 1.0, "spent": 0.040085, "exceeded": False}
