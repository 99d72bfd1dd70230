"""Tests for ppl.inference.resampling.

* unbiasedness of every scheme (E[count_i] = M w_i) at N = 10, 1000 and 1e6, with tolerances
  taken from the Monte Carlo error of the repetitions (fixed seeds);
* exact properties (indices in range, zero weights never drawn, per-scheme count bounds) on
  hypothesis-generated log weights and on adversarial float32 inputs up to N = 1e7;
* ess / normalize, and the error messages engines rely on.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ppl.inference import resampling as rs
from ppl.inference.resampling import (
    SCHEMES,
    ZeroWeightError,
    check_log_weights,
    ess,
    normalize,
    resample,
)

SCHEME_NAMES = sorted(SCHEMES)
NEG_INF = float("-inf")

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
)


def counts_of(ancestors: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of the n particles appears, per system: shape ancestors.shape[:-1] + (n,)."""
    out = torch.zeros(ancestors.shape[:-1] + (n,), dtype=torch.float64, device=ancestors.device)
    return out.scatter_add_(-1, ancestors, torch.ones_like(ancestors, dtype=torch.float64))


def probs(log_weights: torch.Tensor) -> torch.Tensor:
    """Normalised weights in float64 (the reference the counts are compared with)."""
    return torch.softmax(log_weights.double(), dim=-1)


