"""Compositions corrected for the classifier's own errors (numpy only; no UI, no database).

Counting each cell's predicted class pulls a batch's composition towards the classifier's confusions: with the
paper's LSM confusion matrix a batch truly 20/30/50 reads 13/40/47. If the model's errors are known from
held-out labelled cells (its *error profile*: a confusion matrix of counts, rows the true class, columns the
predicted one), the true mix can be estimated back, assuming only the mix changes between the held-out cells and
the batch (prior shift: the cells of each class look like the held-out cells of that class).

The model (the "Bayesian classify and count" of Ziegler and Czyż 2023; its point estimate is adjusted
classify-and-count, Forman 2008, solved by maximum likelihood on the simplex as in Saerens et al. 2002):

- row ``i`` of the held-out confusion is Multinomial(cells of class ``i``, ``R[i]``), ``R[i]`` the rates at
  which a cell of class ``i`` is predicted as each class;
- the batch's predicted counts are Multinomial(cells, ``pi @ R``), ``pi`` the batch's true composition.

:func:`correct` gives the maximum-likelihood ``pi`` (EM: always a valid composition) and a 95% interval from
the posterior of ``pi`` under uniform priors, sampled with ``R`` drawn from its own posterior (Jeffreys) in
each chain, so the interval carries both the batch's cells and the finite held-out set. A Gibbs sampler with
data augmentation (each predicted count shared out among the true classes) runs all chains at once in numpy.

QuaPy (Moreo, Esuli and Sebastiani) holds the same estimators, but its ``BayesianCC`` needs JAX and NumPyro,
its ``ACC`` fits its own classifier on the training data (the app keeps only the stored confusion counts),
and ``ACC.solve_adjustment`` (least squares on a stored confusion) gives no interval; the 60 lines below are
checked against the closed form and by coverage simulations instead (tests/test_correction.py).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

METHOD = (
    "adjusted classify-and-count by maximum likelihood (EM), 95% interval from the posterior of the composition "
    "with the confusion matrix's own uncertainty (Bayesian classify and count, Gibbs sampling)"
)
# Below this smallest singular value of the rates (for two classes: sensitivity + specificity - 1) the model's
# predictions hardly depend on the true class: the correction would divide by almost nothing.
NOT_IDENTIFIABLE = 0.1
BOUNDARY = 0.005  # a corrected fraction this close to 0 or 1 is on the boundary of valid compositions


@dataclass(frozen=True)
class ErrorProfile:
    """A model's errors on held-out labelled cells: ``counts[i][j]`` cells of true class ``classes[i]`` predicted
    as ``classes[j]``; ``source`` says which cells (the validation split of its training, an evaluation)."""

    classes: tuple[str, ...]
    counts: np.ndarray
    source: str

    @property
    def cells(self) -> int:
        return int(self.counts.sum())

    @property
    def rates(self) -> np.ndarray:
        rows = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, rows, out=np.zeros_like(self.counts, dtype=float), where=rows > 0)

    @property
    def separation(self) -> float:
        """The smallest singular value of the rates: 1 for a perfect model, 0 for one whose predictions do not
        depend on the true class."""
        return float(np.linalg.svd(self.rates, compute_uv=False).min())

    def problem(self) -> str | None:
        """Why this profile cannot correct a composition, in words; None when it can."""
        empty = [c for c, n in zip(self.classes, self.counts.sum(axis=1)) if n == 0]
        if empty:
            return f"the held-out cells hold no {', no '.join(empty)}: the model's errors on them are unknown"
        if self.separation < NOT_IDENTIFIABLE:
            return (
                f"the model's predictions hardly depend on the true class (separation {self.separation:.2f} of 1): "
                "the composition cannot be told from its errors"
            )
        return None

    @classmethod
    def from_metrics(cls, metrics: Mapping, source: str | None = None) -> ErrorProfile | None:
        """The profile in a model's metrics (``classes`` and a square ``confusion_matrix`` of counts, as
        lsm_core.ml.metrics writes them), or None when they hold none."""
        classes, cm = metrics.get("classes"), metrics.get("confusion_matrix")
        if not isinstance(classes, list) or not isinstance(cm, list) or not classes:
            return None
        try:
            counts = np.asarray(cm, dtype=float)
        except (TypeError, ValueError):
            return None
        k = len(classes)
        if counts.shape != (k, k) or not np.all(np.isfinite(counts)) or (counts < 0).any():
            return None
        if not np.array_equal(counts, np.round(counts)) or counts.sum() == 0:
            return None
        return cls(tuple(str(c) for c in classes), counts, source or str(metrics.get("evaluated_on") or ""))


NO_PROFILE = (
    "The model carries no confusion matrix of held-out labelled cells (an imported package, or a model older than "
    "this check), so its compositions are counted, not corrected for its errors. Record one from labelled cells: "
    "`lsm evaluate DATA --model NAME --record`, or Evaluate on the Models page."
)


def model_profile(metrics: Mapping | None) -> ErrorProfile | None:
    """The error profile a model's compositions are corrected with: one recorded for it from labelled cells
    (``metrics["error_profile"]``, see ``lsm evaluate --record``), else its test set's confusion (cells held out
    of training), else its validation set's (held out too, but the temperature was fitted on it)."""
    metrics = metrics or {}
    for part in (metrics.get("error_profile"), metrics.get("test"), metrics):
        if isinstance(part, Mapping):
            profile = ErrorProfile.from_metrics(part)
            if profile is not None:
                return profile
    return None


@dataclass(frozen=True)
class CorrectedShare:
    cls: str
    count: int
    counted: float
    fraction: float
    low: float
    high: float


