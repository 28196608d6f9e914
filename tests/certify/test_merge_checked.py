"""`tapsc certify --merge` never takes a verifier's word: a fake VNN-COMP tool (real shell
scripts run through the VNN-COMP tool interface) lies in every way, and each lie is caught.

The tool answers what ``plan/<property stem>`` says: the file's text becomes the result
file, except the actions ``crash`` (exit 3), ``silent`` (no result), ``hang`` (past the
timeout) and ``prepare-fail`` (prepare_instance.sh exits 4). `run_tool` plays the
competition's runner: it calls both scripts, writes the runner's own words, results.csv
and the ``<onnx stem>_<vnnlib stem>.counterexample`` files.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_run
from cli_helpers import invoke
from tiny_run import MERGE_EPS, attack_witness, witness

from tapsc.certify.merge import ResultsFile, load_benchmark, merge
from tapsc.certify.report import read_verdicts
from tapsc.export.vnnlib import read_property

pytest.importorskip("onnxruntime")
EPS = MERGE_EPS

PREPARE = """#!/bin/bash
# prepare_instance.sh v1 CATEGORY ONNX VNNLIB
[ "$1" = v1 ] || exit 1
[ -f "$3" ] && [ -f "$4" ] || exit 2
here="$(cd "$(dirname "$0")" && pwd)"
plan="$here/plan/$(basename "$4" .vnnlib)"
[ -f "$plan" ] && [ "$(head -n 1 "$plan")" = prepare-fail ] && exit 4
exit 0
"""

RUN = """#!/bin/bash
# run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
[ "$1" = v1 ] || exit 1
here="$(cd "$(dirname "$0")" && pwd)"
plan="$here/plan/$(basename "$4" .vnnlib)"
[ -f "$plan" ] || { echo unknown > "$5"; exit 0; }
case "$(head -n 1 "$plan")" in
  crash) exit 3 ;;
  silent) exit 0 ;;
  hang) sleep 30 ;;
  *) cat "$plan" > "$5" ;;
