"""CPU tests of sampling: argument checks (no GPU needed), and the model of kernels/sampling.cu (its
thresholds, fixed-point masses, draw order and random numbers) against transformers' distribution."""

import numpy as np
import pytest
import sampling_cases as sc
from sampling_reference import KernelModel, boundary_margin, check_draws, float_keys, radix_select, reference_probs

qwen3_rs = pytest.importorskip("qwen3_rs")
errors = qwen3_rs.errors


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(temperature=0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p must be in (0, 1], got 1.5"),
        (dict(top_p=-0.1), "top_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(repetition_penalty=-1.2), "repetition_penalty"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(eos_token_id=-3), "eos_token_id -3"),
        (dict(eos_token_id=[1, -2]), "eos_token_id -2"),
    ],
)
def test_bad_sampling_values_raise_invalid_argument(kwargs, words):
    with pytest.raises(errors.InvalidArgumentError) as info:
        qwen3_rs.check_sampling(do_sample=True, **kwargs)
    assert isinstance(info.value, ValueError)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(temperature="hot"), "temperature must be a number"),
        (dict(top_k=1.5), "top_k must be an int"),
        (dict(top_k=True), "top_k"),
        (dict(do_sample=1), "do_sample must be a bool"),
        (dict(seed=1.5), "seed"),
        (dict(eos_token_id="x"), "eos_token_id"),
        (dict(temprature=0.5), "temprature"),
    ],
)
def test_bad_sampling_types_raise(kwargs, words):
    with pytest.raises((TypeError, ValueError), match=words):
        qwen3_rs.check_sampling(**kwargs)


def test_good_sampling_values():
    qwen3_rs.check_sampling()
    qwen3_rs.check_sampling(do_sample=True, temperature=0.6, top_k=20, top_p=0.95, min_p=0.0, seed=0)
    qwen3_rs.check_sampling(do_sample=True, temperature=None, top_k=None, top_p=None, min_p=None)
    qwen3_rs.check_sampling(top_p=1.0, min_p=1.0, repetition_penalty=1e-3, seed=2**64 - 1, eos_token_id=[1, 2])
    qwen3_rs.check_sampling(top_k=np.int64(5), temperature=np.float32(0.5), eos_token_id=np.int32(3))


def test_radix_select_is_the_kth_largest():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 3, 5000), [-np.inf] * 5, [7.5] * 4]).astype(np.float32)
    keys = float_keys(x)
    assert np.all(np.diff(keys[np.argsort(x, kind="stable")].astype(np.int64)) >= 0)
    for k in (1, 2, 3, 4, 5, 17, 1000, 5008):
        got = radix_select(keys, np.ones(x.size, np.uint64), k, 0)
        assert got == float_keys(np.sort(x)[::-1][k - 1 : k])[0], k


@pytest.mark.parametrize("name", sorted(sc.CASES))
def test_case_is_away_from_boundaries(name):
    assert boundary_margin(sc.logits(), sc.present(), **sc.CASES[name]) > 2e-3


@pytest.mark.parametrize("name", sorted(sc.CASES))
def test_kernel_model_matches_transformers_distribution(name):
    opts = sc.CASES[name]
    model = KernelModel(sc.logits(), sc.present(), **opts)
    draws = [model.token(sc.SEED, pos) for pos in range(sc.DRAWS)]
    check_draws(draws, reference_probs(sc.logits(), sc.present(), **opts), name)


def test_kernel_model_greedy_with_penalty():
    x, present = sc.logits(), sc.present()
    model = KernelModel(x, present, repetition_penalty=1.8, do_sample=False)
    expected = int(np.argmax(reference_probs(x, present, repetition_penalty=1.8, do_sample=False)))
    assert model.token(1, 2) == expected
    assert expected != int(np.argmax(x))  # the penalty changes the answer here


def test_check_draws_rejects_a_wrong_distribution():
    probs = reference_probs(sc.logits(), temperature=1.0)
    wrong = KernelModel(sc.logits(), temperature=1.1)
    draws = [wrong.token(sc.SEED, pos) for pos in range(sc.DRAWS)]
    with pytest.raises(AssertionError):
        check_draws(draws, probs, "temperature 1.1 vs 1.0")
