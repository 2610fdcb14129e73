"""CPU tests of the pure-Python layer: Hub repo-id resolution and its errors, stop-string matching, load
progress and logging."""

import io
import logging
import sys
import types

import pytest
from qwen3_rs import errors
from qwen3_rs.hub import looks_like_repo_id, resolve_model
from qwen3_rs.progress import LoadProgress
from qwen3_rs.stopping import StopMatcher

# ---------------------------------------------------------------- hub


def fake_hub(monkeypatch, result=None, exc=None):
    calls = []
    mod = types.ModuleType("huggingface_hub")

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append(dict(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns))
        if exc is not None:
            raise exc
        return result

    mod.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", mod)
    return calls


def test_local_directory_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never needed for a directory
    assert resolve_model(tmp_path) == str(tmp_path)
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_other_paths_pass_through(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    for p in ("/no/such/dir", "./rel/dir", "../x/y", "no-slash", "a/b/c", str(tmp_path / "missing")):
        assert not looks_like_repo_id(p)
        assert resolve_model(p) == p
    assert looks_like_repo_id("Qwen/Qwen3-8B-AWQ")


def test_repo_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(errors.ModelNotFoundError, match="pip install huggingface_hub") as info:
        resolve_model("Qwen/Qwen3-8B-AWQ")
    assert isinstance(info.value, FileNotFoundError)
    assert "Qwen/Qwen3-8B-AWQ" in str(info.value)


def test_repo_id_is_downloaded(monkeypatch, tmp_path):
    calls = fake_hub(monkeypatch, result=str(tmp_path))
    assert resolve_model("Qwen/Qwen3-8B-AWQ", revision="v1") == str(tmp_path)
    assert calls[0]["repo_id"] == "Qwen/Qwen3-8B-AWQ" and calls[0]["revision"] == "v1"
    assert "*.safetensors" in calls[0]["allow_patterns"] and "*.json" in calls[0]["allow_patterns"]


def test_repo_id_offline_and_not_cached(monkeypatch):
    class LocalEntryNotFoundError(Exception):
        pass

    fake_hub(monkeypatch, exc=LocalEntryNotFoundError("outgoing traffic has been disabled"))
    with pytest.raises(errors.ModelNotFoundError, match="offline") as info:
        resolve_model("Qwen/Qwen3-8B-AWQ")
    assert "not in the local Hugging Face cache" in str(info.value)
    assert "Qwen/Qwen3-8B-AWQ" in str(info.value)


def test_repo_id_not_on_the_hub(monkeypatch):
    class RepositoryNotFoundError(Exception):
        pass

    fake_hub(monkeypatch, exc=RepositoryNotFoundError("404 Client Error"))
    with pytest.raises(errors.ModelNotFoundError, match="could not be fetched.*404"):
        resolve_model("nobody/nothing", revision="main")


def test_real_huggingface_hub_offline(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(errors.ModelNotFoundError, match="not a local directory"):
        resolve_model("qwen3-rs-tests/does-not-exist")


def test_engine_reports_hub_errors_before_touching_a_gpu(monkeypatch):
    import qwen3_rs

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(errors.ModelNotFoundError, match="huggingface_hub"):
        qwen3_rs.Qwen3Engine("Qwen/Qwen3-8B-AWQ")


def test_engine_missing_directory(tmp_path):
    import qwen3_rs

    with pytest.raises(errors.ModelNotFoundError, match="config.json"):
        qwen3_rs.Qwen3Engine(tmp_path / "nothing-here")


# ---------------------------------------------------------------- stop strings


def run_matcher(stops, pieces):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, stopped = m.feed(p)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + m.flush(), False


@pytest.mark.parametrize(
    "stops, pieces, expected",
    [
        (["END"], ["abc", "dE", "N", "Dxyz"], ("abcd", True)),
        (["END"], ["abc", "dE", "N"], ("abcdEN", False)),
        (["END"], ["abcENDx"], ("abc", True)),
        (["\n\n", "###"], ["a\n", "b##", "#c"], ("a\nb", True)),
        (["\n\n", "###"], ["a\n", "\nb###"], ("a", True)),
        (["aab"], ["a", "a", "a", "b"], ("a", True)),
        ("stop", ["no", "thing"], ("nothing", False)),
        (["é中"], ["xé", "中y"], ("x", True)),
    ],
)
def test_stop_matcher(stops, pieces, expected):
    assert run_matcher(stops, pieces) == expected


def test_stop_matcher_holds_back_only_possible_starts():
    m = StopMatcher(["END"])
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("x") == ("Ex", False)
    assert m.feed("EN") == ("", False)
    assert m.flush() == "EN"


def test_stop_matcher_rejects_empty():
    with pytest.raises(errors.InvalidArgumentError, match="stop_strings"):
        StopMatcher(["ok", ""])
    with pytest.raises(ValueError):
        StopMatcher([3])


# ---------------------------------------------------------------- progress and logging


def test_load_progress_draws_and_logs(caplog):
    out = io.StringIO()
    p = LoadProgress(show=True, stream=out)
    with caplog.at_level(logging.DEBUG, logger="qwen3_rs"):
        p("kernel", 1, 2, "rms_norm-hidden256", False, 0.5)
        p("kernel", 2, 2, "argmax-n512", True, 0.001)
        for i in range(1, 4):
            p("layers", i, 3, "", False, 0.0)
        p.close()
    text = out.getvalue()
    assert "[qwen3-rs] compiling kernels" in text and "2/2" in text
    assert "[qwen3-rs] loading weights" in text and "3/3" in text
    assert text.endswith("\n") and text.count("\n") == 2
    messages = [r.getMessage() for r in caplog.records]
    assert "compiled kernel rms_norm-hidden256 in 0.50 s" in messages
    assert any("argmax-n512 ready (cached)" in m for m in messages)
    assert any(m.startswith("2 kernels ready: 1 compiled, 1 from the cache") for m in messages)
    assert any(m.startswith("loaded 3 layers") for m in messages)


def test_load_progress_is_quiet_off_a_terminal():
    out = io.StringIO()
    p = LoadProgress(stream=out)
    p("layers", 1, 2, "", False, 0.0)
    p.close()
    assert out.getvalue() == ""


def test_load_progress_close_ends_a_broken_line():
    out = io.StringIO()
    p = LoadProgress(show=True, stream=out)
    p("layers", 1, 3, "", False, 0.0)
    p.close()
    assert out.getvalue().endswith("1/3\n")
