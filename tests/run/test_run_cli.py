"""End-to-end `tapsc run` / `tapsc eval` through typer's runner, on tiny digits runs."""

from __future__ import annotations

import json

import pytest
import torch
from run_helpers import TINY_SPEC, invoke, weights, write_spec

from tapsc.language import ir
from tapsc.language.spec import load_spec
from tapsc.train.rundir import load_run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    spec_path = write_spec(folder)
    result = invoke("run", spec_path, "--out", folder / "run", "--device", "cpu")
    return folder, spec_path, result


def test_full_run_prints_the_final_table(finished_run):
    _, _, result = finished_run
    assert result.exit_code == 0, result.output
    for name in ("natural", "PGD", "IBP-certified", "TAPS", "CROWN-IBP-certified"):
        assert name in result.output


def test_run_directory_contents(finished_run):
    folder, spec_path, _ = finished_run
    run = folder / "run"
    assert (run / "spec.taps").read_text() == spec_path.read_text()
    stored = ir.Spec.model_validate_json((run / "ir.json").read_text())
    assert stored.model_dump(mode="json") == load_spec(spec_path).model_dump(mode="json")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    assert [row["phase"] for row in rows] == ["natural", "ibp", "taps", "taps"]
    assert rows[0]["eps"] == 0 and rows[-1]["eps"] == pytest.approx(0.05)
    assert rows[3]["lr"] == pytest.approx(rows[0]["lr"] * 0.5)  # milestone 3
    for row in rows:
        assert 0 <= row["natural"] <= 1 and 0 <= row["taps"] <= 1 and row["train_loss"] > 0
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "metrics", "best"} <= last.keys()
    assert last["epoch"] == 3 and len(last["metrics"]) == 4
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    best_row = max(rows, key=lambda row: (row["taps"], row["epoch"]))
    assert best["epoch"] == best_row["epoch"]
    results = json.loads((run / "results.json").read_text())
    assert results["selected_on"] == "validation" and results["samples"] == 64
    assert set(results["metrics"]) == {"natural", "pgd", "ibp", "taps", "crown_ibp"}
    metrics = results["metrics"]
    assert metrics["pgd"] <= metrics["natural"] and metrics["ibp"] <= metrics["pgd"]
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"


def test_load_run_gives_the_best_weights(finished_run):
    folder, _, _ = finished_run
    spec, network = load_run(folder / "run")
    assert not network.training and spec.optimizer.epochs == 4
    best = weights(folder / "run" / "checkpoints" / "best.pt")
    for name, value in network.state_dict().items():
        assert torch.equal(value, best[name])


def test_eval_and_certify_choose_the_checkpoint_with_the_same_which(finished_run):
    run = finished_run[0] / "run"
    for flag in ("--which", "--checkpoint"):  # --checkpoint: eval's old spelling, still accepted
        result = invoke("eval", run, "--samples", 8, "--device", "cpu", flag, "last")
        assert result.exit_code == 0, result.output
        assert "last checkpoint" in result.output and (run / "eval-last.json").is_file()
    certified = invoke("certify", run, "--samples", 4, "--device", "cpu", "--which", "last", "--methods", "ibp")
    assert certified.exit_code == 0, certified.output
    assert "last checkpoint" in json.loads((run / "certify.json").read_text())["settings"]["source"]
    for command in ("eval", "certify"):
        wrong = invoke(command, run, "--device", "cpu", "--which", "newest")
        assert wrong.exit_code == 1 and "bad-option" in wrong.output and "--which best" in wrong.output
        assert "Traceback" not in wrong.output
    assert "--which" in invoke("eval", "--help").output


def test_eval_command_matches_the_run(finished_run):
    folder, _, _ = finished_run
    result = invoke("eval", folder / "run", "--samples", 32, "--device", "cpu")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((folder / "run" / "eval-best.json").read_text())
    assert evaluated["samples"] == 32
    final = json.loads((folder / "run" / "results.json").read_text())
    # natural and IBP are deterministic: the first 32 samples cannot disagree with all 64 by more than 32
    for name in ("natural", "ibp"):
        assert abs(evaluated["metrics"][name] * 32 - final["metrics"][name] * 64) <= 32


