"""When `mla_tutorial.kernels` chooses Triton's interpreter because there is no GPU, it says so once per process
(an InterpreterFallbackWarning), and stays quiet when the caller chose the interpreter by setting TRITON_INTERPRET.
Run in fresh processes, with CUDA hidden, so the choice is really made there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import importlib, warnings
warnings.simplefilter("always")
import mla_tutorial.kernels
importlib.reload(mla_tutorial.kernels)  # a second import in the same process
import mla_tutorial.stage4_triton
print("TRITON_INTERPRET =", __import__("os").environ.get("TRITON_INTERPRET"))
"""


def _run(env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_interpreter_fallback_is_announced_once():
    run = _run({"TRITON_INTERPRET": None})
    assert run.returncode == 0, run.stderr
    assert "TRITON_INTERPRET = 1" in run.stdout
    assert run.stderr.count("InterpreterFallbackWarning") == 1, run.stderr
    assert "no CUDA device found, so the Triton kernels run in Triton's interpreter" in run.stderr


@pytest.mark.slow
def test_no_notice_when_the_caller_chose_the_interpreter():
    run = _run({"TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stderr
    assert "InterpreterFallbackWarning" not in run.stderr, run.stderr
