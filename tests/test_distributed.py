"""Decisions that every DDP rank must take together, on 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("ddp_nonfinite.py")


def test_a_nan_on_one_rank_is_skipped_by_both_without_a_hang(tmp_path) -> None:
    """Rank 1's first critic loss is NaN, rank 0's is finite: both ranks must skip that update
    (a rank stepping alone waits forever in the gradient all-reduce) and keep equal weights."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # so a hang can be ended with every rank it started
    )
    try:
        out, err = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("the ranks hung: the non-finite skip was not decided together") from None
    assert process.returncode == 0, err[-3000:]
    lines = sorted(line.split() for line in out.splitlines() if line.startswith("rank "))
    assert [line[1] for line in lines] == ["0", "1"], out
    assert lines[0][3] == lines[1][3]  # the same number of critic steps
    assert lines[0][5] == lines[1][5]  # the same critic weights
