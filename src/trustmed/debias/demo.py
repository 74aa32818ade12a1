"""The ``debias`` section of ``trustmed demo``: SWiFT and a few baselines on SynthSkin.

Starting from an ERM model trained on SynthSkin (dark-skin malignant cases under-represented in
training), SWiFT ("Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025,
arXiv 2508.18826) and baselines are run with the smallest external set (about 2 % of the training
set), hyper-parameters chosen on validation, and compared on the test split with bootstrap CIs.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import pandas as pd

from trustmed.debias.registry import method_names
from trustmed.debias.run import DataRef, DebiasCompareConfig, compare_checkpoint, write_comparison
from trustmed.debias.selection import ERM
from trustmed.debias.tables import FLAG_MARK
from trustmed.report import Section, figure_to_html, table_to_html

__all__ = ["NOT_IN_DEMO", "demo_methods", "demo_section"]

log = logging.getLogger(__name__)

NOT_IN_DEMO = ("swift_step1_only", "bmft", "retrain_fair")
"""Registered methods the demo leaves to the benchmark: fair retraining takes minutes on a CPU, and
the other two add little to the story the demo tells."""
EXTERNAL_FRACTION = 0.02
_DEMO_DATA = {"image_size": 32, "n_train": 1200, "n_val": 300, "n_external": 120, "n_test": 500, "n_ood": 0}


def _prepare(out_dir: Path, seed: int, quick: bool, erm_checkpoint: Path | None, data_root: Path | None):
    from trustmed.data.synth.skin import generate_synthskin
    from trustmed.train.classifier import TrainConfig, train_classifier

    if data_root is None:
        data_root = out_dir / "synthskin"
        if not (data_root / "fitzpatrick17k.csv").is_file():
            generate_synthskin(data_root, seed=seed, **_DEMO_DATA)
    if erm_checkpoint is None:
        erm_checkpoint = out_dir / "erm"
        if not (erm_checkpoint / "model.json").is_file():
            cfg = TrainConfig.model_validate(
                {
                    "seed": seed,
                    "mixed_precision": "no",
                    "data": {
                        "root": str(data_root),
                        "image_size": _DEMO_DATA["image_size"],
                        "augment": False,
                    },
                    "optim": {"epochs": 6 if quick else 10},
                }
            )
            train_classifier(cfg, erm_checkpoint)
    return Path(erm_checkpoint), Path(data_root)


def demo_methods() -> list[str]:
    """ERM and every registered method but :data:`NOT_IN_DEMO`, in table order."""
    return [ERM, *(m for m in method_names() if m not in NOT_IN_DEMO)]


def _fmt(row: pd.Series, key: str) -> str:
    return f"{row[key]:.3f} [{row[f'{key}_lo']:.3f}, {row[f'{key}_hi']:.3f}]"


def _flag(row: pd.Series) -> str:
    """`` ⚠ <label>`` for a flagged result (failed guard, constant or chance-level predictions)."""
    return f" {FLAG_MARK} {row['flag']}" if isinstance(row.get("flag"), str) and row["flag"] else ""


def demo_section(
    out_dir: Path,
    *,
    seed: int = 0,
    quick: bool = True,
    erm_checkpoint: Path | None = None,
    data_root: Path | None = None,
) -> Section:
    """Run the debiasing demo and return its report section.

    Parameters
    ----------
    out_dir : where the comparison (:func:`trustmed.debias.run.write_comparison`) and, if needed,
        data and model go.
    seed : seeds data, training and methods.
    quick : 200 bootstrap replicates (else 1000); the validation grids are always the full ones.
    erm_checkpoint : an ERM checkpoint trained on SynthSkin (trained here when ``None``).
    data_root : the SynthSkin folder it was trained on (generated here when ``None``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    erm_checkpoint, data_root = _prepare(out_dir, seed, quick, erm_checkpoint, data_root)
    cfg = DebiasCompareConfig(
        seed=seed,
        checkpoint=erm_checkpoint,
        data=DataRef(dataset="fitzpatrick17k", root=data_root),
        attribute="skin_tone",
        external_fraction=EXTERNAL_FRACTION,
        methods=demo_methods(),
        n_boot=200 if quick else 1000,
        eval_splits=["test"],
    )
    # The full validation grids even when quick: every setting costs about a second here, and the
    # quick 2-setting grids rarely pass the guard.
    result = write_comparison(compare_checkpoint(cfg), out_dir)
    table = result.table
    n_external = result.comparison.settings["sizes"]["external"]
    figure = out_dir / "pareto_test_0.5.png"
    shown = table[table["threshold"] == "0.5"].copy()
    view = pd.DataFrame(
        {
            "method": shown["method"] + shown["needs_attribute_at_prediction"].map({True: " *", False: ""}),
            "AUC [95% CI]": [_fmt(r, "auc") for _, r in shown.iterrows()],
            "eodds gap [95% CI]": [_fmt(r, "eodds_mean_gap") + _flag(r) for _, r in shown.iterrows()],
            "worst-group AUC": shown["worst_group_auc"].round(3),
            "wall time (s)": shown["wall_time_s"].round(1),
            "samples seen": shown["samples_seen"],
        }
    )
    tuned = table[table["threshold"] == "tuned"].set_index("method")
    erm, swift = shown.set_index("method").loc["erm"], shown.set_index("method").loc["swift"]
    flagged = [
        f"<li>{FLAG_MARK} {html.escape(str(r['method']))}: {html.escape(str(r['flag_reason']))}</li>"
        for _, r in shown.iterrows()
        if _flag(r)
    ]
    swift_flag = (
        f" (flagged: {html.escape(str(swift['flag_reason']))}, so this gap is no evidence of fairness)"
        if _flag(swift)
        else ""
    )
    text = (
        f"<p>An ERM model trained on SynthSkin, where dark-skin malignant lesions are rare in training, "
        f"has an equalised-odds gap of {erm['eodds_mean_gap']:.3f} between light and dark skin on the "
        f"balanced test set (threshold 0.5) and AUC {erm['auc']:.3f}. SWiFT fine-tunes it with only "
        f"{n_external} labelled external images: it scores each weight by how much it matters for the "
        f"bias loss versus the prediction loss, updates mostly the bias-related weights, then retrains "
        f"the last layer. After SWiFT the gap is {swift['eodds_mean_gap']:.3f} and AUC {swift['auc']:.3f}, "
        f"in {swift['wall_time_s']:.1f} s{swift_flag}. At a threshold tuned on validation the gap goes from "
        f"{tuned.loc['erm', 'eodds_mean_gap']:.3f} to {tuned.loc['swift', 'eodds_mean_gap']:.3f}: part of "
        f"any gain at 0.5 is mere re-calibration to the balanced external set. Baselines get the same "
        f"external set and the same validation-only selection; * marks per-group thresholds, which need "
        f"the skin tone of every patient at prediction time; {FLAG_MARK} marks a result whose setting failed "
        f"the validation guard or whose predictions are constant (or no better than chance), whose gap "
        f"is no evidence of fairness. Bars are 95% bootstrap CIs; overlapping "
        f"bars mean the data cannot tell the methods apart.</p>"
    )
    body = (
        text
        + table_to_html(view)
        + (f'<div class="note"><ul>{"".join(flagged)}</ul></div>' if flagged else "")
        + figure_to_html(figure, "Equalised-odds gap vs AUC on the test split (threshold 0.5), 95% CIs")
        + f'<p class="note">External set: {n_external} images; full table: '
        f"<code>{html.escape(out_dir.name)}/comparison.csv</code>.</p>"
    )
    return Section("Post-hoc debiasing (SWiFT)", body)
