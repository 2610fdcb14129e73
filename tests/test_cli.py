"""The command line (`python -m qwen3_rs` and the `qwen3-rs` script): argument errors and missing models on
any machine; generate and chat on a tiny fixture model with a tiny tokenizer on a GPU, their output equal
to the Python API's."""

import os
import shutil
import subprocess
import sys

import pytest


def cli(*args, stdin=None, env=None):
    """Runs the CLI; stdout is decoded by hand so that "\\r" and other control characters survive."""
    e = dict(os.environ, PYTHONIOENCODING="utf-8", **(env or {}))
    r = subprocess.run([sys.executable, "-m", "qwen3_rs", *args], input=stdin, capture_output=True, timeout=600, env=e)
    return r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8", "replace")


def test_help_lists_commands():
    rc, out, _ = cli("--help")
    assert rc == 0 and all(c in out for c in ("generate", "chat", "bench"))
    rc, out, _ = cli("generate", "--help")
    for flag in ("--prompt", "--do-sample", "--temperature", "--top-k", "--top-p", "--min-p", "--seed", "--stop"):
        assert flag in out
    rc, out, _ = cli("chat", "--help")
    assert rc == 0 and "--system" in out and "--no-thinking" in out


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--top-p", "1.5"], "top_p"),
        (["--temperature", "0"], "temperature"),
        (["--min-p", "-1"], "min_p"),
        (["--top-k", "-3"], "top_k"),
        (["--repetition-penalty", "0"], "repetition_penalty"),
        (["--stop", ""], "--stop"),
    ],
)
def test_bad_sampling_flags_fail_before_loading(tmp_path, flags, word):
    rc, _, err = cli("generate", "--model", str(tmp_path / "none"), "--prompt", "x", *flags)
    assert rc == 2 and word in err and "config.json" not in err


def test_missing_model_directory(tmp_path):
    rc, out, err = cli("generate", "--model", str(tmp_path / "none"), "--prompt", "x")
    assert rc == 1 and "config.json" in err and "not found" in err and out == ""


def test_repo_id_offline_and_not_cached(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    rc, _, err = cli("chat", "--model", "qwen3-rs-tests/not-cached", env=env)
    assert rc == 1 and "qwen3-rs-tests/not-cached" in err
    assert "not in the local Hugging Face cache" in err or "pip install huggingface_hub" in err


def test_console_script():
    exe = shutil.which("qwen3-rs")
    if exe is None or not os.path.dirname(exe) == os.path.dirname(sys.executable):
        pytest.skip("the qwen3-rs script of this environment is not installed")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "generate" in r.stdout


# ---------------------------------------------------------------- on a GPU


@pytest.fixture(scope="module")
def model_dir(tokenizer_model_dir):
    return tokenizer_model_dir


@pytest.fixture(scope="module")
def engine(model_dir):
    import qwen3_rs

    return qwen3_rs.Qwen3Engine(model_dir, max_seq_len=256)


COMMON = ["--max-seq-len", "256", "--no-progress"]


@pytest.mark.gpu
def test_generate(model_dir, engine):
    rc, out, err = cli(
        "generate", "--model", model_dir, "--prompt", "Hello", "--max-new-tokens", "20", "--ignore-eos", *COMMON
    )
    assert rc == 0, err
    assert out == engine.generate_text("Hello", 20, ignore_eos=True) + "\n"
    assert "tok/s" in err and "20 new tokens" in err and "5 prompt tokens" in err


@pytest.mark.gpu
def test_generate_sampled_and_stopped(model_dir, engine):
    opts = ["--do-sample", "--temperature", "1.3", "--top-k", "40", "--top-p", "0.95", "--seed", "17"]
    rc, out, err = cli("generate", "--model", model_dir, "--prompt", "Hello", "--max-new-tokens", "24", *opts, *COMMON)
    assert rc == 0, err
    sampling = dict(do_sample=True, temperature=1.3, top_k=40, top_p=0.95, seed=17)
    text = engine.generate_text("Hello", 24, **sampling)
    assert out == text + "\n"
    if len(text) >= 8:
        stop = text[5:8]
        rc, out, err = cli(
            "generate",
            "--model",
            model_dir,
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "24",
            *opts,
            "--stop",
            stop,
            *COMMON,
        )
        assert rc == 0, err
        assert out == text[: text.find(stop)] + "\n"


@pytest.mark.gpu
def test_generate_with_chat_template_and_progress(model_dir, engine):
    rc, out, err = cli(
        "generate",
        "--model",
        model_dir,
        "--prompt",
        "Hi",
        "--chat-template",
        "--no-thinking",
        "--max-new-tokens",
        "12",
        "--max-seq-len",
        "256",
        "-v",
    )
    assert rc == 0, err
    messages = [{"role": "user", "content": "Hi"}]
    assert out == engine.chat(messages, 12, enable_thinking=False) + "\n"
    assert "qwen3_rs: loaded" in err and "kernels ready" in err  # -v logs load events


@pytest.mark.gpu
def test_chat(model_dir, engine):
    rc, out, err = cli(
        "chat",
        "--model",
        model_dir,
        "--no-thinking",
        "--max-new-tokens",
        "10",
        "--system",
        "Be brief.",
        *COMMON,
        stdin=b"Hi there\n\n/reset\nAgain\n/exit\nnot read\n",
    )
    assert rc == 0, err
    system = {"role": "system", "content": "Be brief."}
    first = engine.chat([system, {"role": "user", "content": "Hi there"}], 10, enable_thinking=False)
    second = engine.chat([system, {"role": "user", "content": "Again"}], 10, enable_thinking=False)
    assert out == first + "\n" + second + "\n"
    assert err.count("tok/s") == 2


@pytest.mark.gpu
def test_chat_keeps_history(model_dir, engine):
    rc, out, err = cli("chat", "--model", model_dir, "--max-new-tokens", "8", "--no-thinking", *COMMON, stdin=b"a\nb\n")
    assert rc == 0, err
    first = engine.chat([{"role": "user", "content": "a"}], 8, enable_thinking=False)
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "b"},
    ]
    second = engine.chat(history, 8, enable_thinking=False)
    assert out == first + "\n" + second + "\n"
