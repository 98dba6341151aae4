"""Exact minimal perturbations of tree ensembles: the Kantchelian MILP and a Veritas-based search.

Both attacks work on the library-independent `TreeEnsemble` a model exposes through its
`tree_ensemble()` capability, so one implementation serves XGBoost, random forests and gradient
boosting alike. "Minimal" is meant over float64 inputs as the libraries see them: float32(x)
(rounded to nearest) against float32 thresholds, or the float64 input against float64 thresholds
for ensembles with `threshold_dtype="float64"` (LightGBM, HistGradientBoosting; see `grid`). The distance an attack reports is the float64 norm of a
point the model's own `predict` flips; the certified lower bound is a bound over all such points
under the ensemble's decision rule (`margins`).

- `milp`: `KantchelianMILP` (Kantchelian, Tygar and Joseph, ICML 2016), linf/l1/l2, via HiGHS.
- `veritas`: `VeritasLinf` (Devos, Meert and Davis, ICML 2021), linf, any threshold dtype, with the MILP as fallback.
- `grid`, `margins`, `flat`, `local_search`: the threshold grid, the decision rule as
  margins, a vectorised ensemble evaluator, and the local search that gives verified upper bounds.
- `points`: the shared per-point driver and the result flags it sets.
"""
from __future__ import annotations

from .milp import KantchelianMILP
from .veritas import VeritasLinf

__all__ = ["KantchelianMILP", "VeritasLinf"]
