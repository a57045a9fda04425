"""The trainer's device decisions (workloads.acceleration), on fake device capabilities."""

from __future__ import annotations

import pytest
from kubetrain.workloads.acceleration import (
    Acceleration,
    AccelerationError,
    DeviceCaps,
    check_batch_split,
    choose_acceleration,
)

CPU = DeviceCaps("cpu")
H100 = DeviceCaps("cuda", bf16=True, name="NVIDIA H100")
T4 = DeviceCaps("cuda", bf16=False, name="Tesla T4")


def choose(caps: DeviceCaps, precision: str = "auto", compile_mode: str = "none",
           image_input: bool = False, streamed: bool = False) -> Acceleration:
    return choose_acceleration(caps, precision, compile_mode, image_input, streamed)


def test_auto_is_bf16_on_a_gpu_that_has_it_and_fp32_elsewhere() -> None:
    assert choose(H100).precision == "bf16"
    assert choose(T4).precision == "fp32"
    assert choose(CPU).precision == "fp32"


def test_the_cpu_path_is_plain_fp32_eager() -> None:
    assert choose(CPU, image_input=True) == Acceleration(
        precision="fp32", channels_last=False, fused_optimizer=False, compile="none",
        data_on_device=True)


def test_a_gpu_gets_fused_optimizers_and_channels_last_for_images_only() -> None:
    images = choose(H100, image_input=True)
    assert images.channels_last and images.fused_optimizer
    table = choose(H100, image_input=False)
    assert not table.channels_last and table.fused_optimizer


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept_on_a_gpu_that_can(precision: str) -> None:
    assert choose(H100, precision).precision == precision


def test_bf16_on_a_gpu_without_it_is_refused_naming_the_field_and_the_gpu() -> None:
    with pytest.raises(AccelerationError, match=r"spec\.training\.precision: bf16.*Tesla T4"):
        choose(T4, "bf16")
    assert choose(T4, "fp16").precision == "fp16"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_the_cpu_is_refused(precision: str) -> None:
    with pytest.raises(AccelerationError, match=r"spec\.training\.precision.*fp32"):
        choose(CPU, precision)


def test_compile_modes() -> None:
    assert choose(CPU, compile_mode="default").compile == "default"
    assert choose(H100, compile_mode="reduce-overhead").compile == "reduce-overhead"
    with pytest.raises(AccelerationError, match=r"spec\.training\.compile: reduce-overhead"):
        choose(CPU, compile_mode="reduce-overhead")
    with pytest.raises(AccelerationError, match=r"spec\.training\.compile: 'max'"):
        choose(H100, compile_mode="max")


def test_streamed_rows_are_not_on_the_device() -> None:
    assert choose(H100, streamed=True).data_on_device is False
    assert choose(H100).data_on_device is True


def test_the_report_names_every_choice() -> None:
    assert choose(H100, image_input=True).report() == {
        "precision": "bf16", "channels_last": True, "fused_optimizer": True,
        "compile": "none", "data_on_device": True, "sync_batchnorm": False}


def test_the_spec_defaults_to_auto_and_eager() -> None:
    from kubetrain.api.spec import TrainingSpec

    spec = TrainingSpec()
    assert (spec.precision, spec.compile) == ("auto", "none")


def test_batchnorm_statistics_are_synchronized_across_gpus_only() -> None:
    assert choose_acceleration(H100, "auto", "none", False, False, world_size=2).sync_batchnorm
    assert not choose_acceleration(H100, "auto", "none", False, False).sync_batchnorm
    assert not choose_acceleration(CPU, "auto", "none", False, False, world_size=2).sync_batchnorm


def test_the_global_batch_must_split_evenly_over_the_processes() -> None:
    check_batch_split(64, 1)
    check_batch_split(64, 4)
    with pytest.raises(AccelerationError,
                       match=r"spec\.training\.batchSize: 100 does not split evenly over the 3 "
                             r".*e\.g\. 99 or 102"):
        check_batch_split(100, 3)
    with pytest.raises(AccelerationError, match=r"multiple of 4, e\.g\. 4$"):
        check_batch_split(2, 4)


def test_the_result_s_acceleration_reaches_the_status_in_camel_case() -> None:
    from kubetrain.api.results import TrainingResult
    from kubetrain.api.status import TrainingJobStatus
    from kubetrain.pipeline.status import apply_training_result

    result = TrainingResult.model_validate({
        "unit": "train", "epochs": 2, "epochs_run": 2,
        "acceleration": {"device": "cuda", "gpu_name": "NVIDIA H100", "precision": "bf16",
                         "channels_last": True, "fused_optimizer": True,
                         "compile": "reduce-overhead", "compile_seconds": 12.5,
                         "data_on_device": True, "sync_batchnorm": False}})
    status = TrainingJobStatus()
    apply_training_result(status, result)
    assert status.training is not None and status.training.acceleration is not None
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["training"]["acceleration"] == {
        "device": "cuda", "gpuName": "NVIDIA H100", "precision": "bf16", "channelsLast": True,
        "fusedOptimizer": True, "compile": "reduce-overhead", "compileSeconds": 12.5,
        "dataOnDevice": True, "syncBatchnorm": False}


def test_compiling_without_a_c_compiler_is_refused_naming_the_field() -> None:
    bare = DeviceCaps("cuda", bf16=True, name="NVIDIA H100", c_compiler=False)
    with pytest.raises(AccelerationError, match=r"spec\.training\.compile: default needs a C "
                                                r"compiler.*compile: none"):
        choose(bare, compile_mode="default")
    assert choose(bare).compile == "none"
