"""KernelCertifier (linear-relaxation certificates for RFM / RFAM): soundness against attacks, sampling
and PGD inside certified balls, the per-term distance and phi relaxations at their extremal points, known
answers (two training points; a one-dimensional RFM by grid search), budgets and refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import robustbench_align as rba
from robustbench_align.certify import kernel as K
from robustbench_align.certify.kernel import KernelCertifier
from robustbench_align.errors import ConfigError, ModelError

torch.set_num_threads(1)

NORMS = ("linf", "l2")
N_POINTS = 20


@pytest.fixture(scope="module")
def fitted() -> dict[tuple[str, str], tuple[object, np.ndarray, np.ndarray]]:
    """(dataset, model) -> (fitted model, test X, test y), for the two small datasets of the default run."""
    out = {}
    for name in ("iris", "wine"):
        ds = rba.load_dataset(name, seed=0)
        for mn in ("rfm", "rfam"):
            m = rba.build(mn)
            m.fit(ds.X_train, ds.y_train)
            out[name, mn] = (m, ds.X_test[:N_POINTS], ds.y_test[:N_POINTS])
    return out


def _norm(D: np.ndarray, norm: str) -> np.ndarray:
    return {"linf": np.abs(D).max(1), "l2": np.sqrt((D * D).sum(1)), "l1": np.abs(D).sum(1)}[norm]


def _check_against_attack(model, X, y, norm, attacks=None, splits=None, min_median=0.0):
    """Certify with no upper bound (the bisection may not lean on the attack), then compare point by point."""
    kw = {} if attacks is None else {"attacks": attacks}
    att = rba.minimal_radius(model, X, y, norm=norm, **kw)
    cert = KernelCertifier(steps=14, splits=splits).certify(model, X, y, norm, np.full(len(X), np.inf))
    wrong = model.predict(X) != y
    assert np.all(cert.lower[wrong] == 0) and all(r == "misclassified" for r in cert.reason[wrong])
    fin = np.isfinite(att.distance)
    assert np.all(cert.lower[fin] <= att.distance[fin]), np.c_[cert.lower, att.distance][cert.lower > att.distance]
    good = fin & ~wrong & (att.distance > 0)
    ratio = cert.lower[good] / att.distance[good]
    assert np.median(ratio) >= min_median, ratio
    return cert, att


# ----------------------------------------------------------------------------------------
# Soundness against the attack ensemble
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mn", ["rfm", "rfam"])
@pytest.mark.parametrize("name", ["iris", "wine"])
def test_certified_below_attack(fitted, name, mn, norm):
    model, X, y = fitted[name, mn]
    cert, _ = _check_against_attack(model, X, y, norm, attacks=["fmn"], min_median=0.35)
    ok = model.predict(X) == y
    assert np.all(cert.lower[ok] > 0)
    assert not cert.exact.any() and not cert.witness.any()
    assert np.all(cert.method[ok] == "kernel") and np.all(cert.work[ok] >= 14)
    assert np.array_equal(cert.x_witness, X)


def test_branch_and_bound_is_sound_and_tighter(fitted):
    model, X, y = fitted["iris", "rfam"]
    X, y = X[:10], y[:10]
    base = KernelCertifier(steps=12).certify(model, X, y, "linf", np.full(len(X), np.inf))
    cert, _ = _check_against_attack(model, X, y, "linf", attacks=["fmn"], splits=16)
    ok = base.lower > 0
    assert np.median(cert.lower[ok] / base.lower[ok]) > 1.1
    assert cert.work.max() > base.work.max()


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mn", ["rfm", "rfam"])
@pytest.mark.parametrize("name", rba.list_datasets())
def test_certified_below_attack_every_dataset(name, mn, norm):
    ds = rba.load_dataset(name, seed=0)
    model = rba.build(mn)
    model.fit(ds.X_train, ds.y_train)
    X, y = ds.X_test[:N_POINTS], ds.y_test[:N_POINTS]
    _check_against_attack(model, X, y, norm)  # the default attack ensemble
    _check_against_attack(model, X, y, norm, attacks=["fmn"], splits=8)


def test_float32_model_is_sound():
    ds = rba.load_dataset("iris", seed=0)
    model = rba.build("rfm", dtype="float32")
    model.fit(ds.X_train, ds.y_train)
    X, y = ds.X_test[:12], ds.y_test[:12]
    _check_against_attack(model, X, y, "linf", attacks=["fmn"], min_median=0.2)
    m64 = rba.build("rfm")
    m64.fit(ds.X_train, ds.y_train)
    kd32, kd64 = K._kernel_data(model, "linf", "axes"), K._kernel_data(m64, "linf", "axes")
    assert kd32.u == 2.0**-24 and kd64.u == 2.0**-53


# ----------------------------------------------------------------------------------------
# Sampling and PGD inside the certified balls
# ----------------------------------------------------------------------------------------
def _ball_samples(rng, x0, eps, norm, k):
    """k uniform points in the ball and k on its boundary (linf boundary: vertices and face points)."""
    d = x0.size
    if norm == "linf":
        inner = rng.uniform(-1, 1, (k, d))
        bnd = rng.uniform(-1, 1, (k, d))
        bnd[np.arange(k), rng.integers(0, d, k)] = np.sign(rng.uniform(-1, 1, k))
        bnd[: k // 2] = np.sign(bnd[: k // 2])  # vertices
    elif norm == "l2":
        g = rng.standard_normal((2 * k, d))
        g /= np.sqrt((g * g).sum(1, keepdims=True))
        inner, bnd = g[:k] * rng.uniform(0, 1, (k, 1)) ** (1.0 / d), g[k:]
    else:
        e = rng.exponential(size=(2 * k, d + 1))  # uniform on the simplex, random signs
        s = e[:, :d] / e.sum(1, keepdims=True) * np.sign(rng.uniform(-1, 1, (2 * k, d)))
        inner, bnd = s[:k], s[k:] / np.abs(s[k:]).sum(1, keepdims=True)
    return x0 + eps * np.concatenate([inner, bnd]) * (1.0 - 1e-12)


def _project(D, eps, norm):
    if norm == "linf":
        return torch.maximum(torch.minimum(D, eps[:, None]), -eps[:, None])
    n = torch.linalg.vector_norm(D, dim=1, keepdim=True)
    return D * torch.clamp(eps[:, None] / torch.clamp(n, min=1e-300), max=1.0)


def _pgd_worst(model, X, y, eps, norm, steps=60, restarts=2, seed=0):
    """Batched PGD on the margin max_k f_k - f_y inside each ball (torch_logits); returns the last iterates."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(X)
    e = torch.as_tensor(eps)
    yt = torch.as_tensor(y)
    out = []
    for r in range(restarts):
        D = (torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1) * e[:, None] * (0.0 if r == 0 else 1.0)
        D = _project(D, e, norm)
        for _ in range(steps):
            D.requires_grad_(True)
            f = model.torch_logits(x0 + D)
            own = f.gather(1, yt[:, None])[:, 0]
            other = f.scatter(1, yt[:, None], -torch.inf).max(1).values
            (grad,) = torch.autograd.grad((other - own).sum(), D)
            with torch.no_grad():
                if norm == "linf":
                    step = grad.sign()
                else:
                    step = grad / torch.clamp(torch.linalg.vector_norm(grad, dim=1, keepdim=True), min=1e-300)
                D = _project(D + 0.1 * e[:, None] * step, e * (1.0 - 1e-12), norm)
        out.append((x0 + D).detach().numpy())
    return out


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("key", [("iris", "rfm"), ("wine", "rfam")])
def test_sampling_and_pgd_never_flip_inside(fitted, key, norm):
    model, X, y = fitted[key]
    ok = model.predict(X) == y
    X, y = X[ok][:12], y[ok][:12]
    cert = KernelCertifier(steps=14, splits=8).certify(model, X, y, norm, np.full(len(X), np.inf))
    assert np.all(cert.lower > 0)
    rng = np.random.default_rng(0)
    for i in range(len(X)):
        S = _ball_samples(rng, X[i], cert.lower[i], norm, 1000)
        assert np.all(_norm(S - X[i], norm) <= cert.lower[i])
        assert np.all(model.predict(S) == y[i]), (i, cert.lower[i])
    for Xa in _pgd_worst(model, X, y, cert.lower, norm):
        assert np.all(_norm(Xa - X, norm) <= cert.lower)
        assert np.all(model.predict(Xa) == y)
    # the same PGD just outside the attack radius does flip most points (the check has teeth)
    att = rba.minimal_radius(model, X, y, norm=norm, attacks=["fmn"])
    fin = np.isfinite(att.distance)
    flips = np.zeros(len(X), dtype=bool)
    for Xa in _pgd_worst(model, X[fin], y[fin], att.distance[fin] * 1.05, norm):
        flips[np.flatnonzero(fin)] |= model.predict(Xa) != y[fin]
    assert flips.mean() > 0.5


