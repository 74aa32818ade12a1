"""The causal-representation section of ``trustmed demo``: SCORE ordering and coVAE on a latent ANM.

SCORE: Rolland et al., arXiv 2203.04413. coVAE: Kori et al., arXiv 2307.05704, trained and scored
with :func:`trustmed.causal.pipeline.fit_pipeline`. Runs on the CPU in well under a minute with
``quick=True``. The section opens with its conclusion, computed from the run's numbers
(:func:`causal_verdicts`, :func:`conclusion`), and writes them to ``demo_results.json``.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from trustmed.report import Section, figure_to_html, table_to_html

__all__ = ["COVAE", "VAE", "causal_verdicts", "conclusion", "demo_section"]

VAE = "VAE (alpha = 0)"
COVAE = "coVAE (alpha = 10)"
BENCHMARK = "benchmarks/covae_synthetic.py"
"""The multi-seed VAE vs coVAE comparison the section points to."""


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def causal_verdicts(score_rows: list[dict[str, Any]], model_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The section's verdicts from its two tables (lower D_top is better in both).

    SCORE (rows with ``D_top SCORE`` and ``D_top random order``, one per graph): ``score_n_below_random``,
    ``score_n_equal_random``, ``score_n_above_random`` and ``score_n_graphs`` count the graphs on which
    SCORE's D_top is below / equal to / above the random order's; ``score_mean_d_top`` and
    ``random_mean_d_top`` are the means; ``score_beats_random`` is whether it is below on a strict
    majority of the graphs, and ``score_verdict`` says so (``"better than random"`` or
    ``"not better than random"``).

    coVAE vs VAE (rows named :data:`VAE` and :data:`COVAE` with ``MCC`` and ``D_top of latent order``;
    one seed): ``vae_d_top``, ``covae_d_top``, ``vae_mcc``, ``covae_mcc``, ``mcc_difference`` (coVAE
    minus VAE); ``covae_orders_better`` is whether coVAE's D_top is below the VAE's, ``covae_verdict``
    ``"better order"`` or ``"not better order"`` (``"no edges"`` when the true graph has no edge, so that
    D_top cannot tell orders apart).

    >>> v = causal_verdicts(
    ...     [{"D_top SCORE": 0, "D_top random order": 4}, {"D_top SCORE": 0, "D_top random order": 0},
    ...      {"D_top SCORE": 1, "D_top random order": 2}],
    ...     [{"model": VAE, "MCC": 0.79, "D_top of latent order": 0, "edges": 3},
    ...      {"model": COVAE, "MCC": 0.74, "D_top of latent order": 2, "edges": 3}])
    >>> v["score_n_below_random"], v["score_verdict"], v["covae_verdict"]
    (2, 'better than random', 'not better order')
    """
    score = [_number(r["D_top SCORE"]) for r in score_rows]
    rand = [_number(r["D_top random order"]) for r in score_rows]
    below = sum(a < b for a, b in zip(score, rand, strict=True))
    equal = sum(a == b for a, b in zip(score, rand, strict=True))
    n = len(score_rows)
    beats = below > n / 2
    models = {r["model"]: r for r in model_rows}
    vae, covae = models[VAE], models[COVAE]
    v_top, c_top = _number(vae["D_top of latent order"]), _number(covae["D_top of latent order"])
    v_mcc, c_mcc = _number(vae["MCC"]), _number(covae["MCC"])
    better = bool(c_top < v_top)
    no_edges = covae.get("edges") == 0 and vae.get("edges") == 0
    return {
        "score_n_graphs": n,
        "score_n_below_random": int(below),
        "score_n_equal_random": int(equal),
        "score_n_above_random": int(n - below - equal),
        "score_mean_d_top": float(np.mean(score)) if n else math.nan,
        "random_mean_d_top": float(np.mean(rand)) if n else math.nan,
        "score_beats_random": bool(beats),
        "score_verdict": "better than random" if beats else "not better than random",
        "seeds": 1,
        "vae_d_top": v_top,
        "covae_d_top": c_top,
        "vae_mcc": v_mcc,
        "covae_mcc": c_mcc,
        "mcc_difference": c_mcc - v_mcc,
        "covae_orders_better": better,
        "covae_verdict": "no edges" if no_edges else ("better order" if better else "not better order"),
    }


