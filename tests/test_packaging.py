"""The package as a user gets it: the wheel builds, installs into a fresh virtual environment and imports
there (no GPU needed), and the command line answers."""

import glob
import os
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kw)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    maturin = run([sys.executable, "-m", "maturin", "--version"])
    if maturin.returncode != 0:
        pytest.skip("maturin is not installed (pip install maturin)")
    build = run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "-o", str(tmp_path / "dist")], cwd=ROOT
    )
    assert build.returncode == 0, build.stderr[-4000:]
    wheels = glob.glob(str(tmp_path / "dist" / "qwen3_rs-*-abi3-*.whl"))
    assert len(wheels) == 1, wheels  # one abi3 wheel serves every Python >= 3.9
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    # --no-deps: the import needs nothing else; dependencies are declared in the wheel's metadata.
    install = run([python, "-m", "pip", "install", "--quiet", "--no-deps", wheels[0]])
    assert install.returncode == 0, install.stderr[-4000:]
    probe = run(
        [
            python,
            "-c",
            "import qwen3_rs, qwen3_rs.errors as e; "
            "assert issubclass(e.ModelFormatError, ValueError); "
            "print(qwen3_rs.__version__, qwen3_rs.Qwen3Engine.__name__)",
        ],
        cwd=str(tmp_path),
    )
    assert probe.returncode == 0, probe.stderr
    assert "Qwen3Engine" in probe.stdout
    meta = run([python, "-m", "pip", "show", "qwen3-rs"])
    assert "Requires: numpy, nvidia-cuda-nvrtc, tokenizers" in meta.stdout, meta.stdout


def test_command_line_help():
    out = run([sys.executable, "-m", "qwen3_rs", "--help"])
    assert out.returncode == 0 and all(c in out.stdout for c in ("generate", "chat", "bench")), out.stderr
    out = run([sys.executable, "-m", "qwen3_rs", "bench", "--help"])
    assert out.returncode == 0 and "--kv-cache-dtype" in out.stdout and "--multi-gpu" in out.stdout


def test_command_line_rejects_unknown_command():
    out = run([sys.executable, "-m", "qwen3_rs", "frobnicate"])
    assert out.returncode == 2 and "invalid choice" in out.stderr
