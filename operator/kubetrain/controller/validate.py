"""Checks of a spec that the CRD schema cannot express (the test cluster ignores CEL rules).

Each problem names the field, so the `Invalid` condition tells the user what to change.
"""

from __future__ import annotations

from ..api.resource import TrainingJob
from ..api.spec import NAME_PATTERN
from .builders import WorkerSettings, storage_claim

# The longest child name suffix the operator adds: the headless Service of a two-digit
# cross-validation fold ("-fold-19-workers"), longer than "-augment-merge" or "-fold-19-0".
LONGEST_SUFFIX = len("-fold-19-workers")


def semantic_problems(job: TrainingJob, settings: WorkerSettings) -> list[str]:
    spec = job.spec
    problems = []
    if storage_claim(job, settings) is None:
        problems.append("spec.storage.pvc: required on Kubernetes (every stage's pods share "
                        "the job's storage), and the operator has no default PVC configured")
    if spec.dataset.uri and not spec.dataset.uri.startswith("pvc://") and \
            not spec.dataset.remote:
        problems.append(f"spec.dataset.uri: {spec.dataset.uri!r} is a local path; on "
                        "Kubernetes use pvc://claim/path, s3://bucket/key or https://host/file "
                        "(or a builtin dataset)")
    if not NAME_PATTERN.match(job.metadata.name):
        problems.append("metadata.name: must be a DNS-1123 label")
    elif not job.metadata.name[0].isalpha():
        problems.append("metadata.name: must start with a letter (the names of its Services "
                        "are DNS-1035 labels)")
    if len(job.metadata.name) + LONGEST_SUFFIX > 63:
        problems.append(f"metadata.name: at most {63 - LONGEST_SUFFIX} characters, so that "
                        "the names of its pods and Services fit in 63")
    if spec.model is not None and spec.model.entrypoint and not spec.image:
        problems.append("spec.image: a model.entrypoint needs a worker image that contains "
                        "your module")
    return problems