def test_l1_sampling_inside(fitted):
    model, X, y = fitted["wine", "rfm"]
    ok = model.predict(X) == y
    X, y = X[ok][:10], y[ok][:10]
    cert = KernelCertifier(steps=12, splits=4).certify(model, X, y, "l1", np.full(len(X), np.inf))
    assert np.all(cert.lower > 0)
    att = rba.minimal_radius(model, X, y, norm="l1", attacks=["fmn"])
    fin = np.isfinite(att.distance)
    assert np.all(cert.lower[fin] <= att.distance[fin])
    rng = np.random.default_rng(1)
    for i in range(len(X)):
        S = _ball_samples(rng, X[i], cert.lower[i], "l1", 1500)
        assert np.all(model.predict(S) == y[i])


# ----------------------------------------------------------------------------------------
# The relaxation itself, term by term, at its extremal points
# ----------------------------------------------------------------------------------------
def _extremal(G, eps, norm):
    """argmax over the ball of g . d for each row g of G."""
    if norm == "linf":
        return eps * np.sign(G)
    if norm == "l2":
        return eps * G / np.maximum(np.sqrt((G * G).sum(1, keepdims=True)), 1e-300)
    D = np.zeros_like(G)
    j = np.abs(G).argmax(1)
    D[np.arange(len(G)), j] = eps * np.sign(G[np.arange(len(G)), j])
    return D


