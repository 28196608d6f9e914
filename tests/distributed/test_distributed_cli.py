"""User mistakes with several processes are diagnostics, never tracebacks; slot devices."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import invoke
from dist_helpers import DIST_SPEC, tapsc

from tapsc.train import distributed


@pytest.mark.parametrize("args, code", [
    (("--nproc-per-node", "0"), "bad-nproc"),
    (("--nproc-per-node", "-2"), "bad-nproc"),
    (("--nproc-per-node", "2", "--device", "cuda:0"), "device-per-worker"),
])
def test_bad_launch_is_a_diagnostic(tmp_path, args, code):
    spec = tmp_path / "dist.taps"
    spec.write_text(DIST_SPEC)
    for command in (("run", spec), ("certify", spec, "--checkpoint", tmp_path / "none.pt")):
        result = invoke(*command, *args)
        assert result.exit_code == 1, result.output
        assert f"error[{code}]" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_nccl_without_gpus_is_a_diagnostic(tmp_path):
    spec = tmp_path / "dist.taps"
    spec.write_text(DIST_SPEC)
    result = invoke("run", spec, "--nproc-per-node", "2", "--device", "cuda")
    assert result.exit_code == 1 and "error[no-cuda]" in result.output and "NCCL" in result.output


def test_nproc_inside_a_torchrun_worker_is_refused(tmp_path, monkeypatch):
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    spec = tmp_path / "dist.taps"
    spec.write_text(DIST_SPEC)
    result = invoke("run", spec, "--nproc-per-node", "2")
    assert result.exit_code == 1 and "error[nested-launch]" in result.output


def test_device_for_slot_goes_round_robin():
    assert distributed.device_for_slot(5, ["cuda:0", "cuda:1"]) == torch.device("cuda:1")
    if not torch.cuda.is_available():
        assert distributed.device_for_slot(3) == torch.device("cpu")
        assert distributed.slot_environment(3) == {}
    else:
        assert distributed.device_for_slot(torch.cuda.device_count()) == torch.device("cuda:0")


def test_an_error_every_worker_hits_is_printed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPSC_OFFLINE", "1")  # the workers inherit it: no download attempt
    spec = tmp_path / "mnist.taps"
    spec.write_text(DIST_SPEC.replace("data digits {", "data mnist {").replace("input (1, 8, 8)", "input (1, 28, 28)"))
    result = tapsc("run", spec, "--nproc-per-node", "2", "--device", "cpu", "--data-root", tmp_path / "nowhere",
                   "--out", tmp_path / "run")
    assert result.returncode == 1
    assert result.stderr.count("error[missing-dataset]") == 1 and "TAPSC_OFFLINE" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_distinct_worker_errors_name_their_ranks(tmp_path, capsys):
    for rank, text in ((0, "error[a]: one\n"), (1, "error[b]: two\n"), (2, "error[a]: one\n")):
        distributed.write_worker_error(str(tmp_path), rank, text)
    distributed.report_worker_errors(str(tmp_path))
    err = capsys.readouterr().err
    assert err.count("error[a]") == 1 and "(worker ranks 0, 2)" in err and "(worker rank 1)" in err
