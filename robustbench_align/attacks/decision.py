"""HopSkipJump (Chen, Jordan & Wainwright 2020): a decision-based minimal attack for any model.

It needs only `model.predict`, so it applies to tree ensembles and black boxes (where it gives an
upper bound on the minimal radius) and to torch models (where it cross-checks the gradient attacks:
a decision-based attack that beats them hints at gradient masking).

Per point: start from an adversarial point (the nearest points of the batch that the model puts in
another class, and random directions of growing norm), binary-search to the decision boundary,
then repeat: estimate the boundary normal by sampling decisions around the boundary point, take a
geometric step along it, binary-search back to the boundary. Everything is vectorised over the
batch; each point has its own query budget, and the base class verifies every candidate.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import AttackError
from ..models.base import Model
from .base import Candidates, MinimalAttack, Norm

log = logging.getLogger(__name__)


class HopSkipJump(MinimalAttack):
    """Decision-based minimal attack (l2, linf); `max_queries` model rows per point, seeded."""

    name = "hsj"
    requires = frozenset({"predict_proba"})
    norms = ("l2", "linf")

    def __init__(self, max_queries: int = 5000, max_iter: int = 200, init_samples: int = 100, max_samples: int = 1000,
                 gamma: float = 1.0, init_candidates: int = 3, init_directions: int = 8, explore: float = 0.3,
                 bs_tol: float = 1e-3, final_tol: float = 1e-6, max_halvings: int = 30, seed: int = 0,
                 chunk_rows: int = 100_000) -> None:
        if max_queries < 1 or init_samples < 2 or max_iter < 0:
            raise AttackError("hsj: max_queries >= 1, init_samples >= 2 and max_iter >= 0 are required")
        # query budget and iteration counts
        self.max_queries, self.max_iter, self.max_halvings = int(max_queries), int(max_iter), int(max_halvings)
        # gradient-estimate sample sizes and the initial adversarial search
        self.init_samples, self.max_samples, self.init_candidates, self.init_directions = (
            int(init_samples), int(max_samples), int(init_candidates), int(init_directions))
        # step size, exploration share and binary-search tolerances
        self.gamma, self.explore, self.bs_tol, self.final_tol = float(gamma), float(explore), float(bs_tol), float(final_tol)
        self.seed, self.chunk_rows = int(seed), int(chunk_rows)

    def __repr__(self) -> str:
        return f"HopSkipJump(max_queries={self.max_queries}, init_samples={self.init_samples}, seed={self.seed})"

    # ------------------------------------------------------------------------------------
    def _decide(self, model: Model, Z: np.ndarray, labels: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
        """phi(z): model.predict(z) != label, or == target where a target class is set (>= 0).

        Chunked so large sample sets fit in memory.
        """
        out = np.empty(Z.shape[0], dtype=bool)
        for s in range(0, Z.shape[0], self.chunk_rows):
            sl = slice(s, s + self.chunk_rows)
            p = model.predict(Z[sl])
            out[sl] = p != labels[sl] if targets is None else np.where(targets[sl] >= 0, p == targets[sl], p != labels[sl])
        return out

    @staticmethod
    def _along(Xo: np.ndarray, diff: np.ndarray, lam: np.ndarray, norm: Norm, top: np.ndarray) -> np.ndarray:
        """The point at fraction lam of the way from Xo towards Xo+diff (l2: the segment; linf: the box projection)."""
        out: np.ndarray
        if norm.p == 2:
            out = Xo + lam[:, None] * diff
        else:
            r = (lam * top)[:, None]
            out = Xo + np.clip(diff, -r, r)
        return out

    def _boundary(self, model: Model, Xo: np.ndarray, yo: np.ndarray, Xa: np.ndarray, owner: np.ndarray,
                  qt: np.ndarray, cap: np.ndarray, tol: float, norm: Norm,
                  targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Binary search between clean Xo (phi=0) and adversarial Xa (phi=1), per row.

        Row r spends its queries from qt[owner[r]] up to cap[owner[r]]. Returns the adversarial end
        of each final interval and its distance to Xo; a row stops when its interval is within tol
        (relative) or its owner's budget is spent.
        """
        m = Xo.shape[0]
        diff = Xa - Xo
        top = np.max(np.abs(diff), axis=1) if m else np.zeros(0)
        lo = np.zeros(m)
        hi = np.ones(m)
        while True:
            idx = np.flatnonzero((hi - lo) > tol * hi)
            if idx.size == 0:
                break
            # one query per row; rows sharing an owner are admitted in order within its budget
            own = owner[idx]
            order = np.argsort(own, kind="stable")
            idx, own = idx[order], own[order]
            pos = np.arange(own.size)
            first = np.r_[True, own[1:] != own[:-1]]
            rank = pos - np.maximum.accumulate(np.where(first, pos, 0))
            idx = idx[rank < (cap[own] - qt[own])]
            if idx.size == 0:
                break
            mid = 0.5 * (lo[idx] + hi[idx])
            Z = self._along(Xo[idx], diff[idx], mid, norm, top[idx])
            ph = self._decide(model, Z, yo[idx], None if targets is None else targets[idx])
            np.add.at(qt, owner[idx], 1)
            hi[idx[ph]] = mid[ph]
            lo[idx[~ph]] = mid[~ph]
        pts = self._along(Xo, diff, hi, norm, top)
        return pts, norm.distance(Xo, pts)

    def _initial(self, model: Model, X: np.ndarray, y: np.ndarray, pred: np.ndarray, todo: np.ndarray,
                 q: np.ndarray, norm: Norm, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Adversarial starting candidates for the points in `todo`: (owner, candidate rows) pairs.

        Batch points predicted in another class cost no queries (their predictions are known);
        random directions of doubling norm cost init_directions queries per radius tried.
        """
        n, d = X.shape
        owners: list[int] = []
        cands: list[np.ndarray] = []
        # the nearest batch point of each other predicted class (up to init_candidates classes)
        k = self.init_candidates
        if k > 0 and n > 1:
            classes = np.unique(pred)
            for s in range(0, todo.size, 256):
                rows = todo[s : s + 256]
                D = np.stack([norm.distance(np.broadcast_to(X[i], X.shape), X) for i in rows])
                near = np.full((rows.size, classes.size), -1, dtype=np.int64)
                near_d = np.full((rows.size, classes.size), np.inf)
                for ci, c in enumerate(classes):
                    members = np.flatnonzero(pred == c)
                    j = members[np.argmin(D[:, members], axis=1)]
                    near[:, ci] = j
                    near_d[:, ci] = np.where(y[rows] == c, np.inf, D[np.arange(rows.size), j])
                for ri, i in enumerate(rows):
                    order = np.argsort(near_d[ri], kind="stable")[:k]
                    js = near[ri, order[np.isfinite(near_d[ri, order])]]
                    owners.extend([i] * js.size)
                    cands.extend(X[js])
        # random directions of growing norm around each point
        spread = np.std(X, axis=0) if n > 1 else np.zeros(d)
        scale = float(np.median(spread[spread > 0])) if np.any(spread > 0) else max(1.0, float(np.max(np.abs(X))) if X.size else 1.0)
        r = np.full(todo.size, 0.01 * scale * (np.sqrt(d) if norm.p == 2 else 1.0))
        pending = np.ones(todo.size, dtype=bool)
        m = self.init_directions
        for _ in range(40):
            act = np.flatnonzero(pending & (self.max_queries - q[todo] >= m))
            if act.size == 0:
                break
            pts = todo[act]
            if norm.p == 2:
                U = rng.standard_normal((act.size, m, d))
                U /= np.linalg.norm(U, axis=2, keepdims=True)
            else:
                U = rng.choice([-1.0, 1.0], size=(act.size, m, d))
            Z = X[pts][:, None, :] + r[act][:, None, None] * U
            ph = self._decide(model, Z.reshape(-1, d), np.repeat(y[pts], m)).reshape(act.size, m)
            q[pts] += m
            hit = ph.any(axis=1)
            for a in np.flatnonzero(hit):
                owners.append(pts[a])
                cands.append(Z[a, int(np.argmax(ph[a]))])
            pending[act[hit]] = False
            r[act] *= 2.0
        if not owners:
            return np.zeros(0, dtype=np.int64), np.zeros((0, d))
        return np.asarray(owners, dtype=np.int64), np.asarray(cands, dtype=np.float64)

    # ------------------------------------------------------------------------------------
    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        n, d = X.shape
        rng = np.random.default_rng(self.seed)
        q = np.zeros(n, dtype=np.int64)
        if n == 0:
            return Candidates(x_adv=X.copy(), queries=q)
        pred = model.predict(X)
        q += 1
        todo = np.flatnonzero(pred == y)
        best = X.copy()
        best_d = np.full(n, np.inf)
        cap_pt = np.full(n, self.max_queries, dtype=np.int64)
        if todo.size:
            tol = min(self.bs_tol, 0.1 / d)
            owners, cands = self._initial(model, X, y, pred, todo, q, norm, rng)
            if owners.size:
                pts, dist = self._boundary(model, X[owners], y[owners], cands, owners, q, cap_pt, tol, norm)
                self._search(model, X, y, owners, pts, dist, best, best_d, q, norm, rng, tol)
            found = np.flatnonzero(np.isfinite(best_d))
            if found.size:  # a last, tighter binary search from the best point found
                pts, dist = self._boundary(model, X[found], y[found], best[found], found, q, cap_pt, self.final_tol, norm)
                better = dist < best_d[found]
                best[found[better]] = pts[better]
                best_d[found[better]] = dist[better]
        found = np.isfinite(best_d)
        log.debug("hsj: %d/%d points with an adversarial, median queries %s", found.sum(), n, np.median(q))
        return Candidates(x_adv=np.where(found[:, None], best, X), claimed=found, queries=q)

    def _search(self, model: Model, X: np.ndarray, y: np.ndarray, owners: np.ndarray, pts: np.ndarray, dist: np.ndarray,
                best: np.ndarray, best_d: np.ndarray, q: np.ndarray, norm: Norm, rng: np.random.Generator, tol: float) -> None:
        """Iterate from the boundary points of the starting candidates, in place on (best, best_d, q).

        Multiclass boundaries are not convex, so a single start can settle on a farther class's
        boundary: each point keeps up to `init_candidates` tracks whose boundary points lie in
        different classes, explores them with `explore` of its remaining budget, then spends the
        rest on its best track.
        """
        n = X.shape[0]
        ok = np.isfinite(dist)
        owners, pts, dist = owners[ok], pts[ok], dist[ok]
        if owners.size == 0:
            return
        # the class each boundary point falls in (one query each) to keep one track per class
        cls = model.predict(pts)
        np.add.at(q, owners, 1)
        order = np.lexsort((dist, cls, owners))
        o, c = owners[order], cls[order]
        first = np.r_[True, (o[1:] != o[:-1]) | (c[1:] != c[:-1])]
        keep = order[first]
        keep = keep[np.lexsort((dist[keep], owners[keep]))]
        ko = owners[keep]
        pos = np.arange(ko.size)
        start = np.r_[True, ko[1:] != ko[:-1]]
        rank = pos - np.maximum.accumulate(np.where(start, pos, 0))
        keep = keep[rank < max(1, self.init_candidates)]
        tr_owner = owners[keep]
        cur, cur_d = pts[keep].copy(), dist[keep].copy()
        n_tr = np.bincount(tr_owner, minlength=n)
        # with several tracks, each targets its class so it cannot drift onto another class's boundary
        tr_target = np.where(n_tr[tr_owner] > 1, cls[keep], -1)
        for i, dd, p in zip(tr_owner, cur_d, cur, strict=True):
            if dd < best_d[i]:
                best_d[i], best[i] = dd, p
        remaining = np.maximum(self.max_queries - q, 0)
        qt = np.zeros(tr_owner.size, dtype=np.int64)
        multi = n_tr[tr_owner] > 1
        t = 0
        if multi.any():  # exploration: a share of the budget split over each point's tracks
            cap = np.where(multi, (self.explore * remaining[tr_owner] / np.maximum(n_tr[tr_owner], 1)).astype(np.int64), 0)
            t = self._iterate(model, X[tr_owner], y[tr_owner], tr_target, tr_owner, cur, cur_d, best, best_d, qt, cap, norm, rng, tol, 0)
        np.add.at(q, tr_owner, qt)
        # exploitation: each point's best track gets the rest of the point's budget
        order = np.lexsort((cur_d, tr_owner))
        chosen = order[np.r_[True, tr_owner[order][1:] != tr_owner[order][:-1]]]
        co = tr_owner[chosen]
        cap = np.maximum(self.max_queries - q[co], 0)
        qc = np.zeros(co.size, dtype=np.int64)
        self._iterate(model, X[co], y[co], tr_target[chosen], co, cur[chosen], cur_d[chosen], best, best_d, qc, cap, norm, rng, tol, t)
        q[co] += qc

    def _iterate(self, model: Model, Xo: np.ndarray, yo: np.ndarray, tg: np.ndarray, owner: np.ndarray, cur: np.ndarray, cur_d: np.ndarray,
                 best: np.ndarray, best_d: np.ndarray, qt: np.ndarray, cap: np.ndarray, norm: Norm, rng: np.random.Generator,
                 tol: float, t_done: int) -> int:
        """HopSkipJump iterations on tracks (rows of Xo, owned by points `owner`, targeting class tg
        where tg >= 0), each within its query cap; updates cur/cur_d/qt in place and the owners'
        best. Returns the last iteration."""
        m, d = Xo.shape
        rows = np.arange(m)
        reserve = 2  # at least a step query and a search query after the gradient estimate
        t = t_done
        while t < self.max_iter:
            t += 1
            B = int(min(self.max_samples, self.init_samples * np.sqrt(t)))
            act = np.flatnonzero(np.isfinite(cur_d) & (cur_d > 0) & (cap - qt >= B + reserve))
            if act.size == 0:
                return t - 1
            # 1. boundary-normal estimate by sampling decisions around the boundary point
            delta = self.gamma * cur_d[act] / d
            grad = np.empty((act.size, d))
            per = max(1, 4_000_000 // max(1, B * d))
            for s in range(0, act.size, per):
                sl = slice(s, s + per)
                a = act[sl]
                if norm.p == 2:
                    U = rng.standard_normal((a.size, B, d))
                else:
                    U = rng.uniform(-1.0, 1.0, size=(a.size, B, d))
                U /= np.maximum(np.linalg.norm(U, axis=2, keepdims=True), 1e-300)
                Z = cur[a][:, None, :] + delta[sl][:, None, None] * U
                ph = self._decide(model, Z.reshape(-1, d), np.repeat(yo[a], B), np.repeat(tg[a], B)).reshape(a.size, B)
                qt[a] += B
                f = 2.0 * ph - 1.0
                mean = f.mean(axis=1)
                fc = np.where((np.abs(mean) == 1.0)[:, None], f, f - mean[:, None])
                grad[sl] = np.einsum("pb,pbd->pd", fc, U) / B
            gn = np.linalg.norm(grad, axis=1)
            ok = gn > 0
            grad[ok] /= gn[ok, None]
            v = grad if norm.p == 2 else np.sign(grad)
            # 2. geometric step size search: halve until the step stays adversarial
            eps = cur_d[act] / np.sqrt(t)
            moved = cur[act].copy()
            pending = ok.copy()
            for _ in range(self.max_halvings):
                p = np.flatnonzero(pending & (cap[act] - qt[act] >= 1))
                if p.size == 0:
                    break
                cand = cur[act[p]] + eps[p, None] * v[p]
                ph = self._decide(model, cand, yo[act[p]], tg[act[p]])
                qt[act[p]] += 1
                moved[p[ph]] = cand[ph]
                pending[p[ph]] = False
                eps[p[~ph]] *= 0.5
            # 3. back to the boundary
            pts, dist = self._boundary(model, Xo[act], yo[act], moved, rows[act], qt, cap, tol, norm, tg[act])
            cur[act] = pts
            cur_d[act] = dist
            for r, dd in zip(act, dist, strict=True):
                i = owner[r]
                if dd < best_d[i]:
                    best_d[i] = dd
                    best[i] = cur[r]
        return t


__all__ = ["HopSkipJump"]