@pytest.mark.parametrize("frame", ["axes", "eigen"])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_distance_relaxation_holds_at_extremal_points(fitted, norm, frame):
    model, X, y = fitted["wine", "rfam"]
    kd = K._kernel_data(model, norm, frame)
    X = X[:4]
    rng = np.random.default_rng(2)
    checked = 0
    for eps0 in (0.02, 0.3, 1.5):
        eps = np.full(len(X), eps0)
        reg = K._Regions(np.arange(len(X)), X.copy(), eps[:, None] * kd.root[None], eps.copy())
        for depth in range(3):
            tb = K._distance_bounds(kd, norm, X[reg.pidx], reg)
            lower, upper = K._phi_relaxation(tb, kd.L)
            for r in range(reg.pidx.size):
                x0 = X[reg.pidx[r]]
                m = reg.m[r]
                G = (tb.qMp[r][None] - kd.ZM) * tb.inv[r][:, None]  # the gradients the relaxation uses
                cands = [m + _extremal(G, eps0, norm), m - _extremal(G, eps0, norm)] if depth == 0 else []
                # random points of box(m, rho) ∩ ball(x0, eps), shared by all terms
                U = rng.uniform(-1, 1, (400, kd.d)) * reg.rho[r]
                U[:200] = np.sign(U[:200]) * reg.rho[r]
                P = np.concatenate([m + (U if kd.Q is None else U @ kd.Q.T), _ball_samples(rng, x0, eps0, norm, 400)])
                Pu = (P - m) if kd.Q is None else (P - m) @ kd.Q
                P = P[(_norm(P - x0, norm) <= eps0 * (1 - 1e-9)) & np.all(np.abs(Pu) <= reg.rho[r] * (1 - 1e-9), axis=1)]
                for pts in [*cands, *[np.broadcast_to(p, G.shape) for p in P[:60]]]:
                    D = pts - m
                    t = np.sqrt((((pts - kd.center - kd.Z) @ kd.R.T) ** 2).sum(1))  # exact t_i at the point of term i
                    gdot = (G * D).sum(1)
                    tol = 1e-12 * (1 + t)
                    assert np.all(np.abs(gdot) <= tb.gd[r] + tol)
                    assert np.all(t >= tb.t_lo[r] - tol) and np.all(t <= tb.t_hi[r] + tol)
                    ok = tb.ok[r]
                    assert np.all(t[ok] >= tb.lo_base[r][ok] + gdot[ok] - tol[ok])
                    au = tb.affU[r]
                    assert np.all(t[au] <= (tb.t0[r] + tb.tau[r] + tb.h[r] + gdot)[au] + tol[au])
                    assert np.all(np.sqrt(((D @ kd.R.T) ** 2).sum(1)) <= tb.rr[r] * (1 + 1e-12))
                    phi = np.exp(-t / kd.L)  # the planes bounding phi(t_i) in (g_i . d, ||R d||^2), term by term
                    S = ((D @ kd.R.T) ** 2).sum(1)
                    for ap, sp, cp in lower:
                        assert np.all(phi >= ap[r] + sp[r] * gdot + cp[r] * S - 1e-12)
                    an, sn, cn = upper
                    assert np.all(phi <= an[r] + sn[r] * gdot + cn[r] * S + 1e-12)
                    checked += 1
            _, _, dim = K._evaluate(kd, norm, X, y[: len(X)], reg)
            reg = K._split(kd, norm, X, reg, dim)
            keep = rng.permutation(reg.pidx.size)[:8]
            reg = K._Regions(reg.pidx[keep], reg.m[keep], reg.rho[keep], reg.eps[keep])
    assert checked > 60


