"""Check, before anything is published, that each structured twin computes what its original
signature computes: on random requests at several N and on the sample requests, run the
original on the flat form and the twin on the structured form, and compare every output.

Floating outputs may differ by rounding only (the twin sums some products in another order,
and the session's optimizer fuses its ops differently): at most `TOLERANCE` relative to the
output's largest magnitude. Other dtypes must be equal. Shapes must be equal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from saved_model_tools.errors import ConversionError
from saved_model_tools.requests import Domains, Request
from saved_model_tools.savedmodel import Loaded

SIZES = (1, 7, 100)
SEEDS = (0, 1)
TOLERANCE = {tf.float32: 1e-5, tf.float64: 1e-9, tf.float16: 1e-2, tf.bfloat16: 1e-2}
EMPTY_N = 0


def relative_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max |expected|: the error relative to the output's magnitude
    (rounding in a sum is relative to its terms, not to a result that cancels to near 0).
    NaN and infinities must sit at the same places."""
    if got.shape != expected.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    got64, exp64 = got.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(exp64)
    if not np.array_equal(finite, np.isfinite(got64)):
        return float("inf")
    if not np.array_equal(got64[~finite], exp64[~finite], equal_nan=True):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(float(np.max(np.abs(exp64[finite]))), float(np.finfo(np.float32).tiny))
    return float(np.max(np.abs(got64[finite] - exp64[finite]))) / scale


def compare(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output: the relative difference (floats) or 0/inf (equal or not, other dtypes)."""
    out = {}
    for key, want in expected.items():
        have = np.asarray(got[key])
        want = np.asarray(want)
        if want.dtype.kind in "fc":
            out[key] = relative_diff(have, want)
        else:
            out[key] = 0.0 if have.shape == want.shape and np.array_equal(have, want) else np.inf
    return out


def verify(
    loaded: Loaded,
    original: str,
    twin: str,
    user: list[str],
    domains: Domains,
    samples: list[Request],
    progress: Callable[[float], None] | None = None,
) -> float:
    """Raises ConversionError naming the output and the difference if the twin differs from
    the original; returns the largest relative difference seen."""
    dtypes = {k: tf.as_dtype(v.dtype) for k, v in loaded.signatures[original].outputs.items()}
    planned = [(n, seed) for seed in SEEDS for n in SIZES]
    worst = 0.0
    for request in [*(None for _ in planned), *samples, None]:
        if request is None:  # random: drawn late, so that a switch to safe values applies
            n, seed = planned.pop(0) if planned else (EMPTY_N, 9)
            request = domains.request(user, n, seed)
        expected = _expected(loaded, original, request, domains, user)
        if expected is None:
            continue
        request, want = expected
        try:
            got = loaded.run(twin, request.structured)
        except tf.errors.OpError as err:
            raise ConversionError(
                f"{twin} fails on a {request.origin} request with N={request.n} that {original} "
                f"takes: {err.message.splitlines()[0]}"
            ) from err
        for key, diff in compare(got, want).items():
            limit = TOLERANCE.get(dtypes[key], 0.0)
            if not diff <= limit:
                raise ConversionError(
                    f"{twin} differs from {original} in output {key!r} by {diff:.3g} (relative; "
                    f"limit {limit:g}) on a {request.origin} request with N={request.n}"
                )
            worst = max(worst, diff)
        if progress is not None:
            progress(1 - (len(planned) + 1) / (len(SIZES) * len(SEEDS) + 1))
    return worst


def _expected(loaded: Loaded, original: str, request: Request, domains: Domains, user: list[str]):
    """(request, the original's outputs on its flat form); None to skip the request."""
    try:
        return request, loaded.run(original, request.flat)
    except tf.errors.OpError as err:
        if request.n == EMPTY_N:
            return None  # not every graph takes an empty batch
        if request.origin == "random" and not domains.safe:
            domains.safe = True  # e.g. ids beyond a table: draw zeros and empty strings instead
            return _expected(loaded, original, domains.request(user, request.n, 0), domains, user)
        raise ConversionError(
            f"{original} itself fails on a {request.origin} request with N={request.n} "
            f"({err.message.splitlines()[0]}); give valid sample requests with "
            "--infer-user-inputs so that the conversion can be verified"
        ) from err
