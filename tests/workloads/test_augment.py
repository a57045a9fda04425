"""The augmentation stage: its library (kornia, noise, SMOTE, mixup/CutMix), its work unit (shards,
merge, idempotence) and the training unit reading the augmented rows."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kubetrain.api import load_training_job
from kubetrain.api.spec import DatasetSpec, ImageAugmentationSpec
from kubetrain.augment import AugmentationError, image, mix, tabular
from kubetrain.augment import store as st
from kubetrain.data import kfold_splits, load_dataset, split_dataset
from kubetrain.report import parse_event
from kubetrain.workloads import augment as unit
from kubetrain.workloads import train as train_unit
from support import base_manifest

SCARCE_DIGITS = {"builtin": "digits", "fraction": 0.1, "seed": 0}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Small nets on a shared 2-core machine: more threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_job(write_manifest: Any, *, name: str = "job.yaml", dataset: dict[str, Any] | None = None,
              **augmentation: Any) -> Path:
    aug = {"enabled": True, "multiplier": 2, "image": {"rotation": 12, "erasing": 0.2}}
    aug.update(augmentation)
    return write_manifest(base_manifest(dataset=dataset or SCARCE_DIGITS, augmentation=aug),
                          name)


def tabular_job(write_manifest: Any, dataset: dict[str, Any], tab: dict[str, Any],
                multiplier: int = 2, **spec: Any) -> Path:
    return write_manifest(base_manifest(
        dataset=dataset, augmentation={"enabled": True, "multiplier": multiplier, "tabular": tab},
        **spec))


def run_unit(job: Path, storage: Path, *extra: str) -> dict[str, Any]:
    return unit.run(unit.parse_args(["--job", str(job), "--storage", str(storage), *extra]))


def augment_all(job: Path, storage: Path, shards: int = 1) -> dict[str, Any]:
    for shard in range(shards):
        run_unit(job, storage, "--shard", str(shard), "--shards", str(shards))
    return run_unit(job, storage, "--merge", "--shards", str(shards))


def read_parts(storage: Path) -> st.Part:
    manifest = json.loads(st.manifest_path(storage).read_text())
    parts = [st.read_part(storage / "augment" / name) for name in manifest["parts"]]
    return st.Part(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                   np.concatenate([p.source for p in parts]),
                   np.concatenate([p.partner for p in parts]), {})


# ---------------------------------------------------------------------------------------------
# the work unit


def test_shards_are_written_atomically_and_merged(tmp_path: Path, write_manifest: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    job = image_job(write_manifest, multiplier=3)
    storage = tmp_path / "storage"
    folder = storage / "augment"

    # A writer killed half-way leaves neither a part nor a temporary file behind.
    def broken_savez(handle: Any, **arrays: Any) -> None:
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(st.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        run_unit(job, storage, "--shard", "0", "--shards", "2")
    assert list(folder.iterdir()) == []
    monkeypatch.undo()

    first = run_unit(job, storage, "--shard", "0", "--shards", "2")
    assert first["part"] == str(folder / "part-0-of-2.npz") and not first["reused"]
    with pytest.raises(AugmentationError, match=r"part-1-of-2\.npz"):
        run_unit(job, storage, "--merge", "--shards", "2")
    assert not st.manifest_path(storage).exists()
    second = run_unit(job, storage, "--shard", "1", "--shards", "2")
    merged = run_unit(job, storage, "--merge", "--shards", "2")
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "part-0-of-2.npz", "part-1-of-2.npz"]

    spec = load_training_job(job).spec
    dataset = load_dataset(spec.dataset)
    train_idx = split_dataset(dataset, spec.dataset).indices["train"]
    before = {name: int((dataset.y[train_idx] == c).sum())
              for c, name in enumerate(dataset.class_names)}
    manifest = json.loads(st.manifest_path(storage).read_text())
    assert manifest["counts_before"] == before == merged["counts_before"]
    assert manifest["counts_after"] == {k: 4 * v for k, v in before.items()}  # 1 + 3 copies
    assert merged["added"] == first["added"] + second["added"] == 3 * len(train_idx)
    assert manifest["parts"] == ["part-0-of-2.npz", "part-1-of-2.npz"]
    assert manifest["multiplier"] == 3 and manifest["shards"] == 2 and manifest["seed"] == 0
    assert any(op.startswith("affine(rotation=12deg") for op in manifest["operations"])
    assert any(op.startswith("random_erasing(p=0.2)") for op in manifest["operations"])
    assert not any("flip" in op for op in manifest["operations"])
    for key in ("unit", "status", "shard", "shards", "kind", "added", "counts_before",
                "counts_after", "operations", "seed", "manifest"):
        assert key in merged
    assert merged["kind"] == "image" and merged["status"] == "succeeded"
    written = json.loads((storage / "augment-merge" / "result.json").read_text())
    assert "samples" in written.pop("usage")  # the reporter adds what the unit used
    assert written == merged

    # Idempotent: a shard run again reports its part without rewriting it.
    stamp = (folder / "part-0-of-2.npz").stat().st_mtime_ns
    again = run_unit(job, storage, "--shard", "0", "--shards", "2")
    assert again["reused"] and again["added"] == first["added"]
    assert (folder / "part-0-of-2.npz").stat().st_mtime_ns == stamp


def test_changed_settings_remake_the_part_and_stale_rows_are_refused(
        tmp_path: Path, write_manifest: Any) -> None:
    storage = tmp_path / "storage"
    augment_all(image_job(write_manifest, name="a.yaml"), storage)
    # Another seed means other splits: the old part is remade, and training refuses a manifest
    # made with other settings instead of using rows that may be validation rows now.
    changed = image_job(write_manifest, name="b.yaml", dataset={**SCARCE_DIGITS, "seed": 1})
    again = run_unit(changed, storage)
    assert not again["reused"]
    with pytest.raises(SystemExit, match="run the augmentation stage again"):
        train_unit.run(train_unit.parse_args(["--job", str(changed), "--storage", str(storage)]))


def test_sources_are_training_rows_and_labels_follow_them(tmp_path: Path,
                                                          write_manifest: Any) -> None:
    job = image_job(write_manifest, dataset={"builtin": "digits", "fraction": 0.3, "seed": 3})
    storage = tmp_path / "storage"
    augment_all(job, storage, shards=3)
    part = read_parts(storage)
    spec = load_training_job(job).spec
    dataset = load_dataset(spec.dataset)
    splits = split_dataset(dataset, spec.dataset)
    assert set(part.source.tolist()) == set(splits.indices["train"].tolist())
    assert not set(part.source.tolist()) & set(splits.indices["val"].tolist())
    assert not set(part.source.tolist()) & set(splits.indices["test"].tolist())
    np.testing.assert_array_equal(part.y, dataset.y[part.source])
    # Each training row appears `multiplier` times, whichever shard it fell in.
    assert np.all(np.bincount(part.source)[splits.indices["train"]] == 2)


def test_one_seed_gives_the_same_samples(tmp_path: Path, write_manifest: Any) -> None:
    job = image_job(write_manifest)
    augment_all(job, tmp_path / "a")
    augment_all(job, tmp_path / "b")
    a, b = read_parts(tmp_path / "a"), read_parts(tmp_path / "b")
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.source, b.source)
    other = image_job(write_manifest, name="other.yaml", dataset={**SCARCE_DIGITS, "seed": 5})
    augment_all(other, tmp_path / "c")
    c = read_parts(tmp_path / "c")
    assert c.X.shape[1:] == a.X.shape[1:] and not np.array_equal(c.source, a.source)


def test_smote_balances_an_imbalanced_binary_set(tmp_path: Path, write_manifest: Any) -> None:
    job = tabular_job(write_manifest, {"builtin": "breast_cancer", "seed": 0},
                      {"noise": 0.05, "smote": True, "smoteNeighbors": 5}, multiplier=2,
                      model={"builtin": "mlp", "params": {"hiddenUnits": [16]}})
    storage = tmp_path / "storage"
    augment_all(job, storage, shards=2)
    manifest = json.loads(st.manifest_path(storage).read_text())
    before, after = manifest["counts_before"], manifest["counts_after"]
    assert before["malignant"] < 0.7 * before["benign"]  # imbalanced to start with
    assert after["malignant"] == after["benign"] == 3 * before["benign"]
    assert any(op.startswith("smote(k_neighbors=5") for op in manifest["operations"])
    assert any(op.startswith("gaussian_noise(scale=0.05") for op in manifest["operations"])

    # SMOTE samples (only in shard 0) lie between their base row and its neighbour, both
    # training rows of the same class.
    spec = load_training_job(job).spec
    dataset = load_dataset(spec.dataset)
    train_idx = set(split_dataset(dataset, spec.dataset).indices["train"].tolist())
    part0 = st.read_part(storage / "augment" / "part-0-of-2.npz")
    smote = part0.source != part0.partner
    assert smote.sum() > 100
    assert set(part0.partner[smote].tolist()) <= train_idx
    X0, X1, Xs = dataset.X[part0.source[smote]], dataset.X[part0.partner[smote]], part0.X[smote]
    step = ((Xs - X0) * (X1 - X0)).sum(1) / ((X1 - X0) ** 2).sum(1)
    assert np.all((step >= -1e-4) & (step <= 1 + 1e-4))
    np.testing.assert_allclose(X0 + step[:, None] * (X1 - X0), Xs, rtol=1e-3, atol=1e-2)
    np.testing.assert_array_equal(dataset.y[part0.source[smote]], part0.y[smote])
    part1 = st.read_part(storage / "augment" / "part-1-of-2.npz")
    assert np.array_equal(part1.source, part1.partner)  # noise copies only


def test_smote_function_on_a_skewed_set() -> None:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=300, n_features=6, weights=[0.9, 0.1], random_state=0)
    minority = int((y == 1).sum())
    result = tabular.smote(X.astype(np.float32), y, neighbors=50, seed=0)
    assert result.k_neighbors == min(50, minority - 1)
    counts = np.bincount(np.concatenate([y, result.y]))
    assert counts[0] == counts[1]
    assert set(result.y.tolist()) == {1} and np.all(y[result.base] == 1)


def test_smote_on_regression_is_refused_naming_the_field(tmp_path: Path,
                                                         write_manifest: Any) -> None:
    job = tabular_job(write_manifest, {"builtin": "diabetes"}, {"smote": True},
                      training={"epochs": 1, "earlyStopping": {"monitor": "val_rmse"}})
    with pytest.raises(AugmentationError, match=r"augmentation\.tabular\.smote"):
        run_unit(job, tmp_path / "storage")
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.augment", "--job", str(job), "--storage",
         str(tmp_path / "storage")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "augmentation.tabular.smote" in proc.stderr and "regression" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tabular_noise_scales_with_each_column_and_spares_indicators() -> None:
    rng = np.random.default_rng(0)
    X = np.stack([rng.normal(0, 1, 500), rng.normal(0, 100, 500),
                  rng.integers(0, 2, 500).astype(float)], axis=1).astype(np.float32)
    columns = tabular.noise_columns(X)
    assert columns.tolist() == [True, True, False]
    out = tabular.add_noise(X, X.std(0), 0.1, 3, np.random.default_rng(1), columns)
    assert out.shape == (1500, 3)
    delta = out - np.tile(X, (3, 1))
    np.testing.assert_allclose(delta.std(0)[:2], 0.1 * X.std(0)[:2], rtol=0.1)
    assert np.all(delta[:, 2] == 0)


# ---------------------------------------------------------------------------------------------
# the library: kornia and mixing


def digits_images(n: int) -> np.ndarray:
    return load_dataset(DatasetSpec(builtin="digits")).X[:n]


def test_kornia_ops_change_images_and_keep_shape_and_range() -> None:
    X = digits_images(50)
    spec = ImageAugmentationSpec(rotation=15, translate=0.1, scale=[0.9, 1.1], noise_std=0.05,
                                 erasing=0.5)
    out = image.augment_images(X, spec, 3, seed=0, batch_size=40)
    assert out.shape == (150, *X.shape[1:]) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = np.abs(out - np.tile(X, (3, 1, 1, 1))).reshape(150, -1).max(1)
    assert np.all(changed > 0.01)
    np.testing.assert_array_equal(out, image.augment_images(X, spec, 3, seed=0, batch_size=40))
    assert not np.array_equal(out, image.augment_images(X, spec, 3, seed=1, batch_size=40))
    # The caller's random state is left alone.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    image.augment_images(X, spec, 1, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_flips_only_when_enabled() -> None:
    X = digits_images(40)
    plain = dict(rotation=0, translate=0, scale=[1.0, 1.0], noise_std=0, erasing=0)
    assert image.build_pipeline(ImageAugmentationSpec(**plain)) is None
    assert image.augment_images(X, ImageAugmentationSpec(**plain), 3, seed=0).shape[0] == 0
    flip = ImageAugmentationSpec(**plain, horizontal_flip=True)
    assert image.operations(flip) == ["horizontal_flip(p=0.5)"]
    out = image.augment_images(X, flip, 2, seed=0)
    same = np.all(out == np.tile(X, (2, 1, 1, 1)), axis=(1, 2, 3))
    flipped = np.all(out == np.tile(X[..., ::-1], (2, 1, 1, 1)), axis=(1, 2, 3))
    assert np.all(same | flipped) and flipped.sum() > 10 and (same & ~flipped).sum() > 10
    default_ops = " ".join(image.operations(ImageAugmentationSpec()))
    assert "flip" not in default_ops and "affine" in default_ops


def test_mixup_and_cutmix_shapes_and_lambda() -> None:
    rng = np.random.default_rng(0)
    x = torch.rand(32, 1, 8, 8)
    y = torch.arange(32) % 10
    for _ in range(20):
        m = mix.mixup(x, y, 0.4, rng)
        assert m.x.shape == x.shape and 0.0 <= m.lam <= 1.0
        assert sorted(m.y_b.tolist()) == sorted(y.tolist())
        # mixed = lam * x + (1 - lam) * x[perm]: recover x[perm] and check it is a batch row.
        if m.lam < 0.99:
            partner = (m.x - m.lam * x) / (1 - m.lam)
            rows = x.reshape(32, -1)
            for i in range(32):
                dist = (rows - partner[i].reshape(1, -1)).abs().max(1).values
                assert float(dist.min()) < 1e-4
                assert y[int(dist.argmin())] == m.y_b[i]
        c = mix.cutmix(x, y, 1.0, rng)
        assert c.x.shape == x.shape and 0.0 <= c.lam <= 1.0
        # Pixels of the pasted box differ (random images), so lam is the untouched share of
        # every image mixed with another (not with itself).
        untouched = (c.x == x).all(dim=1).float().mean(dim=(1, 2))
        mixed_rows = untouched < 1
        assert bool(mixed_rows.any()) or c.lam == 1.0
        assert torch.allclose(untouched[mixed_rows], torch.tensor(c.lam))
    with pytest.raises(ValueError, match="images"):
        mix.cutmix(torch.rand(4, 5), y[:4], 1.0, rng)
    criterion = torch.nn.CrossEntropyLoss()
    out = torch.randn(32, 10)
    same = mix.MixedBatch(x, y, y, 0.3)
    assert torch.allclose(mix.mixed_loss(criterion, out, same), criterion(out, y))
    assert mix.batch_mixer(0.4, 0.0, "regression", 4, 0) is None
    assert mix.batch_mixer(0.0, 1.0, "classification", 2, 0) is None  # no CutMix on tables
    assert mix.batch_mixer(0.0, 0.0, "classification", 4, 0) is None


# ---------------------------------------------------------------------------------------------
# training reads the augmented rows


def train_events(job: Path, storage: Path, capsys: pytest.CaptureFixture[str],
                 *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    capsys.readouterr()
    summary = train_unit.run(train_unit.parse_args(
        ["--job", str(job), "--storage", str(storage), *extra]))
    events = [e for e in map(parse_event, capsys.readouterr().out.splitlines()) if e]
    return next(e for e in events if e["event"] == "start"), summary


def test_training_unit_adds_the_augmented_rows(tmp_path: Path, write_manifest: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    job = write_manifest(base_manifest(
        dataset=SCARCE_DIGITS, training={"epochs": 1, "batchSize": 64},
        augmentation={"enabled": True, "multiplier": 2,
                      "image": {"rotation": 10, "mixup": 0.4, "cutmix": 1.0}}))
    storage = tmp_path / "storage"
    with pytest.raises(SystemExit, match="run the augmentation stage first"):
        train_unit.run(train_unit.parse_args(["--job", str(job), "--storage", str(storage)]))
    merged = augment_all(job, storage)
    start, summary = train_events(job, storage, capsys)
    originals = sum(merged["counts_before"].values())
    assert start["augmented"] == merged["added"] == 2 * originals
    assert start["train"] == summary["train_rows"] == 3 * originals
    assert summary["augmented"] == merged["added"]
    assert summary["status"] == "succeeded" and summary["epochs_run"] == 1
    # The scaler is fit on the original rows only.
    model = torch.load(summary["model"], weights_only=False)
    spec = load_training_job(job).spec
    dataset = load_dataset(spec.dataset)
    train_x = split_dataset(dataset, spec.dataset).train[0]
    assert model["standardizer"]["mean"] == pytest.approx([float(train_x.mean())], rel=1e-5)

    # Without augmentation the same job trains on the originals alone.
    plain = write_manifest(base_manifest(dataset=SCARCE_DIGITS, training={"epochs": 1}),
                           "plain.yaml")
    start, summary = train_events(plain, tmp_path / "plain", capsys)
    assert start["augmented"] == 0 and start["train"] == originals


def test_a_fold_drops_rows_made_from_its_validation_rows(
        tmp_path: Path, write_manifest: Any, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_manifest(base_manifest(
        dataset={"builtin": "digits", "seed": 0, "fraction": 0.5},
        model={"builtin": "mlp", "params": {"hiddenUnits": [16]}},
        training={"epochs": 1, "crossValidation": {"folds": 3}},
        augmentation={"enabled": True, "multiplier": 1, "image": {"rotation": 10}}))
    storage = tmp_path / "storage"
    merged = augment_all(job, storage)
    part = read_parts(storage)
    spec = load_training_job(job).spec
    fold = kfold_splits(load_dataset(spec.dataset), spec.dataset, 3)[1]
    from_val = np.isin(part.source, fold.indices["val"])
    assert 0 < from_val.sum() < len(part.source)  # some samples come from fold 1's validation

    start, _ = train_events(job, storage, capsys, "--unit", "fold-1", "--fold", "1")
    assert start["augmented"] == int((~from_val).sum()) < merged["added"]
    assert start["train"] == len(fold.indices["train"]) + start["augmented"]
    _, y = st.augmented_training_rows(storage, spec, 1797, fold.indices, fold=1)
    assert len(y) == start["augmented"]
    kept = st.load_augmented(storage, fold.indices["val"])
    assert kept is not None and not np.isin(kept[2], fold.indices["val"]).any()


def test_cli_runs_a_shard_and_the_merge(tmp_path: Path, write_manifest: Any) -> None:
    job = image_job(write_manifest)
    storage = tmp_path / "storage"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (["--shard", "0", "--shards", "1"], ["--merge"]):
        proc = subprocess.run(
            [sys.executable, "-m", "kubetrain.workloads.augment", "--job", str(job),
             "--storage", str(storage), *extra], capture_output=True, text=True, timeout=300,
            env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        events = [e for e in map(parse_event, io.StringIO(proc.stdout)) if e]
        assert events[0]["event"] == "start" and events[-1]["event"] == "result"
        assert any(e["event"] == "progress" for e in events)
    result = json.loads((storage / "augment-merge" / "result.json").read_text())
    assert result["manifest"] == str(storage / "augment" / "manifest.json")
    assert (storage / "augment-0" / "result.json").exists()


def test_trainer_mixes_batches_only_when_asked(tmp_path: Path, write_manifest: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetrain.models import build_model
    from kubetrain.report import Reporter
    from kubetrain.workloads.batches import TensorSplit
    from kubetrain.workloads.distributed import DistContext
    from kubetrain.workloads.trainer import Trainer

    calls: list[float] = []
    original = mix.mixed_loss

    def spy(criterion: Any, out: torch.Tensor, batch: mix.MixedBatch) -> torch.Tensor:
        calls.append(batch.lam)
        return original(criterion, out, batch)

    monkeypatch.setattr(mix, "mixed_loss", spy)
    ctx = DistContext(0, 0, 1, torch.device("cpu"))
    data = TensorSplit(torch.rand(96, 1, 8, 8), torch.arange(96) % 10)
    model_spec = {"builtin": "cnn", "params": {"channels": [4], "hiddenUnits": 8}}
    for augmentation, expect_mixing in (
        ({"enabled": True, "image": {"mixup": 0.4, "cutmix": 1.0}}, True),
        ({"enabled": False, "image": {"mixup": 0.4}}, False),
        ({"enabled": True, "image": {"rotation": 5}}, False),
    ):
        calls.clear()
        spec = load_training_job(write_manifest(base_manifest(
            model=model_spec, augmentation=augmentation,
            training={"epochs": 1, "batchSize": 32}))).spec
        model = build_model(spec.model, (1, 8, 8), 10, 0.0)
        trainer = Trainer(spec, model, "classification", data, data, ctx,
                          Reporter(None, stream=io.StringIO()), tmp_path / "ckpt")
        assert (trainer.mixer is not None) is expect_mixing
        loss, _ = trainer.train_epoch(1)
        assert np.isfinite(loss)
        assert len(calls) == (3 if expect_mixing else 0)
        assert all(0.0 <= lam <= 1.0 for lam in calls)