@pytest.mark.parametrize("norm", NORMS)
def test_region_values_below_sampled_margins(fitted, norm):
    """value(region) <= the model's margin at every sampled / PGD point of the region, at every radius."""
    model, X, y = fitted["iris", "rfam"]
    ok = model.predict(X) == y
    X, y = X[ok][:8], y[ok][:8]
    kd = K._kernel_data(model, norm, "axes")
    rng = np.random.default_rng(3)
    for eps0 in (0.01, 0.1, 0.5):
        eps = np.full(len(X), eps0)
        val, _, _ = K._evaluate(kd, norm, X, y, K._Regions(np.arange(len(X)), X.copy(), eps[:, None] * kd.root[None], eps.copy()))
        pts = [np.stack([_ball_samples(rng, X[i], eps0, norm, 300) for i in range(len(X))], 1)]
        pts += [P[None] for P in _pgd_worst(model, X, y, eps, norm, steps=40)]
        for P in pts:
            for S in P:
                F = model.decision_function(S)
                mar = F[np.arange(len(X)), y][:, None] - F
                mar[np.arange(len(X)), y] = np.inf
                assert np.all(val <= mar.min(1))


def test_training_points_and_blocked_sums(fitted, monkeypatch):
    """At training points (a term at distance 0) the bound stays sound; summing over small blocks of
    training points (bounded memory) gives the same bound."""
    model, _, _ = fitted["wine", "rfm"]
    X = model.X_fit_[:8]
    y = model.predict(X)
    cert = KernelCertifier(steps=12).certify(model, X, y, "linf", np.full(len(X), np.inf))
    att = rba.minimal_radius(model, X, y, norm="linf", attacks=["fmn"])
    fin = np.isfinite(att.distance)
    assert np.all(cert.lower > 0) and np.all(cert.lower[fin] <= att.distance[fin])
    rng = np.random.default_rng(6)
    for i in range(len(X)):
        assert np.all(model.predict(_ball_samples(rng, X[i], cert.lower[i], "linf", 500)) == y[i])
    for norm, frame in (("linf", "eigen"), ("l2", "eigen"), ("l1", "axes")):
        kd = K._kernel_data(model, norm, frame)
        eps = np.full(len(X), 0.2)
        reg = K._Regions(np.arange(len(X)), X.copy(), eps[:, None] * kd.root[None], eps.copy())
        full = K._evaluate(kd, norm, X, y, reg)
        monkeypatch.setattr(K, "_CHUNK", 100)  # a handful of training points per block
        blocked = K._evaluate(kd, norm, X, y, reg)
        monkeypatch.undo()
        # (equal up to the rounding of the Gram-trick distance to the coincident training point)
        assert np.allclose(full[0], blocked[0], rtol=1e-9, atol=1e-8) and np.array_equal(full[2], blocked[2])


# ----------------------------------------------------------------------------------------
# Known answers
# ----------------------------------------------------------------------------------------
def test_two_training_points_bisector():
    """One training point per class and M = I: the decision boundary is the perpendicular bisector."""
    rng = np.random.default_rng(4)
    Xtr = np.array([[0.0, 0.0, 0.0], [1.5, -0.5, 1.0]])
    ytr = np.array([0, 1])
    model = rba.build("rfm", iters=1)
    model.fit(Xtr, ytr, Xtr, ytr)
    assert np.allclose(model.M_, np.eye(3))
    X = rng.normal(0.75, 1.0, (12, 3))
    y = model.predict(X)
    nrm = Xtr[1] - Xtr[0]
    b = 0.5 * (Xtr[1] @ Xtr[1] - Xtr[0] @ Xtr[0])
    for norm, dual in (("linf", 1), ("l2", 2), ("l1", np.inf)):
        exact = np.abs(X @ nrm - b) / np.linalg.norm(nrm, ord=dual)
        cert = KernelCertifier(steps=16).certify(model, X, y, norm, np.full(len(X), np.inf))
        assert np.all(cert.lower <= exact)
        assert np.median(cert.lower / exact) > 0.5, cert.lower / exact
        tight = KernelCertifier(steps=14, splits=32).certify(model, X, y, norm, exact)
        assert np.all(tight.lower <= exact) and np.all(tight.lower >= 0.99 * cert.lower)
        assert np.median(tight.lower / exact) > (0.95 if norm == "linf" else 0.75), tight.lower / exact