def _d(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) and value == int(value) else f"{value:.2f}"


def _mcc(v: dict[str, Any]) -> str:
    diff = v["mcc_difference"]
    change = f"higher by {diff:.3f}" if diff > 0 else (f"lower by {-diff:.3f}" if diff < 0 else "equal")
    return f"its MCC was {v['covae_mcc']:.3f} against the VAE's {v['vae_mcc']:.3f} ({change})"


def conclusion(verdicts: dict[str, Any]) -> str:
    """The section's first sentences (HTML) from :func:`causal_verdicts`: whether SCORE's order beat a
    random order on most graphs and whether coVAE's latent order beat the VAE's in this one-seed run.
    Says plainly (a bold "not") what did not hold."""
    v = verdicts
    k, n, eq, above = (
        v["score_n_below_random"],
        v["score_n_graphs"],
        v["score_n_equal_random"],
        v["score_n_above_random"],
    )
    means = f"mean D_top {v['score_mean_d_top']:.2f} against {v['random_mean_d_top']:.2f}"
    if v["score_beats_random"]:
        score = (
            f"SCORE ordered better than a random order on {k} of {n} graphs ({eq} equal, {above} worse; "
            f"{means}, lower is better)"
        )
    else:
        score = (
            f"SCORE did <b>not</b> beat a random order: its D_top was lower on only {k} of {n} graphs "
            f"({eq} equal, {above} higher; {means}, lower is better)"
        )
    one_seed = (
        f"lower is better; one seed; the multi-seed comparison is <code>{html.escape(BENCHMARK)}</code>"
    )
    tops = f"D_top {_d(v['covae_d_top'])} against the VAE's {_d(v['vae_d_top'])} ({one_seed})"
    if v["covae_verdict"] == "no edges":
        covae = (
            f"The true latent graph of the VAE/coVAE run has no edges, so D_top cannot tell the two latent "
            f"orders apart: coVAE's latent order had {tops}; {_mcc(v)}"
        )
    elif v["covae_verdict"] == "better order":
        covae = f"In this run coVAE's latent order had {tops}; {_mcc(v)}"
    else:
        covae = (
            f"coVAE did <b>not</b> order the latents better than the VAE in this run: its latent order had "
            f"{tops}; {_mcc(v)}"
        )
    return f"{score}. {covae}."


def _score_table(seed: int, n_graphs: int) -> list[dict]:
    from trustmed.causal.ordering import score_order
    from trustmed.data.synth.anm import make_latent_anm
    from trustmed.metrics.causal import order_divergence

    rows = []
    for g in range(n_graphs):
        data = make_latent_anm(n=500, d=6, observed_dim=None, expected_edges=6, seed=seed + g)
        rand = np.random.default_rng(seed + g).permutation(6).tolist()
        rows.append(
            {
                "graph": g,
                "edges": int(data.adjacency.sum()),
                "D_top SCORE": order_divergence(data.adjacency, score_order(data.z)),
                "D_top random order": order_divergence(data.adjacency, rand),
            }
        )
    return rows