esac
"""


def make_tool(folder: Path, plan: dict[int, str]) -> Path:
    return tiny_run.make_tool(folder, plan, PREPARE, RUN)


def run_tool(tool: Path, benchmark: Path, out: Path, only: set[int], timeout: float = 1.0,
             name=lambda onnx, vnnlib: None) -> Path:
    """Run ``tool`` on the instances of ``benchmark`` whose sample is in ``only``, the VNN-COMP way.

    Writes ``out/results.csv`` (category,onnx,vnnlib,prepare_time,result,run_time) and a
    counterexample file per sat; or, when ``name`` returns a file name, one result file per
    instance under that name instead (the runner's words written into it).
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for onnx, vnnlib, _ in csv.reader((benchmark / "instances.csv").open()):
        if int(Path(vnnlib).stem.split("_")[1]) not in only:
            continue
        args = ["v1", "tapsc", str(benchmark / onnx), str(benchmark / vnnlib)]
        started = time.perf_counter()
        prepared = subprocess.run([str(tool / "prepare_instance.sh"), *args], capture_output=True)
        prepare_time = time.perf_counter() - started
        result_file = out / "tmp_result.txt"
        result_file.unlink(missing_ok=True)
        if prepared.returncode != 0:
            word = f"prepare_instance_error_{prepared.returncode}"
        else:
            process = subprocess.Popen([str(tool / "run_instance.sh"), *args, str(result_file), str(timeout)],
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout + 1.0)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
            first = result_file.read_text().split("\n", 1)[0].strip() if result_file.is_file() else ""
            word = ("run_instance_timeout" if code is None else f"error_exit_code_{code}" if code != 0
                    else first or "no_result_in_file")
        run_time = time.perf_counter() - started - prepare_time
        stems = f"{Path(onnx).stem}_{Path(vnnlib).stem}"
        if name(onnx, vnnlib) is not None:
            text = result_file.read_text() if result_file.is_file() and word in ("sat", "unsat") else word + "\n"
            (out / name(onnx, vnnlib)).write_text(text)
            continue
        if word == "sat":
            shutil.copy(result_file, out / f"{stems}.counterexample")
        rows.append(f"tapsc,{onnx},{vnnlib},{prepare_time:.3f},{word},{run_time:.3f}\n")
    (out / "tmp_result.txt").unlink(missing_ok=True)
    if name("onnx/net.onnx", "vnnlib/prop_0.vnnlib") is None:
        (out / "results.csv").write_text("".join(rows))
    return out


@pytest.fixture(scope="module")
def certified_run(tiny_certified_run, tmp_path_factory) -> Path:
    """A run certified at EPS with its benchmark exported into run/vnncomp."""
    run = Path(shutil.copytree(tiny_certified_run, tmp_path_factory.mktemp("merge") / "run"))
    exported = invoke("export", run, "--eps", EPS, "--samples", 30)
    assert exported.exit_code == 0, exported.output
    return run


@pytest.fixture
def run(certified_run, tmp_path) -> Path:
    """A fresh copy of the certified run (merges write into its certify.json)."""
    return Path(shutil.copytree(certified_run, tmp_path / "run"))


def exported(run: Path, verdict: str) -> list[int]:
    """Indices of the exported samples tapsc gave ``verdict``."""
    manifest = json.loads((run / "vnncomp" / "manifest.json").read_text())
    return [m["index"] for m in manifest["instances"] if m["verdict"] == verdict]


def verdicts(run: Path) -> dict[int, tuple[str, str | None]]:
    return {v.index: (v.verdict, v.source) for v in read_verdicts(run / "certify.json")}


def box(run: Path, index: int):
    return read_property(run / "vnncomp" / "vnnlib" / f"prop_{index}.vnnlib")


def test_lies_and_runner_words_are_counted_as_unknown_with_reasons(run, tmp_path):
    unknown = exported(run, "unknown")
    assert len(unknown) >= 10
    no_witness, outside, not_violating, *rest = unknown
    prop = box(run, outside)
    far = prop.upper.copy()
    far[0] = prop.upper[0] + 0.3  # 0.3 past the box on X_0: far beyond the scorer's 1e-4
    centre = (box(run, not_violating).lower + box(run, not_violating).upper) / 2  # classified correctly
    words = ["crash", "silent", "hang", "prepare-fail", "timeout", "unknown", "error\n", "maybe\n"]
    plan = {no_witness: "sat\n", outside: witness(far), not_violating: witness(centre),
            **{index: word for index, word in zip(rest, words)}}
    before = verdicts(run)
    results = run_tool(make_tool(tmp_path / "liar", plan), run / "vnncomp", tmp_path / "out", set(plan))
    merged = invoke("certify", run, "--merge", results / "results.csv", "--tool", "liar")
    assert merged.exit_code == 0, merged.output
    assert verdicts(run) == before, "no lie may change a verdict"
    document = json.loads((run / "certify.json").read_text())
    problems = {p["instance"]: p for p in document["problems"]}
    assert set(problems) == {f"vnnlib/prop_{i}.vnnlib" for i in (no_witness, outside, not_violating)}
    assert all(p["tool"] == "liar" for p in problems.values())
    assert "without a counterexample" in problems[f"vnnlib/prop_{no_witness}.vnnlib"]["reason"]
    assert "outside the box" in problems[f"vnnlib/prop_{outside}.vnnlib"]["reason"]
    assert "does not violate" in problems[f"vnnlib/prop_{not_violating}.vnnlib"]["reason"]
    for index in (no_witness, outside, not_violating):
        assert f"prop_{index}.vnnlib" in merged.output.replace("\n", "")
    (entry,) = document["merges"]
    assert entry["tool"] == "liar" and entry["counts"] == {
        "sat": 3, "sat rejected": 3, "error_exit_code_3": 1, "no_result_in_file": 1, "run_instance_timeout": 1,
        "prepare_instance_error_4": 1, "timeout": 1, "unknown": 1, "error": 1, "maybe": 1}
    reasons = {a["word"]: a["reason"] for a in entry["answers"] if a["word"] != "sat"}
    assert all(a["outcome"] == "unknown" for a in entry["answers"])
    assert "code 3" in reasons["error_exit_code_3"] and "code 4" in reasons["prepare_instance_error_4"]
    assert "timeout" in reasons["run_instance_timeout"] and "no result" in reasons["no_result_in_file"]
    assert "unrecognised" in reasons["maybe"]


def test_unsat_on_a_falsified_sample_is_a_conflict(run, tmp_path):
    falsified, unknown = exported(run, "falsified")[0], exported(run, "unknown")[0]
    results = run_tool(make_tool(tmp_path / "tool", {falsified: "unsat\n", unknown: "unsat\n"}), run / "vnncomp",
                       tmp_path / "out", {falsified, unknown})
    merged = invoke("certify", run, "--merge", results, "--tool", "marabou")
    assert merged.exit_code == 2 and "SOUNDNESS CONFLICT" in merged.output
    after = verdicts(run)
    assert after[falsified] == ("falsified", "attack"), "the unsat is never counted"
    assert after[unknown] == ("certified", "marabou")  # the other answer still counts
    (conflict,) = json.loads((run / "certify.json").read_text())["conflicts"]
    assert conflict["index"] == falsified and conflict["proved_by"] == "marabou"
    assert "attack" in conflict["falsified_by"]


def test_honest_witness_is_accepted_and_beats_another_tools_unsat(run, tmp_path):
    falsified = max(exported(run, "falsified"),
                    key=lambda i: next(v.attack_margin for v in read_verdicts(run / "certify.json") if v.index == i))
    honest = run_tool(make_tool(tmp_path / "honest", {falsified: attack_witness(run, falsified)}), run / "vnncomp",
                      tmp_path / "honest_out", {falsified})
    merged = invoke("certify", run, "--merge", honest, "--tool", "neuralsat")
    assert merged.exit_code == 0, merged.output
    document = json.loads((run / "certify.json").read_text())
    assert not document["problems"] and not document["conflicts"]
    ((answer,),) = [m["answers"] for m in document["merges"]]
    assert answer["outcome"] == "sat" and answer["index"] == falsified and not answer["rejected"]
    # through the API: were the sample unknown in-house, the checked witness falsifies it, and
    # another tool's unsat on it is a conflict, not a certificate
    liar = run_tool(make_tool(tmp_path / "liar", {falsified: "unsat\n"}), run / "vnncomp", tmp_path / "liar_out",
                    {falsified})
    base = [v if v.index != falsified else type(v)(**{**v.row(), "verdict": "unknown", "source": None})
            for v in read_verdicts(run / "certify.json")]
    report = merge(base, load_benchmark(run / "vnncomp"),
                   [ResultsFile(honest, "neuralsat"), ResultsFile(liar, "marabou")])
    merged_verdict = next(v for v in report.verdicts if v.index == falsified)
    assert (merged_verdict.verdict, merged_verdict.source) == ("falsified", "neuralsat")
    (conflict,) = report.conflicts
    assert conflict.proved_by == "marabou" and "neuralsat" in conflict.falsified_by


def test_results_of_a_smaller_eps_benchmark_are_refused(run, tmp_path):
    unknown = exported(run, "unknown")[:3]
    small = tmp_path / "small"
    assert invoke("export", run, "--eps", EPS / 2, "--samples", 30, "--out", small).exit_code == 0
    results = run_tool(make_tool(tmp_path / "tool", dict.fromkeys(unknown, "unsat\n")), small, tmp_path / "out",
                       set(unknown))
    before = (run / "certify.json").read_bytes()
    merged = invoke("certify", run, "--merge", results, "--benchmark", small)
    assert merged.exit_code == 1 and "benchmark-mismatch" in merged.output and "Traceback" not in merged.output
    assert "eps differs" in merged.output and f"{EPS / 2}" in merged.output and f"{EPS}" in merged.output
    assert (run / "certify.json").read_bytes() == before
    # against the right benchmark the same paths name other boxes: provenance, not paths, decides
    manifest = json.loads((run / "vnncomp" / "manifest.json").read_text())
    manifest["provenance"]["checkpoint_sha256"] = "0" * 64
    (run / "vnncomp" / "manifest.json").write_text(json.dumps(manifest))
    tampered = invoke("certify", run, "--merge", results)
    assert tampered.exit_code == 1 and "checkpoint_sha256 differs" in tampered.output and "0" * 64 in tampered.output
    assert (run / "certify.json").read_bytes() == before


def test_results_match_by_onnx_and_vnnlib_path_not_by_stem(run, tmp_path):
    unknown = exported(run, "unknown")[:2]
    tool = make_tool(tmp_path / "tool", dict.fromkeys(unknown, "unsat\n"))
    by_stem = run_tool(tool, run / "vnncomp", tmp_path / "stem", set(unknown),
                       name=lambda onnx, vnnlib: f"{Path(vnnlib).stem}.result")
    refused = invoke("certify", run, "--merge", by_stem)
    assert refused.exit_code == 1 and "unmatched-verifier-results" in refused.output
    stem_csv = tmp_path / "stems.csv"
    stem_csv.write_text("".join(f"prop_{i}.vnnlib,unsat\n" for i in unknown))
    assert "unmatched-verifier-results" in invoke("certify", run, "--merge", stem_csv).output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = invoke("certify", run, "--merge", empty)
    assert nothing.exit_code == 1 and "no result rows or files" in nothing.output
    other = tmp_path / "elsewhere.csv"  # absolute paths into another folder name other files
    other.write_text(f"x,{tmp_path}/onnx/net.onnx,{tmp_path}/vnnlib/prop_{unknown[0]}.vnnlib,0,unsat,1\n")
    assert "unmatched-verifier-results" in invoke("certify", run, "--merge", other).output
    runner_named = run_tool(tool, run / "vnncomp", tmp_path / "runner", set(unknown),
                            name=lambda onnx, vnnlib: f"{Path(onnx).stem}_{Path(vnnlib).stem}.result")
    accepted = invoke("certify", run, "--merge", runner_named, "--tool", "abcrown")
    assert accepted.exit_code == 0, accepted.output
    assert all(verdicts(run)[i] == ("certified", "abcrown") for i in unknown)


def test_two_merges_accumulate_with_their_sources(run, tmp_path):
    first, second = exported(run, "unknown")[:2]
    a = run_tool(make_tool(tmp_path / "a", {first: "unsat\n", second: "timeout\n"}), run / "vnncomp",
                 tmp_path / "a_out", {first, second})
    b = run_tool(make_tool(tmp_path / "b", {second: "unsat\n"}), run / "vnncomp", tmp_path / "b_out", {second})
    certified_before = json.loads((run / "certify.json").read_text())["summary"]["counts"]["certified"]
    assert invoke("certify", run, "--merge", a, "--tool", "neuralsat").exit_code == 0
    assert invoke("certify", run, "--merge", b, "--tool", "marabou").exit_code == 0
    assert invoke("certify", run, "--merge", a, "--tool", "neuralsat").exit_code == 0  # again: replaces, no double
    document = json.loads((run / "certify.json").read_text())
    assert [(m["tool"], Path(m["path"]).name) for m in document["merges"]] == [("marabou", "b_out"),
                                                                                ("neuralsat", "a_out")]
    after = verdicts(run)
    assert after[first] == ("certified", "neuralsat") and after[second] == ("certified", "marabou")
    summary = document["summary"]
    assert summary["counts"]["certified"] == certified_before + 2
    assert summary["certified_by"]["neuralsat"] == 1 and summary["certified_by"]["marabou"] == 1
    rows = {int(r["index"]): r for r in csv.DictReader((run / "certify.csv").open())}
    assert rows[first]["source"] == "neuralsat" and rows[second]["source"] == "marabou"
    assert {rows[i]["source"] for i in exported(run, "falsified")} == {"attack"}


def test_witness_reader_takes_no_y_and_demands_every_x():
    from tapsc.certify.results import parse_witness

    assert parse_witness("sat\n((X_0 0.5) (X_1 -1e-3) (Y_0 9))") == ([0.5, -0.001], None)
    assert parse_witness("sat")[1] and "X_1" in parse_witness("((X_0 1) (X_2 1))")[1]
    assert "twice" in parse_witness("((X_0 1) (X_0 2))")[1] and "number" in parse_witness("((X_0 abc))")[1]
    assert np.isnan(parse_witness("((X_0 nan))")[0][0])  # parsed; the box check rejects it
