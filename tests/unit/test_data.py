"""The datasets module: loading every source and format, splits, k folds, standardization."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kubetrain.api.spec import DatasetSpec
from kubetrain.data import (
    Dataset,
    DatasetError,
    Standardizer,
    kfold_splits,
    load_dataset,
    split_dataset,
)
from PIL import Image

# ---------------------------------------------------------------------------------------------
# built-ins


@pytest.mark.parametrize(
    ("name", "shape", "task", "classes"),
    [
        ("digits", (1797, 1, 8, 8), "classification", [str(i) for i in range(10)]),
        ("breast_cancer", (569, 30), "classification", ["malignant", "benign"]),
        ("wine", (178, 13), "classification", ["class_0", "class_1", "class_2"]),
        ("iris", (150, 4), "classification", ["setosa", "versicolor", "virginica"]),
        ("diabetes", (442, 10), "regression", []),
    ],
)
def test_builtin_datasets(name: str, shape: tuple[int, ...], task: str, classes: list[str]) -> None:
    ds = load_dataset(DatasetSpec(builtin=name))
    assert ds.X.shape == shape
    assert ds.X.dtype == np.float32
    assert ds.task == task
    assert ds.class_names == classes
    assert ds.name == name
    assert ds.input_shape == shape[1:]
    assert len(ds.feature_names) == int(np.prod(shape[1:]))
    if task == "classification":
        assert ds.y.dtype == np.int64
        assert set(np.unique(ds.y)) == set(range(len(classes)))
        assert ds.num_outputs == len(classes)
    else:
        assert ds.y.dtype == np.float32
        assert ds.num_outputs == 1


def test_digits_is_an_image_scaled_to_unit_range() -> None:
    ds = load_dataset(DatasetSpec(builtin="digits"))
    assert ds.kind == "image"
    assert ds.X.min() == 0.0
    assert ds.X.max() == 1.0
    assert ds.feature_names[0] == "c0_h0_w0"
    assert ds.feature_names[8 + 5] == "c0_h1_w5"


def test_tabular_builtin_keeps_sklearn_feature_names() -> None:
    ds = load_dataset(DatasetSpec(builtin="iris"))
    assert ds.kind == "tabular"
    assert ds.feature_names[0] == "sepal length (cm)"


def test_explicit_regression_overrides_auto() -> None:
    ds = load_dataset(DatasetSpec(builtin="iris", task="regression"))
    assert ds.task == "regression"
    assert ds.y.dtype == np.float32
    assert ds.class_names == []


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_tabular_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = np.repeat([3, 7], 20)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = load_dataset(DatasetSpec(uri="d.npz"), base_dir=tmp_path)
    assert ds.kind == "tabular"
    assert ds.task == "classification"
    np.testing.assert_allclose(ds.X, X.astype(np.float32))
    assert ds.class_names == ["3", "7"]
    np.testing.assert_array_equal(ds.y, (y == 7).astype(np.int64))
    assert ds.name == "d"


def test_npz_float_targets_are_regression(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", X=np.zeros((30, 2)), y=np.linspace(0, 1, 30))
    ds = load_dataset(DatasetSpec(uri=str(tmp_path / "r.npz")))
    assert ds.task == "regression"
    assert ds.y.dtype == np.float32


def test_npz_classification_of_fractional_targets_fails(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", X=np.zeros((30, 2)), y=np.linspace(0, 1, 30))
    with pytest.raises(DatasetError, match=r"^dataset\.task"):
        load_dataset(DatasetSpec(uri="r.npz", task="classification"), base_dir=tmp_path)


def test_npz_many_integer_values_are_regression(tmp_path: Path) -> None:
    y = np.arange(200)  # 200 distinct values: more than 50 and more than 5% of N
    np.savez(tmp_path / "r.npz", X=np.zeros((200, 2)), y=y)
    assert load_dataset(DatasetSpec(uri="r.npz"), base_dir=tmp_path).task == "regression"


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((12, 5, 6), (12, 1, 5, 6)),  # N, H, W
        ((12, 3, 5, 6), (12, 3, 5, 6)),  # N, C, H, W
        ((12, 5, 6, 3), (12, 3, 5, 6)),  # N, H, W, C
    ],
)
def test_npz_images(tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    X = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.savez(tmp_path / "img.npz", X=X, y=np.tile([0, 1], 6))
    ds = load_dataset(DatasetSpec(uri="img.npz"), base_dir=tmp_path)
    assert ds.kind == "image"
    assert ds.X.shape == expected
    assert len(ds.feature_names) == int(np.prod(expected[1:]))
    if shape[-1] == 3:  # NHWC transposed, not reshaped
        np.testing.assert_array_equal(ds.X[:, 2, 1, 4], X[:, 1, 4, 2])


def test_npz_missing_array_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((4, 2)), labels=np.zeros(4))
    with pytest.raises(DatasetError, match=r"dataset\.uri: .*'y'.*arrays: X, labels"):
        load_dataset(DatasetSpec(uri="d.npz"), base_dir=tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"^dataset\.uri: no such file"):
        load_dataset(DatasetSpec(uri="nope.npz"), base_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# csv / parquet


def _frame() -> pd.DataFrame:
    n = 60
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": np.arange(n),
            "color": np.array(["red", "green", "blue"])[np.arange(n) % 3],
            "label": np.array(["cat", "dog"])[np.arange(n) % 2],
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_round_trip(tmp_path: Path, fmt: str) -> None:
    df = _frame()
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    ds = load_dataset(DatasetSpec(uri=path.name, target="label"), base_dir=tmp_path)
    assert ds.kind == "tabular"
    assert ds.task == "classification"
    assert ds.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ds.y, (df["label"] == "dog").to_numpy().astype(np.int64))
    assert ds.feature_names == ["a", "b", "color=blue", "color=green", "color=red"]
    assert ds.X.shape == (60, 5)
    np.testing.assert_allclose(ds.X[:, 0], df["a"].to_numpy(np.float32), rtol=1e-6)
    # one-hot: exactly one color column set per row, the right one
    onehot = ds.X[:, 2:]
    np.testing.assert_array_equal(onehot.sum(axis=1), np.ones(60))
    np.testing.assert_array_equal(onehot[:, 2], (df["color"] == "red").to_numpy())


def test_csv_missing_numeric_values_get_the_median(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "y": [0, 1, 0, 1]})
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(DatasetSpec(uri="d.csv", target="y"), base_dir=tmp_path)
    np.testing.assert_allclose(ds.X[:, 0], [1.0, 3.0, 3.0, 10.0])


def test_csv_float_target_is_regression(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": np.arange(100.0), "price": np.linspace(1.5, 99.5, 100)})
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(DatasetSpec(uri="d.csv", target="price"), base_dir=tmp_path)
    assert ds.task == "regression"
    np.testing.assert_allclose(ds.y, df["price"].to_numpy(np.float32))


def test_csv_string_target_as_regression_fails(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DatasetError, match=r"^dataset\.task"):
        load_dataset(DatasetSpec(uri="d.csv", target="label", task="regression"), base_dir=tmp_path)


def test_missing_target_column_is_named(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetSpec(uri="data.csv", target="species"), base_dir=tmp_path)
    msg = str(err.value)
    assert msg.startswith("dataset.target: column 'species' not in data.csv")
    assert "columns: a, b, color, label" in msg


# ---------------------------------------------------------------------------------------------
# image folders


def _image_folder(root: Path, mode: str = "RGB") -> Path:
    folder = root / "images"
    colors = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for cls, color in colors.items():
        (folder / cls).mkdir(parents=True)
        for i in range(4):
            size = (10, 8) if i < 3 else (20, 16)  # one odd size, resized to the common one
            img = Image.new("RGB", size, color)
            if mode == "L":
                img = img.convert("L")
            img.save(folder / cls / f"{i}.png")
    (folder / "red" / "notes.txt").write_text("not an image")
    return folder


def test_imagefolder_round_trip(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path)
    ds = load_dataset(DatasetSpec(uri=str(folder), format="imagefolder"))
    assert ds.kind == "image"
    assert ds.task == "classification"
    assert ds.class_names == ["blue", "red"]
    assert ds.X.shape == (8, 3, 8, 10)  # (N, C, H, W); PIL sizes are (W, H)
    assert ds.X.dtype == np.float32
    assert ds.X.min() >= 0.0 and ds.X.max() <= 1.0
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 0, 1, 1, 1, 1])
    red = ds.X[ds.y == 1]
    np.testing.assert_allclose(red[:, 0], 1.0)  # red channel full
    np.testing.assert_allclose(red[:, 2], 0.0)
    assert ds.name == "images"


def test_imagefolder_grey(tmp_path: Path) -> None:
    _image_folder(tmp_path, mode="L")
    ds = load_dataset(DatasetSpec(uri="images", format="imagefolder"), base_dir=tmp_path)
    assert ds.X.shape == (8, 1, 8, 10)


def test_imagefolder_needs_two_classes(tmp_path: Path) -> None:
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(DatasetError, match=r"^dataset\.uri: .*at least 2"):
        load_dataset(DatasetSpec(uri="one", format="imagefolder"), base_dir=tmp_path)


def test_imagefolder_empty_class(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path)
    (folder / "green").mkdir()
    with pytest.raises(DatasetError, match=r"^dataset\.uri: class folder 'green'"):
        load_dataset(DatasetSpec(uri=str(folder), format="imagefolder"))


# ---------------------------------------------------------------------------------------------
# shards


def _shards(folder: Path, X: np.ndarray, y: np.ndarray, sizes: list[int]) -> Path:
    folder.mkdir(parents=True)
    begin = 0
    for k, n in enumerate(sizes):
        np.savez(folder / f"part-{k:03d}.npz", X=X[begin:begin + n], y=y[begin:begin + n])
        begin += n
    return folder


def test_shards_in_memory_are_the_concatenation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 3, 50)
    folder = _shards(tmp_path / "parts", X, y, [20, 5, 25])
    (folder / "README.txt").write_text("not a shard")
    ds = load_dataset(DatasetSpec(uri="parts", format="shards", streaming="never"),
                      base_dir=tmp_path)
    assert isinstance(ds.X, np.ndarray) and ds.kind == "tabular" and ds.task == "classification"
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.feature_names == ["x0", "x1", "x2", "x3"]


def test_streamed_shards_read_the_same_rows_a_shard_at_a_time(tmp_path: Path) -> None:
    from kubetrain.data.images import LazyShards

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(30, 6, 5, 3), dtype=np.uint8)  # channels last
    y = np.arange(30) % 2
    _shards(tmp_path / "imgs", pixels, y, [10, 10, 10])
    ds = load_dataset(DatasetSpec(uri=str(tmp_path / "imgs"), format="shards",
                                  streaming="always"))
    assert isinstance(ds.X, LazyShards) and ds.kind == "image"
    assert ds.X.shape == (30, 3, 6, 5) and ds.input_shape == (3, 6, 5)
    expected = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.testing.assert_allclose(np.asarray(ds.X), expected)
    part = ds.X[np.array([25, 3, 14, 4])]  # a split: still lazy, rows in the order asked
    assert isinstance(part, LazyShards)
    np.testing.assert_allclose(part.take([0, 1, 2, 3]), expected[[25, 3, 14, 4]])
    np.testing.assert_allclose(part[2], expected[14])
    # An epoch's order grouped by shard, in the order the shards first appear; a permutation.
    order = [int(i) for i in np.random.default_rng(2).permutation(30)]
    grouped = ds.X.locality_order(order)
    assert sorted(grouped) == list(range(30))
    shard_runs = [k for k, _ in itertools.groupby(ds.X.shard_of[grouped].tolist())]
    assert shard_runs == list(dict.fromkeys(ds.X.shard_of[order].tolist()))
    assert [i for i in order if i < 10] == [i for i in grouped if i < 10]


@pytest.mark.parametrize("compressed", [False, True])
def test_stored_shards_are_memory_mapped_and_compressed_ones_read_whole(
        tmp_path: Path, compressed: bool) -> None:
    from kubetrain.data.images import _stored_member

    X = np.arange(60, dtype=np.float64).reshape(20, 3)
    folder = tmp_path / "p"
    folder.mkdir()
    save = np.savez_compressed if compressed else np.savez
    save(folder / "a.npz", X=X[:12], y=np.arange(12) % 2)
    save(folder / "b.npz", X=X[12:], y=np.arange(8) % 2)
    mapped = _stored_member(folder / "b.npz", "X.npy")
    assert (mapped is None) == compressed
    if mapped is not None:
        assert isinstance(mapped, np.memmap)
        np.testing.assert_array_equal(mapped, X[12:])
    ds = load_dataset(DatasetSpec(uri=str(folder), format="shards", streaming="always"))
    np.testing.assert_array_equal(ds.X.take([19, 0, 12, 11]), X[[19, 0, 12, 11]])


def test_shards_auto_streams_only_over_the_memory_budget(tmp_path: Path) -> None:
    X = np.zeros((40, 8), dtype=np.float32)  # 1,280 bytes as float32
    _shards(tmp_path / "p", X, np.arange(40) % 2, [20, 20])
    spec = DatasetSpec(uri=str(tmp_path / "p"), format="shards")
    assert isinstance(load_dataset(spec, memory_budget=2000).X, np.ndarray)
    assert not isinstance(load_dataset(spec, memory_budget=1000).X, np.ndarray)


@pytest.mark.parametrize(("case", "message"), [
    ("empty", r"holds no \.npz files"),
    ("file", r"needs a folder of \.npz files"),
    ("mismatch", r"shard part-001\.npz has rows of shape \(5,\).*all shards must match"),
    ("no_y", r"shard part-000\.npz has no array 'y'"),
    ("short_y", r"one value per row of X \(4\)"),
])
def test_bad_shards_name_the_field(tmp_path: Path, case: str, message: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    if case == "file":
        folder = tmp_path / "one.npz"
        np.savez(folder, X=np.zeros((4, 2)), y=np.zeros(4))
    elif case == "mismatch":
        np.savez(folder / "part-000.npz", X=np.zeros((4, 3)), y=np.zeros(4))
        np.savez(folder / "part-001.npz", X=np.zeros((4, 5)), y=np.zeros(4))
    elif case == "no_y":
        np.savez(folder / "part-000.npz", X=np.zeros((4, 3)))
    elif case == "short_y":
        np.savez(folder / "part-000.npz", X=np.zeros((4, 3)), y=np.zeros(3))
    with pytest.raises(DatasetError, match=r"^dataset\.uri: .*" + message):
        load_dataset(DatasetSpec(uri=str(folder), format="shards"))


# ---------------------------------------------------------------------------------------------
# pvc:// URIs


def test_pvc_uri_needs_data_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"^dataset\.uri: pvc:// URIs need the Kubernetes"):
        load_dataset(DatasetSpec(uri="pvc://datasets/train.npz"))


def test_pvc_uri_resolves_under_data_root(tmp_path: Path) -> None:
    (tmp_path / "datasets" / "sub").mkdir(parents=True)
    np.savez(tmp_path / "datasets" / "sub" / "t.npz", X=np.zeros((6, 2)), y=[0, 1] * 3)
    ds = load_dataset(DatasetSpec(uri="pvc://datasets/sub/t.npz"), data_root=tmp_path)
    assert ds.X.shape == (6, 2)


# ---------------------------------------------------------------------------------------------
# splits


def _spec(**kw: object) -> DatasetSpec:
    return DatasetSpec(builtin="digits", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DatasetSpec(builtin="digits"))


def test_splits_are_disjoint_and_cover_the_data(digits: Dataset) -> None:
    splits = split_dataset(digits, _spec(validation_split=0.2, test_split=0.1))
    idx = splits.indices
    all_idx = np.concatenate([idx["train"], idx["val"], idx["test"]])
    assert len(all_idx) == len(set(all_idx.tolist())) == len(digits)
    assert splits.sizes == {"train": 1258, "val": 359, "test": 180}
    parts = (splits.train, splits.val, splits.test)
    for name, (X, y) in zip(("train", "val", "test"), parts, strict=True):
        np.testing.assert_array_equal(X, digits.X[idx[name]])
        np.testing.assert_array_equal(y, digits.y[idx[name]])


def test_splits_are_stratified(digits: Dataset) -> None:
    splits = split_dataset(digits, _spec(validation_split=0.2, test_split=0.2))
    overall = np.bincount(digits.y, minlength=10) / len(digits)
    for _, y in (splits.train, splits.val, splits.test):
        share = np.bincount(y, minlength=10) / len(y)
        assert np.abs(share - overall).max() < 0.01


def test_splits_are_deterministic_and_seeded(digits: Dataset) -> None:
    a = split_dataset(digits, _spec(seed=3))
    b = split_dataset(digits, _spec(seed=3))
    c = split_dataset(digits, _spec(seed=4))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.indices[name], b.indices[name])
    assert not np.array_equal(a.indices["test"], c.indices["test"])


def test_test_set_does_not_depend_on_validation_split(digits: Dataset) -> None:
    a = split_dataset(digits, _spec(validation_split=0.1, test_split=0.2, seed=7))
    b = split_dataset(digits, _spec(validation_split=0.3, test_split=0.2, seed=7))
    np.testing.assert_array_equal(a.indices["test"], b.indices["test"])
    assert len(a.indices["val"]) < len(b.indices["val"])


def test_no_test_split(digits: Dataset) -> None:
    splits = split_dataset(digits, _spec(test_split=0))
    assert splits.test[0].shape == (0, 1, 8, 8)
    assert splits.test[1].shape == (0,)
    assert splits.sizes["train"] + splits.sizes["val"] == len(digits)


def test_regression_splits(tmp_path: Path) -> None:
    ds = load_dataset(DatasetSpec(builtin="diabetes"))
    splits = split_dataset(ds, DatasetSpec(builtin="diabetes", seed=1))
    assert sum(splits.sizes.values()) == len(ds)
    assert splits.train[1].dtype == np.float32


def test_tiny_classes_fall_back_to_unstratified(tmp_path: Path) -> None:
    y = np.array([0] * 20 + [1])  # class 1 has one member: cannot be stratified
    np.savez(tmp_path / "t.npz", X=np.arange(21.0)[:, None], y=y)
    spec = DatasetSpec(uri="t.npz", validation_split=0.2, test_split=0.2)
    ds = load_dataset(spec, base_dir=tmp_path)
    splits = split_dataset(ds, spec)
    assert sum(splits.sizes.values()) == 21


def test_fraction_keeps_part_of_train_only(digits: Dataset) -> None:
    full = split_dataset(digits, _spec(seed=2))
    part = split_dataset(digits, _spec(seed=2, fraction=0.1))
    np.testing.assert_array_equal(full.indices["val"], part.indices["val"])
    np.testing.assert_array_equal(full.indices["test"], part.indices["test"])
    assert set(part.indices["train"]) <= set(full.indices["train"])
    assert len(part.indices["train"]) == round(0.1 * len(full.indices["train"]))
    counts = np.bincount(part.train[1], minlength=10)
    assert counts.min() >= 10  # ~12-13 per class: stratified
    again = split_dataset(digits, _spec(seed=2, fraction=0.1))
    np.testing.assert_array_equal(part.indices["train"], again.indices["train"])


def test_tiny_fraction_keeps_every_class(digits: Dataset) -> None:
    part = split_dataset(digits, _spec(fraction=0.001))
    assert sorted(set(part.train[1].tolist())) == list(range(10))


def test_kfold(digits: Dataset) -> None:
    spec = _spec(seed=5)
    base = split_dataset(digits, spec)
    folds = kfold_splits(digits, spec, 5)
    assert len(folds) == 5
    trainval = np.sort(np.concatenate([base.indices["train"], base.indices["val"]]))
    vals = [f.indices["val"] for f in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), trainval)  # disjoint, cover
    for fold in folds:
        np.testing.assert_array_equal(fold.indices["test"], base.indices["test"])
        assert not set(fold.indices["train"]) & set(fold.indices["val"])
        assert len(fold.indices["train"]) + len(fold.indices["val"]) == len(trainval)
        share = np.bincount(fold.val[1], minlength=10) / len(fold.val[1])
        assert np.abs(share - 0.1).max() < 0.02  # stratified
    again = kfold_splits(digits, spec, 5)
    for a, b in zip(folds, again, strict=True):
        np.testing.assert_array_equal(a.indices["val"], b.indices["val"])


def test_kfold_regression() -> None:
    ds = load_dataset(DatasetSpec(builtin="diabetes"))
    spec = DatasetSpec(builtin="diabetes", test_split=0)
    folds = kfold_splits(ds, spec, 4)
    vals = np.sort(np.concatenate([f.indices["val"] for f in folds]))
    np.testing.assert_array_equal(vals, np.arange(len(ds)))


# ---------------------------------------------------------------------------------------------
# standardization


def test_standardizer_tabular_fits_train_only() -> None:
    ds = load_dataset(DatasetSpec(builtin="wine"))
    spec = DatasetSpec(builtin="wine")
    splits = split_dataset(ds, spec)
    scaler = Standardizer().fit(splits.train[0])
    train = scaler.transform(splits.train[0])
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(scaler.mean, splits.train[0].mean(axis=0), rtol=1e-5)
    assert not np.allclose(scaler.mean, ds.X.mean(axis=0), rtol=1e-5)  # not the whole data
    assert scaler.transform(splits.val[0]).dtype == np.float32


def test_standardizer_images_per_channel_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(loc=[[[5.0]], [[-2.0]], [[0.5]]], scale=3.0, size=(50, 3, 4, 4))
    scaler = Standardizer().fit(X)
    assert scaler.mean.shape == (3,)
    Z = scaler.transform(X)
    np.testing.assert_allclose(Z.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    restored = Standardizer.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_allclose(restored.transform(X), Z, rtol=1e-5)
    np.testing.assert_allclose(restored.inverse_transform(Z), X, rtol=1e-4, atol=1e-4)


def test_standardizer_constant_feature() -> None:
    X = np.array([[1.0, 4.0], [1.0, 6.0]])
    Z = Standardizer().fit(X).transform(X)
    assert np.isfinite(Z).all()
    np.testing.assert_allclose(Z[:, 0], 0.0)


def test_data_module_does_not_import_torch() -> None:
    import os
    import subprocess

    import kubetrain

    package_root = str(Path(kubetrain.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": package_root}
    code = (
        "import sys, kubetrain.data as d; from kubetrain.api.spec import DatasetSpec;"
        "s = DatasetSpec(builtin='iris'); d.split_dataset(d.load_dataset(s), s);"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
