"""The causal demo section's computed verdicts and conclusion, on hand-built tables (no model run)."""

from trustmed.causal.demo import COVAE, VAE, causal_verdicts, conclusion


def score(*pairs):
    return [
        {"graph": g, "edges": 5, "D_top SCORE": s, "D_top random order": r} for g, (s, r) in enumerate(pairs)
    ]


def models(vae_top, covae_top, vae_mcc=0.79, covae_mcc=0.74, edges=3):
    return [
        {
            "model": VAE,
            "MCC": vae_mcc,
            "R²": 0.8,
            "recon MSE": 0.02,
            "D_top of latent order": vae_top,
            "edges": edges,
        },
        {
            "model": COVAE,
            "MCC": covae_mcc,
            "R²": 0.8,
            "recon MSE": 0.06,
            "D_top of latent order": covae_top,
            "edges": edges,
        },
    ]


def test_score_better_than_random_on_a_majority():
    v = causal_verdicts(score((0, 4), (0, 0), (1, 2)), models(2, 1))
    assert (v["score_n_below_random"], v["score_n_equal_random"], v["score_n_above_random"]) == (2, 1, 0)
    assert v["score_n_graphs"] == 3 and v["score_beats_random"] is True
    assert v["score_verdict"] == "better than random"
    assert v["score_mean_d_top"] == 1 / 3 and v["random_mean_d_top"] == 2.0
    assert conclusion(v).startswith(
        "SCORE ordered better than a random order on 2 of 3 graphs (1 equal, 0 worse; mean D_top 0.33 "
        "against 2.00, lower is better)."
    )


def test_score_not_a_majority_did_not_beat_random():
    # one below, one equal, one above: 1 of 3 is no majority
    v = causal_verdicts(score((0, 4), (1, 1), (3, 2)), models(2, 1))
    assert (v["score_n_below_random"], v["score_n_equal_random"], v["score_n_above_random"]) == (1, 1, 1)
    assert v["score_beats_random"] is False and v["score_verdict"] == "not better than random"
    assert conclusion(v).startswith(
        "SCORE did <b>not</b> beat a random order: its D_top was lower on only 1 of 3 graphs (1 equal, 1 "
        "higher; mean D_top 1.33 against 2.33, lower is better)."
    )
    # exactly half is not a majority either
    half = causal_verdicts(score((0, 1), (1, 0)), models(2, 1))
    assert half["score_n_below_random"] == 1 and half["score_beats_random"] is False


def test_covae_better_order_in_this_run():
    v = causal_verdicts(score((0, 4)), models(2, 1, vae_mcc=0.70, covae_mcc=0.75))
    assert v["covae_orders_better"] is True and v["covae_verdict"] == "better order"
    assert (v["vae_d_top"], v["covae_d_top"]) == (2, 1)
    assert abs(v["mcc_difference"] - 0.05) < 1e-12
    assert conclusion(v).endswith(
        "In this run coVAE's latent order had D_top 1 against the VAE's 2 (lower is better; one seed; the "
        "multi-seed comparison is <code>benchmarks/covae_synthetic.py</code>); its MCC was 0.750 against the "
        "VAE's 0.700 (higher by 0.050)."
    )
    assert "<b>not</b>" not in conclusion(v)


def test_covae_not_better_order_is_said_plainly():
    for vae_top, covae_top in ((0, 2), (1, 1)):  # worse, and a tie
        v = causal_verdicts(score((0, 4)), models(vae_top, covae_top))
        assert v["covae_orders_better"] is False and v["covae_verdict"] == "not better order"
        text = conclusion(v)
        assert (
            "coVAE did <b>not</b> order the latents better than the VAE in this run: its latent order had "
            f"D_top {covae_top} against the VAE's {vae_top} (lower is better; one seed;" in text
        )
        assert text.endswith("its MCC was 0.740 against the VAE's 0.790 (lower by 0.050).")


def test_covae_without_edges_cannot_be_ordered():
    v = causal_verdicts(score((0, 4)), models(0, 0, edges=0))
    assert v["covae_verdict"] == "no edges" and v["covae_orders_better"] is False
    assert "has no edges, so D_top cannot tell the two latent orders apart" in conclusion(v)


def test_demo_section_opens_with_the_result_and_writes_demo_results(tmp_path, monkeypatch):
    import json

    import trustmed.causal.demo as demo

    # no training: the section's wiring only (the tables are the hand-built ones above)
    monkeypatch.setattr(demo, "_score_table", lambda seed, n_graphs: score((0, 4), (0, 0), (1, 2)))
    monkeypatch.setattr(demo, "_train_pair", lambda seed, steps: (models(0, 2), {}))
    monkeypatch.setattr(demo, "_figure", lambda fig_data: b"png")
    body = demo.demo_section(tmp_path, seed=0, quick=True).body
    assert body.startswith(
        '<p class="note"><b>Result:</b> SCORE ordered better than a random order on 2 of 3 graphs'
    )
    assert "coVAE did <b>not</b> order the latents better than the VAE in this run" in body
    assert "within seed noise" not in body
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["score_beats_random"] is True and saved["covae_verdict"] == "not better order"
    assert saved["covae_d_top"] == 2 and saved["vae_d_top"] == 0 and len(saved["models"]) == 2
    assert saved["conclusion"].startswith("SCORE ordered better") and "<" not in saved["conclusion"]
    assert "coVAE did not order the latents better" in saved["conclusion"]
    assert (tmp_path / "causal_metrics.json").is_file() and (tmp_path / "causal_latents.png").is_file()