def _train_pair(seed: int, steps: int) -> tuple[list[dict], dict]:
    from trustmed.causal.pipeline import (
        CausalDataConfig,
        CausalFitConfig,
        CausalModelConfig,
        CausalTrainConfig,
        fit_pipeline,
    )

    data = CausalDataConfig(n=1250, d=3, observed_dim=10)  # 1000 training samples, 250 validation
    epochs = max(2, steps // (1000 // 100))
    rows, latents = [], {}
    for name, alpha in ((VAE, 0.0), (COVAE, 10.0)):
        train = CausalTrainConfig(
            epochs=epochs,
            batch_size=100,
            lr=3e-3,
            alpha=alpha,
            warmup_epochs=epochs // 4,
            ramp_epochs=epochs // 4,
        )
        cfg = CausalFitConfig(
            seed=seed, data=data, model=CausalModelConfig(latent_dim=3, hidden=32), train=train
        )
        fitted = fit_pipeline(cfg)
        m = fitted.metrics
        rows.append(
            {
                "model": name,
                "MCC": m["mcc_pearson"],
                "R²": m["r2"],
                "recon MSE": m["recon_mse"],
                "D_top of latent order": m["order_divergence"],
                "edges": m["n_edges"],
            }
        )
        latents[name] = (fitted.latents[fitted.val_index], m["match"])
    return rows, {"z": fitted.data.z[fitted.val_index], "latents": latents}


def _figure(fig_data: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trustmed.report.figures import save_png

    z = fig_data["z"]
    names = list(fig_data["latents"])
    fig, axes = plt.subplots(len(names), z.shape[1], figsize=(3 * z.shape[1], 2.6 * len(names)))
    for r, name in enumerate(names):
        z_hat, match = fig_data["latents"][name]
        for j in range(z.shape[1]):
            ax = axes[r, j]
            ax.scatter(z[:, j], z_hat[:, match[j]], s=3, alpha=0.5)
            ax.set_title(f"{name.split(' ')[0]}: z{j} vs latent {match[j]}", fontsize=8)
            ax.tick_params(labelsize=6)
    return save_png(fig, dpi=90)


def demo_section(out_dir: Path, *, seed: int = 0, quick: bool = True) -> Section:
    """Run SCORE and VAE vs coVAE on small synthetic latent ANMs; write artefacts; return the section."""
    import pandas as pd

    from trustmed.io import atomic_write_bytes, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    score_rows = _score_table(seed, 3 if quick else 10)
    model_rows, fig_data = _train_pair(seed, 300 if quick else 2000)
    png = _figure(fig_data)
    atomic_write_bytes(out_dir / "causal_latents.png", png)
    write_json(out_dir / "causal_metrics.json", {"score_order": score_rows, "covae": model_rows})
    verdicts = causal_verdicts(score_rows, model_rows)
    result = conclusion(verdicts)
    write_json(
        out_dir / "demo_results.json",
        {
            "score_order": score_rows,
            "models": model_rows,
            **verdicts,
            "conclusion": html.unescape(re.sub(r"<[^>]+>", "", result)),
        },
    )
    explanation = (
        "<p>Causal representation learning asks for latent factors that are not only disentangled but "
        "ordered causally: causes before effects. For latents from an additive noise model with Gaussian "
        "noise, a variable with no effects (a leaf) has a constant curvature of the log-density along its "
        "axis, which the Stein Hessian estimator measures from samples. SCORE peels leaves off one by one "
        "to recover a causal order (first table: D_top counts true edges that point against the order; "
        "lower is better). coVAE adds a loss to a VAE asking each latent to be the most leaf-like among "
        "itself and the latents before it, so the latent index itself becomes a causal order (second "
        "table; both models use coVAE's default learnable Gaussian-mixture prior, which, unlike "
        "N(0, I), does not push the latents towards independence). MCC and R² say how well the true "
        "latents are recovered. Both models are trained here with one seed and few steps; "
        f"<code>{html.escape(BENCHMARK)}</code> compares them over several seeds.</p>"
    )
    body = (
        f'<p class="note"><b>Result:</b> {result}</p>'
        + explanation
        + "<h4>SCORE causal order on synthetic ANMs (d = 6, n = 500)</h4>"
        + table_to_html(pd.DataFrame(score_rows), float_format="{:.0f}")
        + "<h4>VAE vs coVAE on a latent ANM (d = 3, observed through a random LeakyReLU map to 10 dims)</h4>"
        + table_to_html(pd.DataFrame(model_rows))
        + figure_to_html(png, "True latents against their Hungarian-matched learned latents (validation).")
    )
    return Section("Causal representation learning (coVAE)", body)