def test_one_dimensional_rfm_grid_search():
    """A 1-D RFM: the minimal radius by a fine grid of model.predict on both sides of each point."""
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(-3, 3, 60))
    ylab = (np.sin(2.0 * x) > 0).astype(np.int64)
    model = rba.build("rfm", iters=2, bandwidth=2.0)
    model.fit(x[:, None], ylab)
    X = rng.uniform(-2.5, 2.5, (10, 1))
    y = model.predict(X)
    h = 1e-4
    grid = np.arange(1, 30001) * h
    true = np.empty(len(X))
    for i, x0 in enumerate(X[:, 0]):
        flips = [model.predict((x0 + s * grid)[:, None]) != y[i] for s in (-1.0, 1.0)]
        true[i] = min(grid[np.argmax(f)] if f.any() else np.inf for f in flips)
    assert np.all(np.isfinite(true))
    for norm in ("linf", "l2", "l1"):
        cert = KernelCertifier(steps=20).certify(model, X, y, norm, np.full(len(X), np.inf))
        assert np.all(cert.lower <= true)
        assert np.median(cert.lower / true) > 0.4, cert.lower / true
    tight = KernelCertifier(steps=20, splits=32).certify(model, X, y, "linf", true)
    assert np.all(tight.lower <= true)
    assert np.median(tight.lower / (true - h)) > 0.9, tight.lower / true


# ----------------------------------------------------------------------------------------
# Budgets, refusals, the certificate's shape
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{"steps": 0}, {"steps": -3}, {"steps": 2.5}, {"steps": True}, {"splits": 0}, {"splits": -1},
                                {"splits": 1.0}, {"batch": 0}, {"frame": "polar"}])
def test_bad_budgets_raise(kw):
    with pytest.raises(ConfigError):
        KernelCertifier(**kw)


def test_refuses_non_rfm_and_unfitted(fitted):
    from sklearn.linear_model import LogisticRegression

    ds = rba.load_dataset("iris", seed=0)
    lin = rba.wrap(LogisticRegression(max_iter=500).fit(ds.X_train, ds.y_train))
    c = KernelCertifier()
    why = c.refuses(lin)
    assert isinstance(why, str) and "RFM" in why
    with pytest.raises(ModelError):
        c.certify(lin, ds.X_test[:3], ds.y_test[:3], "linf", np.full(3, np.inf))
    assert isinstance(c.refuses(rba.build("rfam")), str)
    model, X, y = fitted["iris", "rfam"]
    assert c.refuses(model) is None
    assert c.name == "kernel" and set(c.norms) == {"linf", "l2", "l1"} and not c.complete
    with pytest.raises(ConfigError):
        c.certify(model, X, y, "l3", np.full(len(X), np.inf))


def test_certificate_contract(fitted):
    model, X, y = fitted["wine", "rfm"]
    y = y.copy()
    y[0] = (model.predict(X[:1])[0] + 1) % 3  # a misclassified row
    up = np.full(len(X), 5.0)
    cert = KernelCertifier(steps=8).certify(model, X, y, "l2", up)
    assert cert.lower.shape == (len(X),) and cert.lower.dtype == np.float64
    assert cert.lower[0] == 0 and cert.reason[0] == "misclassified" and cert.method[0] == "" and cert.work[0] == 0
    ok = model.predict(X) == y
    assert np.all(cert.lower < up) and np.all(cert.work[ok] == 9)  # the check at the point plus 8 steps
    assert np.all(cert.lower[~ok] == 0) and np.all(cert.work[~ok] == 0)
    empty = KernelCertifier().certify(model, X[:0], y[:0], "l2", np.zeros(0))
    assert empty.lower.shape == (0,)
    again = KernelCertifier(steps=8).certify(model, X, y, "l2", up)
    assert np.array_equal(again.lower, cert.lower)  # deterministic