@dataclass(frozen=True)
class Correction:
    shares: list[CorrectedShare]
    cells: int
    profile_source: str
    profile_cells: int
    method: str = METHOD
    notes: list[str] = field(default_factory=list)
    identifiable: bool = True

    def share(self, cls: str) -> CorrectedShare:
        return next(s for s in self.shares if s.cls == cls)


def maximum_likelihood(predicted: np.ndarray, rates: np.ndarray, tol: float = 1e-10, steps: int = 20_000) -> np.ndarray:
    """The composition ``pi`` (on the simplex) that makes ``predicted`` counts most likely under ``pi @ rates``
    (EM; Saerens, Latinne and Decaestecker 2002 with the confusion matrix as the classifier's posteriors)."""
    k = len(predicted)
    n = predicted.sum()
    if n <= 0:
        return np.full(k, 1.0 / k)
    pi = np.full(k, 1.0 / k)
    for _ in range(steps):
        q = pi @ rates
        share = np.divide(pi[:, None] * rates, q[None, :], out=np.zeros((k, k)), where=q[None, :] > 0)
        new = share @ predicted / n
        if np.abs(new - pi).max() < tol:
            return new
        pi = new
    return pi


def _dirichlet(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    g = rng.standard_gamma(alpha)
    return g / g.sum(axis=-1, keepdims=True)


def posterior_samples(
    predicted: np.ndarray,
    confusion: np.ndarray,
    rng: np.random.Generator,
    chains: int = 400,
    steps: int = 250,
    burn: int = 50,
) -> np.ndarray:
    """Draws of the composition from its posterior: uniform prior on it, Jeffreys prior on each row of rates;
    each chain draws its rates from the held-out counts' posterior and keeps them (the batch's predicted
    counts say next to nothing about the rates beyond the composition)."""
    k = len(predicted)
    rates = _dirichlet(rng, np.broadcast_to(confusion + 0.5, (chains, k, k)).copy())
    pi = _dirichlet(rng, np.ones((chains, k)))
    counts = predicted.astype(np.int64)
    kept = []
    for step in range(steps):
        joint = pi[:, :, None] * rates  # chain, true, predicted
        joint /= joint.sum(axis=1, keepdims=True)
        alloc = np.zeros((chains, k))
        for j in range(k):
            if counts[j]:
                alloc += rng.multinomial(counts[j], joint[:, :, j])
        pi = _dirichlet(rng, 1.0 + alloc)
        if step >= burn and step % 2 == 0:
            kept.append(pi)
    return np.concatenate(kept)


def _seed(predicted: np.ndarray, confusion: np.ndarray) -> int:
    """The same numbers give the same interval (a page reloaded, a workbook written again)."""
    digest = hashlib.sha256(np.concatenate([predicted, confusion.ravel()]).astype(np.int64).tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


@functools.lru_cache(maxsize=512)
def _interval(predicted: tuple[int, ...], confusion: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The posterior's central 95% per class, sampled once per set of numbers (the Results page reads its batch
    again at every rerun: the sampling is the slow part, a fifth of a second)."""
    counts, k = np.array(predicted, dtype=np.int64), len(predicted)
    matrix = np.array(confusion, dtype=float).reshape(k, k)
    draws = posterior_samples(counts, matrix, np.random.default_rng(_seed(counts, matrix)))
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return tuple(low.tolist()), tuple(high.tolist())


def correct(counts: Mapping[str, int], classes: Sequence[str], profile: ErrorProfile) -> Correction:
    """The batch's composition corrected for ``profile``'s errors, per class of ``classes`` (the batch's model's
    order; the profile's classes must be the same set). ``counts``: cells per predicted class."""
    if set(profile.classes) != set(classes) or len(profile.classes) != len(classes):
        raise ValueError(f"the error profile's classes {list(profile.classes)} are not the batch's {list(classes)}")
    order = [profile.classes.index(c) for c in classes]
    confusion = profile.counts[np.ix_(order, order)]
    predicted = np.array([int(counts.get(c, 0)) for c in classes], dtype=np.int64)
    n = int(predicted.sum())
    reordered = ErrorProfile(tuple(classes), confusion, profile.source)
    problem = reordered.problem()
    notes = [f"Not corrected: {problem}."] if problem else []
    if n == 0:
        shares = [CorrectedShare(c, 0, 0.0, float("nan"), float("nan"), float("nan")) for c in classes]
        return Correction(
            shares, 0, profile.source, profile.cells, notes=notes + ["No cells counted."], identifiable=False
        )
    point = maximum_likelihood(predicted.astype(float), reordered.rates)
    low, high = (np.array(v) for v in _interval(tuple(predicted.tolist()), tuple(confusion.ravel().tolist())))
    # the uniform prior keeps every draw off the boundary: where the likelihood's best composition is on it (a
    # class at 0), the interval is extended to reach it, so that it holds its own estimate
    low, high = np.minimum(low, point), np.maximum(high, point)
    shares = [
        CorrectedShare(c, int(predicted[i]), float(predicted[i] / n), float(point[i]), float(low[i]), float(high[i]))
        for i, c in enumerate(classes)
    ]
    if not problem:
        edge = [s.cls for s in shares if s.fraction < BOUNDARY or s.fraction > 1 - BOUNDARY]
        if edge:
            notes.append(
                f"The correction puts {', '.join(edge)} at the edge of what a composition can be (0% or 100%): the "
                "counted cells are fewer or more than the model's errors alone would give; the interval reaches "
                "the edge and is one-sided there."
            )
    return Correction(shares, n, profile.source, profile.cells, notes=notes, identifiable=problem is None)