def test_selection_on_test_is_flagged(tmp_path):
    text = write_spec(tmp_path).read_text().replace("validation 64", "validation 0")
    spec_path = write_spec(tmp_path, text.replace("epochs 4", "epochs 1").replace("decay 0.5 at (3); ", "")
                           .replace("until epoch 2", "until epoch 1").replace("from epoch 1 to 2", "from epoch 0 to 1")
                           .replace("phase natural until epoch 1\n", "").replace("phase taps", "# phase taps"), "t.taps")
    result = invoke("run", spec_path, "--out", tmp_path / "run", "--device", "cpu", "--seed", "11")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["selected_on"] == "test" and "leak" in results["note"]
    assert ir.Spec.model_validate_json((tmp_path / "run" / "ir.json").read_text()).optimizer.seed == 11


def test_mixed_precision_run_trains_and_keeps_float32_state(tmp_path):
    # bf16 autocast runs on CPU too; BatchNorm's running statistics must stay float32 and finite.
    spec_path = write_spec(tmp_path)
    result = invoke("run", spec_path, "--out", tmp_path / "run", "--device", "cpu", "--amp")
    assert result.exit_code == 0, result.output
    state = weights(tmp_path / "run" / "checkpoints" / "last.pt")
    for name, tensor in state.items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, name
            assert torch.isfinite(tensor).all(), name
    assert any(name.endswith("running_mean") for name in state)


