"""Run by tests/test_distributed.py: 2 CPU ranks (gloo); rank 1's first critic loss is made NaN.

Both ranks must skip that update together (no hang in the gradient all-reduce) and end with the
same weights. Each rank writes ``rank<r>.txt`` into the output folder: ``<critic_steps> <checksum>``
(files, not stdout: the ranks' prints can interleave)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ddp_tiny import tiny_run

from deepfill.training import module as module_file

_real_critic_loss = module_file.critic_loss
_calls = {"critic": 0}


def _poisoned_critic_loss(*args, **kwargs):
    loss = _real_critic_loss(*args, **kwargs)
    _calls["critic"] += 1
    if os.environ.get("LOCAL_RANK", "0") == "1" and _calls["critic"] == 1:
        loss.total = loss.total * float("nan")
    return loss


module_file.critic_loss = _poisoned_critic_loss


def main(out_dir: str) -> None:
    model, data, trainer = tiny_run(out_dir, length=8)
    trainer.fit(model, datamodule=data)
    checksum = sum(float(p.detach().double().sum()) for p in model.global_critic.parameters())
    steps = int(model.critic_steps)
    Path(out_dir, f"rank{trainer.global_rank}.txt").write_text(f"{steps} {checksum:.10e}\n")


if __name__ == "__main__":
    main(sys.argv[1])
