"""`tapsc verify` end to end through the CLI, with a fake VNN-COMP tool made of real shell
scripts (run the VNN-COMP way, in their own process groups) and with a real complete
verifier from the package index (Marabou) when maraboupy is installed.

The fake tool answers what ``plan/<property stem>`` says (the text becomes the result
file), ``hang`` starts a child and sleeps past any timeout; every call of run_instance.sh
appends the property's stem to ``calls``, so a test can count what ran.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import tiny_run
import torch
from cli_helpers import invoke
from tiny_run import MERGE_EPS, MLP_SPEC, at_merge_eps, attack_witness, make_run

from tapsc.certify.report import read_verdicts
from tapsc.data import load_dataset
from tapsc.experiments import sweep
from tapsc.train import rundir

pytest.importorskip("onnxruntime")
EPS = MERGE_EPS

PREPARE = """#!/bin/bash
[ "$1" = v1 ] && [ -f "$3" ] && [ -f "$4" ] || exit 2
exit 0
"""

RUN = """#!/bin/bash
# run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
[ "$1" = v1 ] || exit 1
here="$(cd "$(dirname "$0")" && pwd)"
stem="$(basename "$4" .vnnlib)"
echo "$stem" >> "$here/calls"
plan="$here/plan/$stem"
[ -f "$plan" ] || { echo unknown > "$5"; exit 0; }
case "$(head -n 1 "$plan")" in
  hang) sleep 300 & echo $! > "$here/child_$stem"; echo $$ > "$here/leader_$stem"; wait ;;
  *) cat "$plan" > "$5" ;;
esac
"""


def make_tool(folder: Path, plan: dict[int, str]) -> Path:
    return tiny_run.make_tool(folder, plan, PREPARE, RUN)


def calls(tool: Path) -> list[str]:
    path = tool / "calls"
    return path.read_text().split() if path.is_file() else []


@pytest.fixture
def run(tiny_certified_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_certified_run, tmp_path / "run"))


def verdicts(run: Path) -> dict[int, tuple[str, str | None]]:
    return {v.index: (v.verdict, v.source) for v in read_verdicts(run / "certify.json")}


def with_verdict(run: Path, verdict: str) -> list[int]:
    return [i for i, (v, _) in verdicts(run).items() if v == verdict]


def forget(run: Path, index: int) -> None:
    """Make the cascade's verdict on ``index`` unknown (as a weaker attack would have left it)."""
    path = run / "certify.json"
    document = json.loads(path.read_text())
    for row in document["samples"]:
        if row["index"] == index:
            row.update(verdict="unknown", method=None, source=None)
    path.write_text(json.dumps(document))


def verify(run: Path, tool: Path, jobs: str, *flags):
    return invoke("verify", run, "--verifier", f"vnncomp:{tool}", "--jobs", jobs, *flags)


def test_honest_answers_decide_unknown_samples_and_rerun_skips_decided(run, tmp_path):
    falsified = max(with_verdict(run, "falsified"))
    forget(run, falsified)
    unknown = sorted(with_verdict(run, "unknown"))
    assert len(unknown) >= 6 and falsified in unknown
    proved = [i for i in unknown if i != falsified][:3]
    tool = make_tool(tmp_path / "honest", {falsified: attack_witness(run, falsified),
                                           **dict.fromkeys(proved, "unsat\n")})
    before = json.loads((run / "certify.json").read_text())["summary"]["counts"]["certified"]
    result = verify(run, tool, "2", "--timeout", "5")
    assert result.exit_code == 0, result.output
    after = verdicts(run)
    assert after[falsified] == ("falsified", "honest")
    assert all(after[i] == ("certified", "honest") for i in proved)
    rest = set(unknown) - set(proved) - {falsified}
    assert all(after[i] == ("unknown", None) for i in rest)
    document = json.loads((run / "certify.json").read_text())
    complete = document["complete"]
    assert complete["certified"] == before + len(proved) and complete["samples"] == 40
    assert complete["rate"] == pytest.approx(complete["certified"] / 40) and complete["verifiers"] == ["honest"]
    (record,) = document["verifiers"]
    assert record["verifier"] == "vnncomp" and record["timeout"] == 5 and record["jobs"] == 2
    assert record["ran"] == len(unknown) and record["words"]["unknown"] == len(rest)
    rows = {int(r["index"]): r for r in csv.DictReader((run / "certify.csv").open())}
    assert rows[falsified]["source"] == "honest" and rows[proved[0]]["method"] == "honest"
    assert sorted(calls(tool)) == sorted(f"prop_{i}" for i in unknown)
    assert "complete certified accuracy" in result.output
    # sweep tables and plots read the same number, and prefer it as the certified accuracy
    assert sweep._complete_rate(run) == complete["rate"]
    assert sweep.certified_column([{"status": "done", "crown": 0.5, "complete": complete["rate"]}]) == "complete"
    # again: the decided instances keep their result files and are not run; the rest run again
    again = verify(run, tool, "1", "--timeout", "5")
    assert again.exit_code == 0, again.output
    assert sorted(calls(tool)[len(unknown):]) == sorted(f"prop_{i}" for i in rest)
    assert verdicts(run) == after
    document = json.loads((run / "certify.json").read_text())
    assert len(document["merges"]) == 1 and document["verifiers"][0]["skipped_decided"] == len(proved) + 1