def test_rows_say_where_the_training_time_went(finished_run):
    folder, _, _ = finished_run
    for line in (folder / "run" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        parts = row["train_part_seconds"]
        assert set(parts) == {"data", "step", "probe", "display"} and min(parts.values()) >= 0
        assert parts["step"] > 0 and sum(parts.values()) <= row["train_seconds"] + 0.01 <= row["seconds"] + 0.01


def test_running_taps_probes_are_capped_per_epoch(tmp_path, monkeypatch):
    from tapsc import margins
    from tapsc.train import run

    probed = []
    real = margins.robust

    def counting(name, network, x, y, spec, eps=None):
        if name == "taps":
            probed.append(len(y))
        return real(name, network, x, y, spec, eps)

    monkeypatch.setattr(margins, "robust", counting)
    monkeypatch.setattr(run, "PROBE_EVERY", 1)
    monkeypatch.setattr(run, "PROBES_PER_EPOCH", 2)  # 4 batches per epoch: batches 0 and 2
    spec = write_spec(tmp_path, TINY_SPEC.replace("epochs 4", "epochs 3").replace("decay 0.5 at (3)", "decay 0.5 at (2)"))
    result = invoke("run", spec, "--out", tmp_path / "run", "--device", "cpu", "--set", "eval.metrics=(natural)",
                    "--set", "eval.select=natural")
    assert result.exit_code == 0, result.output
    # batches 0 and 2 of the IBP and the TAPS epoch, less the IBP epoch's batch 0 (its eps ramp starts at 0)
    assert probed == [32] * 3


def test_training_passes_run_tf32_matmuls_and_evaluation_does_not(tmp_path, monkeypatch):
    from tapsc.train import run

    assert run.use_tf32(run.RunOptions(), torch.device("cuda"))
    assert not run.use_tf32(run.RunOptions(tf32=False), torch.device("cuda"))
    assert not run.use_tf32(run.RunOptions(), torch.device("cpu"))  # the flag would change nothing there
    seen = {"step": set(), "selection": set()}
    real_step, real_select = run.Trainer.step, run.Trainer.select_metrics

    def recording_step(self, *args):
        seen["step"].add(torch.backends.cuda.matmul.allow_tf32)
        return real_step(self, *args)

    def recording_select(self):
        seen["selection"].add(torch.backends.cuda.matmul.allow_tf32)
        return real_select(self)

    monkeypatch.setattr(run.Trainer, "step", recording_step)
    monkeypatch.setattr(run.Trainer, "select_metrics", recording_select)
    monkeypatch.setattr(run, "use_tf32", lambda options, device: options.tf32)  # as on a CUDA device
    before = torch.backends.cuda.matmul.allow_tf32
    for flag, expected, said in (("--tf32", True, "(TF32 matmuls)"), ("--no-tf32", before, "(float32)")):
        seen = {"step": set(), "selection": set()}
        result = invoke("run", write_spec(tmp_path), "--out", tmp_path / flag, "--device", "cpu", flag,
                        "--no-attack-bf16", "--set", "eval.metrics=(natural)", "--set", "eval.select=natural")
        assert result.exit_code == 0, result.output
        assert seen["step"] == {expected} and seen["selection"] == {before}, (flag, seen)
        assert said in result.output
        assert torch.backends.cuda.matmul.allow_tf32 == before


def test_training_attacks_iterate_in_bf16_and_evaluation_attacks_do_not(tmp_path, monkeypatch):
    from tapsc import precision
    from tapsc.method import latent_attack
    from tapsc.train import run

    assert run.attack_dtype_for(run.RunOptions(), torch.device("cuda")) is None  # not measured on a GPU
    assert run.attack_dtype_for(run.RunOptions(attack_bf16=False), torch.device("cpu")) is None
    monkeypatch.setattr(precision, "fast_attack_dtype", lambda device: torch.bfloat16)  # a CPU with native bf16
    assert run.attack_dtype_for(run.RunOptions(amp=True), torch.device("cpu")) is None  # autocast covers it
    seen, where = [], ["setup"]
    real_step, real_select, real_dtype = run.Trainer.step, run.Trainer.select_metrics, latent_attack.attack_dtype

    def recording_step(self, *args):
        where[0] = "step"
        return real_step(self, *args)

    def recording_select(self):
        where[0] = "selection"
        return real_select(self)

    def recording_dtype():
        seen.append((where[0], real_dtype(), torch.is_autocast_enabled("cpu")))
        return real_dtype()

    monkeypatch.setattr(run.Trainer, "step", recording_step)
    monkeypatch.setattr(run.Trainer, "select_metrics", recording_select)
    monkeypatch.setattr(latent_attack, "attack_dtype", recording_dtype)
    for flag, expected, said in (("--attack-bf16", torch.bfloat16, "bf16 attack iterations"),
                                 ("--no-attack-bf16", None, "(float32)")):
        seen.clear()
        result = invoke("run", write_spec(tmp_path), "--out", tmp_path / flag, "--device", "cpu", flag,
                        "--set", "eval.metrics=(taps)", "--set", "eval.select=taps")
        assert result.exit_code == 0, result.output
        assert said in result.output
        steps = {dtype for place, dtype, _ in seen if place == "step"}
        selections = {dtype for place, dtype, _ in seen if place == "selection"}
        assert steps == {expected} and selections == {None}, (flag, seen)
        assert not any(on for _, _, on in seen)  # autocast is the attack's own, inside; never around it
    assert precision.attack_dtype() is None


def test_run_options_survive_the_worker_command_line(tmp_path, monkeypatch):
    # launched workers and sweep points get the launcher's options as `tapsc run` flags
    from tapsc.train import run

    captured = []
    monkeypatch.setattr(run, "start_run", lambda spec, text, target, options, emit: captured.append(options))
    spec_path = write_spec(tmp_path)
    for options in (run.RunOptions(device="cpu"),
                    run.RunOptions(device="cpu", amp=True, tf32=False, attack_bf16=False, seed=5,
                                   data_root=str(tmp_path))):
        result = invoke("run", spec_path, "--out", tmp_path / "run", *options.command_flags())
        assert result.exit_code == 0, result.output
        assert captured[-1] == options
