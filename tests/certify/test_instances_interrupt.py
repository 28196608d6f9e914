"""An interrupted `tapsc verify` leaves no verifier running and records no answer for what it
stopped: SIGTERM to the runner kills every verifier's process group (they run in their own
sessions, so nothing else would), and the killed instances are run again next time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tapsc.certify.instances import Commands, Job, run_instances

    folder = Path(sys.argv[1])

    class Sleepy(Commands):
        def run(self, job, result_file, timeout):
            script = ('sleep 300 & echo $! > "{0}/child_$1"; echo $$ > "{0}/leader_$1"; wait').format(folder)
            return ["bash", "-c", script, "sleepy", job.name]

    jobs = [Job(f"net_prop_{i}", folder / "net.onnx", folder / f"prop_{i}.vnnlib") for i in range(2)]
    run_instances(Sleepy(), jobs, folder, timeout=300, grace=1, parallel=2)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_sigterm_kills_every_verifier_group_and_records_nothing(tmp_path):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path)], start_new_session=True)
    children = [tmp_path / f"child_net_prop_{i}" for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(c.is_file() and c.read_text().strip() for c in children):
        assert time.monotonic() < deadline and runner.poll() is None, "the verifiers never started"
        time.sleep(0.1)
    pids = [int(c.read_text()) for c in children]
    pids += [int((tmp_path / f"leader_net_prop_{i}").read_text()) for i in range(2)]
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=30)
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in pids), "a verifier outlived the interrupted runner"
    assert not list((tmp_path / "results").glob("*.txt")), "an interrupted instance must leave no result"