def standard_error(counts: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over repetitions (dim 0) of integer counts.

    From the variance across repetitions, floored by f (1 - f), f = frac(expected): no integer
    random variable with that mean has a smaller variance (the two-point law on floor/ceil is the
    extreme). The floor matters for rare events, e.g. a systematic count that is 1 with
    probability 0.996: 500 repetitions may all give 1 and a sample variance of 0.
    """
    frac = expected - torch.floor(expected)
    var = torch.maximum(counts.var(0), frac * (1 - frac))
    return torch.sqrt(var / counts.shape[0])


def assert_mean_close(counts: torch.Tensor, expected: torch.Tensor, z: float, what: str) -> None:
    """|mean over repetitions (dim 0) - expected| <= z standard errors, for every entry."""
    tol = z * standard_error(counts, expected) + 1e-9
    err = (counts.mean(0) - expected).abs()
    worst = int(torch.argmax(err / tol))
    assert bool((err <= tol).all()), (
        f"{what}: mean count {counts.mean(0).flatten()[worst]:.6g} vs expected "
        f"{expected.flatten()[worst]:.6g} (tolerance {tol.flatten()[worst]:.3g}) at flat index {worst}"
    )


# --------------------------------------------------------------------------------------------
# Unbiasedness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
@pytest.mark.parametrize(
    "n, num_samples, reps",
    [(10, None, 4000), (10, 7, 4000), (1000, None, 1000), (1000, 1500, 500)],
)
def test_unbiased_per_particle(scheme, n, num_samples, reps):
    g = torch.Generator().manual_seed(1000 + n + (num_samples or 0))
    lw = 1.5 * torch.randn(n, generator=g, dtype=torch.float64)
    lw[3::7] = NEG_INF  # some zero weights: expected count 0
    m = num_samples or n
    anc = resample(lw.expand(reps, n), scheme, num_samples, generator=g)  # reps independent systems
    assert anc.shape == (reps, m)
    counts = counts_of(anc, n)
    assert bool((counts.sum(-1) == m).all())
    assert bool((counts[:, 3::7] == 0).all())
    assert_mean_close(counts, m * probs(lw), z=5.0, what=f"{scheme} N={n} M={m}")


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_unbiased_batched(scheme):
    """Three different systems at once, (reps, 3, N): each row is resampled from its own weights."""
    n, reps = 50, 2000
    g = torch.Generator().manual_seed(7)
    lw = torch.stack(
        [
            torch.randn(n, generator=g, dtype=torch.float64),  # moderate spread
            torch.where(torch.arange(n) % 3 == 0, 0.0, NEG_INF).double(),  # ties and zeros
            5.0 * torch.randn(n, generator=g, dtype=torch.float64),  # a few dominant particles
        ]
    )
    anc = resample(lw.expand(reps, 3, n), scheme, generator=g)
    assert anc.shape == (reps, 3, n)
    counts = counts_of(anc, n)
    assert_mean_close(counts, n * probs(lw), z=5.0, what=f"{scheme} batched")


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_unbiased_buckets_one_million(scheme):
    """N = M = 1e6 in float32, 8 repetitions, counts aggregated over 16 fixed index sets.

    Sets ``i % 8 == b`` catch index shifts (mass moving to a neighbour); sets by weight octile
    catch a bias towards heavy or light particles. The tolerance is a t quantile (7 degrees of
    freedom, family-wise level 1e-3 over all sets and schemes) times the standard error across
    repetitions; with so few repetitions that is about 11 standard errors, still far below the
    shift an index or weight-ordering bug causes. The first repetition is also checked against
    the scheme's exact per-particle count bounds.
    """
    n, reps = 10**6, 8
    g = torch.Generator().manual_seed(11)
    lw = (2.0 * torch.randn(n, generator=g)).float()
    lw[::1001] = NEG_INF
    w = probs(lw)
    order = torch.argsort(w)
    octile = torch.empty(n, dtype=torch.int64)
    octile[order] = torch.arange(n) * 8 // n
    sets = [torch.arange(n) % 8 == b for b in range(8)] + [octile == b for b in range(8)]
    member = torch.stack(sets).double()  # (16, N)

    anc = resample(lw.expand(reps, n), scheme, generator=g)
    assert anc.shape == (reps, n) and anc.dtype == torch.int64
    counts = counts_of(anc, n)  # (reps, N)
    assert bool((counts[:, ::1001] == 0).all())
    set_counts = counts @ member.T  # (reps, 16)
    expected = n * (member @ w)

    q = stats.t.isf(1e-3 / 2 / (16 * len(SCHEMES)), df=reps - 1)
    assert_mean_close(set_counts, expected, z=q, what=f"{scheme} N=1e6 index sets")

    assert_count_bounds(scheme, counts[0], n * w)


def assert_count_bounds(scheme: str, count: torch.Tensor, mw: torch.Tensor, slack: float = 1e-6) -> None:
    """Per-particle guarantees of the low-variance schemes (``mw`` = M w_i, exact in float64)."""
    if scheme == "systematic":  # count is floor(M w_i) or ceil(M w_i)
        assert float((count - mw).abs().max()) < 1 + slack
    elif scheme == "stratified":
        assert float((count - mw).abs().max()) < 2 + slack
    elif scheme == "residual":  # at least the deterministic copies
        assert bool((count >= torch.floor(mw - slack)).all())


# --------------------------------------------------------------------------------------------
# Exact properties on arbitrary input (hypothesis)
# --------------------------------------------------------------------------------------------

log_weight_entries = st.one_of(
    st.floats(-50.0, 50.0),
    st.floats(-1e4, 1e4),
    st.sampled_from([NEG_INF, 0.0, 1e4, -1e4, 700.0, -745.0, 88.0, -104.0]),
)


@st.composite
def resampling_cases(draw):
    values = draw(st.lists(log_weight_entries, min_size=1, max_size=50))
    if all(v == NEG_INF for v in values):
        values[draw(st.integers(0, len(values) - 1))] = draw(st.floats(-1e4, 1e4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    lw = torch.tensor(values, dtype=dtype)
    if draw(st.booleans()):  # a batch of two systems: the vector and its reversal
        lw = torch.stack([lw, lw.flip(0)])
    num_samples = draw(st.one_of(st.none(), st.integers(0, 100)))
    seed = draw(st.integers(0, 2**32 - 1))
    return lw, num_samples, seed


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(case=resampling_cases())
def test_properties(scheme, case):
    lw, num_samples, seed = case
    n = lw.shape[-1]
    m = n if num_samples is None else num_samples
    anc = resample(lw, scheme, num_samples, generator=torch.Generator().manual_seed(seed))

    assert anc.shape == lw.shape[:-1] + (m,)
    assert anc.dtype == torch.int64 and anc.device == lw.device
    if m == 0:
        return
    assert int(anc.min()) >= 0 and int(anc.max()) < n
    assert bool((torch.gather(lw, -1, anc) > NEG_INF).all()), "a zero-weight particle was drawn"
    counts = counts_of(anc, n)
    assert bool((counts.sum(-1) == m).all())
    mw = m * probs(lw)
    for row in range(counts.reshape(-1, n).shape[0]):
        assert_count_bounds(scheme, counts.reshape(-1, n)[row], mw.reshape(-1, n)[row])


# --------------------------------------------------------------------------------------------
# Adversarial float32 input at large N: never out of range, never a zero-weight particle
# --------------------------------------------------------------------------------------------


def adversarial(pattern: str, n: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if pattern == "one_huge":  # one weight 1, the rest exp(-130) (f32 would underflow them)
        lw = torch.full((n,), -80.0)
        lw[n // 3] = 50.0
    elif pattern == "ties":  # all equal: cdf values sit exactly on the comb points k / N
        lw = torch.zeros(n)
    elif pattern == "ties_and_zeros":  # exact ties separated by zero weights, zeros at both ends
        lw = torch.where(torch.rand(n, generator=g) < 0.5, 0.0, NEG_INF)
        lw[:5] = NEG_INF
        lw[-5:] = NEG_INF
    elif pattern == "last_zero":  # spread-out weights, last particle has zero weight
        lw = 3.0 * torch.randn(n, generator=g)
        lw[-1] = NEG_INF
    else:
        raise ValueError(pattern)
    return lw.float().to(device)


def check_safe(lw: torch.Tensor, anc: torch.Tensor) -> None:
    n = lw.shape[-1]
    assert anc.dtype == torch.int64 and anc.device == lw.device and anc.shape[-1] == n
    assert int(anc.min()) >= 0 and int(anc.max()) <= n - 1
    assert bool((lw[anc] > NEG_INF).all()), "a zero-weight particle was drawn"


PATTERNS = ["one_huge", "ties", "ties_and_zeros", "last_zero"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_float32_adversarial_1e6(scheme, pattern):
    lw = adversarial(pattern, 10**6, "cpu")
    anc = resample(lw, scheme, generator=torch.Generator().manual_seed(0))
    check_safe(lw, anc)
    if pattern == "ties" and scheme in ("systematic", "stratified", "residual"):
        # M = N equal weights: every particle exactly once (each count is M w_i = 1)
        assert torch.equal(anc, torch.arange(10**6))


def test_float32_adversarial_1e7_cpu():
    """The default scheme at N = 1e7 on CPU (about a second), on ties with zeros at both ends."""
    lw = adversarial("ties_and_zeros", 10**7, "cpu")
    check_safe(lw, resample(lw, "systematic", generator=torch.Generator().manual_seed(0)))


@pytest.mark.slow
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_float32_adversarial_1e7_cpu_all(scheme, pattern):
    lw = adversarial(pattern, 10**7, "cpu")
    check_safe(lw, resample(lw, scheme, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_float32_adversarial_1e7_gpu(scheme, pattern, device):
    lw = adversarial(pattern, 10**7, device)
    gen = torch.Generator(device=device).manual_seed(0)
    anc = resample(lw, scheme, generator=gen)
    check_safe(lw, anc)
    if pattern == "ties" and scheme == "systematic":
        assert torch.equal(anc, torch.arange(10**7, device=device))


def test_boundary_uniforms():
    """Uniforms at the extremes of [0, 1) (which the public API cannot force) stay safe.

    Weights with exact ties and zeros at both ends; u0 = 0 puts comb points exactly on CDF
    values, u0 = 1 - 2^-53 makes ``M - u0`` round to ``M - 1``.
    """
    n = m = 12
    w = torch.tensor([0, 1, 1, 0, 0, 2, 0, 1, 1, 4, 0, 0], dtype=torch.float64)[None]
    largest_below_one = 1.0 - 2.0**-53
    for u in (0.0, largest_below_one, 0.5):
        c, total, scratch = rs._cumulative(w.clone())
        sys_l = rs._systematic_counts(c, total, torch.tensor([[u]], dtype=torch.float64), m, scratch)
        c, total, scratch = rs._cumulative(w.clone())
        strata = torch.full((1, m + 1), u, dtype=torch.float64)
        strata[:, m] = 2.0
        str_l = rs._stratified_counts(c, total, strata, m, scratch)
        for cum in (sys_l, str_l):
            assert int(cum[0, -1]) == m and bool((cum.diff() >= 0).all())
            anc = rs._ancestors(cum.clone(), m, ())
            assert int(anc.min()) >= 0 and int(anc.max()) < n
            assert bool((w[0, anc] > 0).all())
            assert float((counts_of(anc, n) - m * w[0] / w.sum()).abs().max()) < 2


# --------------------------------------------------------------------------------------------
# ess / normalize
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ess_equal_weights(dtype):
    for n in (1, 7, 1000, 10**5):
        for offset in (0.0, -1e4, 1e4):
            assert float(ess(torch.full((n,), offset, dtype=dtype))) == pytest.approx(n, rel=1e-5)


def test_ess_single_nonzero_and_all_zero():
    lw = torch.full((2, 4, 9), NEG_INF)
    lw[0, :, 3] = 12.0
    out = ess(lw)
    assert out.shape == (2, 4)
    assert torch.allclose(out[0], torch.ones(4))
    assert bool((out[1] == 0).all())  # all weights zero: ESS 0, not NaN


def test_ess_matches_formula_batched():
    g = torch.Generator().manual_seed(5)
    lw = 3.0 * torch.randn(4, 3, 20, generator=g, dtype=torch.float64)
    lw[0, 0, :7] = NEG_INF
    w = torch.exp(lw)
    assert torch.allclose(ess(lw), w.sum(-1) ** 2 / (w**2).sum(-1), rtol=1e-10)
    assert torch.allclose(ess(lw.float()), (w.sum(-1) ** 2 / (w**2).sum(-1)).float(), rtol=1e-5)


def test_normalize():
    lw = torch.tensor([[1.0, 2.0, NEG_INF], [1e4, 1e4, 1e4]])
    out = normalize(lw)
    assert torch.allclose(torch.logsumexp(out, -1), torch.zeros(2), atol=1e-6)
    assert out[0, 2] == NEG_INF
    assert torch.allclose(out[1], torch.full((3,), -math.log(3)))


# --------------------------------------------------------------------------------------------
# Errors, API details
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_nan_rejected(scheme):
    lw = torch.zeros(2, 6)
    lw[1, 4] = float("nan")
    lw[1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"log_weights contains 2 NaN.*\(1, 4\)"):
        resample(lw, scheme)


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_all_zero_weights_rejected(scheme):
    lw = torch.zeros(3, 5)
    lw[2] = NEG_INF
    with pytest.raises(ZeroWeightError, match="all 5 particles have zero weight"):
        resample(lw, scheme)


def test_check_log_weights():
    check_log_weights(torch.tensor([0.0, NEG_INF, -1e30]))
    with pytest.raises(ValueError, match=r"\+inf"):
        check_log_weights(torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="NaN"):
        check_log_weights(torch.tensor([float("nan")]), what="incremental weights")
    with pytest.raises(ZeroWeightError) as info:
        check_log_weights(torch.full((4,), NEG_INF))
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="N >= 1"):
        check_log_weights(torch.zeros(3, 0))


def test_unknown_scheme():
    with pytest.raises(ValueError, match="scheme") as info:
        resample(torch.zeros(4), "sytematic")
    for name in SCHEMES:
        assert name in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        resample(torch.zeros(4), num_samples=-1)
    with pytest.raises(TypeError, match="floating"):
        resample(torch.zeros(4, dtype=torch.int64))


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_generator_reproducible_and_validate_flag(scheme):
    lw = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    a = resample(lw, scheme, generator=torch.Generator().manual_seed(1))
    b = resample(lw, scheme, generator=torch.Generator().manual_seed(1), validate=False)
    c = resample(lw, scheme, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a.diff(dim=-1) >= 0).all())  # documented: sorted ancestors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_grad_input(dtype):
    lw = torch.randn(2, 30).to(dtype)
    lw[:, 0] = NEG_INF
    anc = resample(lw, "systematic")
    assert anc.shape == (2, 30) and bool((anc > 0).all())
    x = torch.randn(10, requires_grad=True)
    assert resample(x, "residual").shape == (10,)


def test_empty_batch_and_zero_samples():
    for scheme in SCHEME_NAMES:
        assert resample(torch.zeros(0, 5), scheme).shape == (0, 5)
        assert resample(torch.zeros(2, 5), scheme, num_samples=0).shape == (2, 0)
        assert torch.equal(resample(torch.zeros(1), scheme, num_samples=3), torch.zeros(3, dtype=torch.int64))