def test_a_lying_tool_changes_nothing_and_is_reported(run, tmp_path):
    unknown = sorted(with_verdict(run, "unknown"))
    no_witness, outside, not_violating = unknown[:3]
    spec = rundir.read_spec(run)
    test_set = load_dataset(spec.data, train=False, shape=(1, 8, 8))

    def point(index, shift=0.0):
        """The box centre (classified correctly, so no counterexample), X_0 moved by ``shift``."""
        values = torch.as_tensor(test_set[index][0]).reshape(-1).double().tolist()
        values[0] += shift
        return "sat\n(" + " ".join(f"(X_{i} {v!r})" for i, v in enumerate(values)) + ")\n"

    plan = {no_witness: "sat\n", outside: point(outside, 0.3), not_violating: point(not_violating)}
    tool = make_tool(tmp_path / "liar", plan)
    before = verdicts(run)
    result = verify(run, tool, "1", "--timeout", "5")
    assert result.exit_code == 0, result.output
    assert verdicts(run) == before, "no lie may change a verdict"
    document = json.loads((run / "certify.json").read_text())
    reasons = {p["instance"]: p["reason"] for p in document["problems"]}
    assert "without a counterexample" in reasons[f"vnnlib/prop_{no_witness}.vnnlib"]
    assert "X_0" in reasons[f"vnnlib/prop_{outside}.vnnlib"] and "outside the box" in reasons[
        f"vnnlib/prop_{outside}.vnnlib"]
    assert "does not violate" in reasons[f"vnnlib/prop_{not_violating}.vnnlib"]
    assert all(p["tool"] == "liar" for p in document["problems"])
    assert "not counted" in result.output
    assert document["complete"]["certified"] == document["summary"]["counts"]["certified"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def test_a_tool_past_its_timeout_is_killed_with_its_process_group(run, tmp_path):
    hung = sorted(with_verdict(run, "unknown"))[0]
    tool = make_tool(tmp_path / "sleepy", {hung: "hang"})
    started = time.perf_counter()
    result = verify(run, tool, "2", "--timeout", "1", "--grace", "0.5")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 30
    leader = int((tool / f"leader_prop_{hung}").read_text())
    child = int((tool / f"child_prop_{hung}").read_text())
    assert not _alive(leader) and not _alive(child) and not _group_members(leader)
    results = run / "verify" / "sleepy" / "results"
    assert (results / f"net_prop_{hung}.txt").read_text() == "run_instance_timeout\n"
    assert verdicts(run)[hung] == ("unknown", None)
    document = json.loads((run / "certify.json").read_text())
    (answer,) = [a for a in document["merges"][0]["answers"] if a["index"] == hung]
    assert answer["word"] == "run_instance_timeout" and "timeout" in answer["reason"]


def test_missing_pieces_are_clean_diagnostics(run, tmp_path):
    missing = invoke("verify", run, "--verifier", "neuralsat", "--verifier-env", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "verifier-not-set-up" in missing.output
    assert "tapsc verify --setup neuralsat" in missing.output.replace("\n", " ") and "Traceback" not in missing.output
    odd = invoke("verify", run, "--verifier", "abcrown")
    assert odd.exit_code == 1 and "unknown-verifier" in odd.output
    not_a_tool = invoke("verify", run, "--verifier", f"vnncomp:{tmp_path}")
    assert not_a_tool.exit_code == 1 and "run_instance.sh" in not_a_tool.output
    (run / "certify.json").unlink()
    uncertified = invoke("verify", run, "--verifier", f"vnncomp:{make_tool(tmp_path / 't', {})}")
    assert uncertified.exit_code == 1 and "tapsc certify" in uncertified.output and "Traceback" not in uncertified.output


def test_marabou_agrees_with_every_decided_in_house_verdict(tmp_path):
    """A real complete verifier (maraboupy from the package index) on a tiny MLP: the samples
    the cascade decided are handed to Marabou as unknown, and its answers, read back through
    the checked merge (witnesses replayed with onnxruntime), reproduce every in-house verdict."""
    pytest.importorskip("maraboupy")

    run = make_run(tmp_path / "mlp", at_merge_eps(MLP_SPEC))
    assert invoke("certify", run, "--range", "0:12", "--eps", EPS, "--device", "cpu").exit_code == 0
    inhouse = verdicts(run)
    decided = [i for i, (v, _) in inhouse.items() if v in ("certified", "falsified")]
    assert {v for v, _ in inhouse.values()} >= {"certified", "falsified"}
    for index in decided:
        forget(run, index)
    result = invoke("verify", run, "--verifier", "marabou", "--timeout", "60", "--jobs", "2")
    assert result.exit_code == 0, result.output
    merged = verdicts(run)
    assert {i: merged[i] for i in decided} == {i: (inhouse[i][0], "marabou") for i in decided}
    document = json.loads((run / "certify.json").read_text())
    assert not document["problems"] and not document["conflicts"]
    (record,) = document["verifiers"]
    assert record["tool"] == "marabou" and record["version"] == "2.0.0"
    assert json.loads((run / "verify" / "marabou" / "manifest.json").read_text())["avgpool_as_conv"] is True


@pytest.mark.slow
def test_neuralsat_proves_and_falsifies_like_the_cascade(tmp_path):
    """NeuralSAT in its own venv (skipped unless `tapsc verify --setup neuralsat` made one): one
    certified and one falsified sample, handed over as unknown, come back with the same verdicts."""
    from tapsc.certify.verifiers import _neuralsat_main, default_neuralsat_env

    if _neuralsat_main(default_neuralsat_env()) is None:
        pytest.skip("NeuralSAT is not set up (tapsc verify --setup neuralsat)")
    run = make_run(tmp_path / "mlp", at_merge_eps(MLP_SPEC))
    assert invoke("certify", run, "--range", "0:12", "--eps", EPS, "--device", "cpu").exit_code == 0
    inhouse = verdicts(run)
    picked = [min(i for i, (v, _) in inhouse.items() if v == kind) for kind in ("certified", "falsified")]
    for index in picked:
        forget(run, index)
    result = invoke("verify", run, "--timeout", "60", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert {i: verdicts(run)[i] for i in picked} == {i: (inhouse[i][0], "neuralsat") for i in picked}
    (record,) = json.loads((run / "certify.json").read_text())["verifiers"]
    assert record["verifier"] == "neuralsat" and record["version"] != "unknown"


def test_an_unsat_on_a_canary_is_a_soundness_conflict(run, tmp_path):
    """`--canaries 1` also hands over the first falsified sample: a tool that says unsat to
    everything contradicts tapsc's counterexample, and the command says so and exits 2."""
    canary = min(with_verdict(run, "falsified"))
    unknown = with_verdict(run, "unknown")
    tool = make_tool(tmp_path / "yes_man", dict.fromkeys([canary, *unknown], "unsat\n"))
    result = verify(run, tool, "2", "--timeout", "5", "--canaries", "1")
    assert result.exit_code == 2 and "SOUNDNESS CONFLICT" in result.output
    assert f"prop_{canary}" in calls(tool)
    assert verdicts(run)[canary] == ("falsified", "attack")
    document = json.loads((run / "certify.json").read_text())
    (conflict,) = document["conflicts"]
    assert conflict["index"] == canary and conflict["proved_by"] == "yes_man"
    assert document["verifiers"][0]["canaries"] == [canary]
