"""Datasets: loading (built-ins, npz, csv, parquet, image folders), splits and standardization."""

from .base import Dataset, DatasetError, infer_task
from .datasets import load_dataset, resolve_uri
from .splits import Splits, Standardizer, kfold_splits, split_dataset

__all__ = [
    "Dataset",
    "DatasetError",
    "Splits",
    "Standardizer",
    "infer_task",
    "kfold_splits",
    "load_dataset",
    "resolve_uri",
    "split_dataset",
]
