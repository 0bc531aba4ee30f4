"""scripts/gpu_checks.sh (wordepth/cli/gpu_checks.py) where no GPU is: one line and exit status 77 without
CUDA, the exit status from the claims' verdicts, a failing check reported as a claim that does not hold, and
the checks that also run on a CPU giving their verdict there."""
import os
import subprocess
from pathlib import Path

import pytest
import torch

from wordepth.cli import gpu_checks
from wordepth.cli.gpu_checks import NO_CUDA_EXIT, Claim

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_the_script_prints_one_error_line_and_exits_77():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, on a GPU machine too
    proc = subprocess.run(["sh", str(ROOT / "scripts" / "gpu_checks.sh")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == NO_CUDA_EXIT == 77
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the GPU checks need a CUDA device"), proc.stderr
    assert "nothing checked" in lines[0]


@pytest.mark.parametrize("verdicts, status", [((True, None, True), 0), ((True, False, None), 1)])
def test_the_exit_status_is_1_when_a_claim_does_not_hold(monkeypatch, capsys, verdicts, status):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "a test card")
    monkeypatch.setattr("wordepth.reproducibility.set_cublas_workspace", lambda: True)
    monkeypatch.setattr(gpu_checks, "run_checks",
                        lambda work, backend, report: [Claim(f"c{i}", v, "x") for i, v in enumerate(verdicts)])
    with pytest.raises(SystemExit) as exc:
        gpu_checks.main([])
    assert exc.value.code == status
    assert f"{sum(v is not False for v in verdicts)} of 3 claims hold or were skipped" in capsys.readouterr().out


def test_a_check_that_fails_with_an_error_does_not_hold_and_the_next_ones_still_run(monkeypatch):
    lines = []

    def broken(*args, **kwargs):
        raise RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation\nmore")

    monkeypatch.setattr(gpu_checks, "check_deterministic", broken)
    for name in ("check_no_host_sync", "check_bf16_depth_head", "check_fp16_nan_stops", "check_compile_graphs"):
        monkeypatch.setattr(gpu_checks, name, lambda *a, n=name, **k: Claim(n, True, "fine"))
    claims = gpu_checks.run_checks(Path("."), report=lines.append)
    assert [c.holds for c in claims] == [False, True, True, True, None, True]
    assert lines[0].startswith("does not hold: --deterministic: two runs give bit-identical weights: RuntimeError: "
                               "upsample_bilinear2d_backward_out_cuda does not have")
    assert "more" not in lines[0] and lines[4].startswith("skipped: DDP")


def test_the_bf16_depth_head_check_holds_on_cpu_autocast():
    """The check the script runs on CUDA, here on CPU autocast (LEAD's float32 depth head)."""
    claim = gpu_checks.check_bf16_depth_head("cpu")
    assert claim.holds, claim.line()
    assert "depth head output float32, network output float32" in claim.figure


def test_the_bf16_check_does_not_hold_for_a_head_in_bfloat16(monkeypatch):
    """What the check would report if the metric head ran under autocast."""
    from wordepth.models.decoder import MetricMLP

    monkeypatch.setattr(MetricMLP, "forward", lambda self, x: self.ln(x.flatten(1)))
    claim = gpu_checks.check_bf16_depth_head("cpu")
    assert claim.holds is False, claim.line()


def test_an_unknown_compile_backend_is_a_usage_error_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_checks.main(["--compile_backend", "inductr"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'inductr'" in err and "aot_eager" in err
