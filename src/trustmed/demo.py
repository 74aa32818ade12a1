"""``trustmed demo``: every capability end to end on built-in synthetic data, one HTML report.

The foundation part generates SynthSkin, trains an ERM classifier on it and audits the classifier
on the test split (the model is biased against dark skin by construction: see ``docs/data.md``).
Each other capability adds its own section (debiasing starts from the classifier trained here); each
section opens with a conclusion computed from the run's numbers. Besides ``report.html`` the demo
writes ``results.json``: the ERM model's numbers (validation and test AUC, per-group TPR, the gap),
each section's ``demo_results.json`` and torch's thread count (read by ``benchmarks/demo_robustness.py``).
"""

from __future__ import annotations

import html
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from trustmed.config import Config, NBoot
from trustmed.data.synth.skin import SynthSkinConfig, generate_synthskin
from trustmed.io import write_json
from trustmed.outdir import staged_dir
from trustmed.report import Section, write_report
from trustmed.train.classifier import TrainConfig, train_classifier

__all__ = ["DemoConfig", "DemoResult", "run_demo", "SECTION_MODULES"]

log = logging.getLogger(__name__)

SectionName = Literal["audit", "debias", "distill", "grounding", "causal"]

# The module whose ``demo_section(out_dir, *, seed, quick, **kw)`` builds each later section.
SECTION_MODULES: dict[str, str] = {
    "debias": "trustmed.debias.demo",
    "distill": "trustmed.distill.demo",
    "grounding": "trustmed.grounding.demo",
    "causal": "trustmed.causal.demo",
}


def _demo_train_config() -> TrainConfig:
    # The debiasing benchmark's ERM recipe (benchmarks/debias_synthskin.py: tiny_cnn, 30 epochs, no
    # augmentation, chosen there on validation AUC), so the demo's debiasing section starts from the
    # kind of model the benchmark measured: a competent classifier still biased against dark skin.
    cfg = TrainConfig()
    cfg.data.dataset = "fitzpatrick17k"
    cfg.data.augment = False
    cfg.optim.epochs = 30
    return cfg


class DemoConfig(Config):
    """What the demo runs; every field can be changed with ``--set`` (e.g. ``--set train.optim.epochs=3``)."""

    seed: int = 0
    quick: bool = True
    sections: list[SectionName] = ["audit", "debias", "distill", "grounding", "causal"]
    n_boot: NBoot = 1000
    attributes: list[str] = ["skin_tone", "age_bin"]
    synthskin: SynthSkinConfig = SynthSkinConfig()
    train: TrainConfig = Field(default_factory=_demo_train_config)


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    metrics: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _foundation(cfg: DemoConfig, tmp: Path, timings: dict[str, float]) -> tuple[list[Section], dict]:
    from trustmed.audit import run_audit

    t0 = time.perf_counter()
    data_root = tmp / "data" / "synthskin"
    generate_synthskin(data_root, **{**cfg.synthskin.model_dump(), "seed": cfg.seed})
    timings["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_cfg = cfg.train.model_copy(deep=True)
    train_cfg.seed = cfg.seed
    train_cfg.data.root = data_root
    trained = train_classifier(train_cfg, tmp / "train")
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    test, val = trained.predictions["test"], trained.predictions["val"]
    audits = {}
    for attribute in cfg.attributes:
        audits[attribute] = run_audit(
            test,
            group_cols=[attribute],
            patient_col="patient_id",
            n_boot=cfg.n_boot,
            threshold=0.5,
            seed=cfg.seed,
            out_dir=tmp / "audit" / attribute,
            title=f"Fairness audit of the ERM classifier by {attribute} (test split, threshold 0.5)",
        )
    tuned = run_audit(
        test,
        group_cols=[cfg.attributes[0]],
        patient_col="patient_id",
        n_boot=cfg.n_boot,
        val_predictions=val,
        seed=cfg.seed,
        out_dir=tmp / "audit" / f"{cfg.attributes[0]}_tuned",
        title=f"… by {cfg.attributes[0]} at a threshold tuned on validation (Youden J)",
    )
    timings["audit"] = time.perf_counter() - t0

    main = audits[cfg.attributes[0]].metrics
    test_auc = float(main["overall"]["auc"]["value"])
    tpr = {str(g): float(m["tpr"]["value"]) for g, m in main["groups"].items() if "tpr" in m}
    gap = main["gaps"]["eodds_mean_gap"]
    excludes_zero = gap.get("ci") is not None and gap["ci"][0] is not None and gap["ci"][0] > 0
    verdict = (
        f"The classifier is measurably biased: its equalized-odds gap by {cfg.attributes[0]} is "
        f"{gap['value']:.3f} with a 95 % bootstrap CI of [{gap['ci'][0]:.3f}, {gap['ci'][1]:.3f}], which "
        "excludes 0."
        if excludes_zero
        else f"The equalized-odds gap by {cfg.attributes[0]} is {gap['value']:.3f}; its CI includes 0."
    )
    intro = Section(
        "Data and model",
        "<p>SynthSkin (Fitzpatrick17k format) was generated with seed "
        f"{cfg.seed}: dark-skin malignant lesions are under-represented in the training split "
        f"(ratio {cfg.synthskin.train_dark_malignant_ratio}) and have lower contrast in every split "
        f"(factor {cfg.synthskin.dark_contrast}). A <code>{html.escape(train_cfg.model.arch)}</code> "
        f"classifier was trained with ERM for {trained.fit.epochs} epochs (best validation AUC "
        f"{trained.val_auc:.3f} at epoch {trained.best_epoch}).</p>"
        f'<p class="note">{html.escape(_competence(test_auc, tpr))} {html.escape(verdict)}</p>',
    )
    audit_sections = [intro] + [a.section() for a in audits.values()] + [tuned.section()]
    section = Section("Fairness audit", audit_sections[0].body, subsections=audit_sections[1:])
    metrics = {
        "val_auc": trained.val_auc,
        "test_auc": test_auc,
        "test_tpr_by_group": tpr,
        "eodds_mean_gap": {"value": gap["value"], "ci": gap.get("ci")},
        "epochs": trained.fit.epochs,
        "best_epoch": trained.best_epoch,
        "audit": {k: a.metrics for k, a in audits.items()},
        "audit_tuned": tuned.metrics,
        "bias_ci_excludes_zero": excludes_zero,
    }
    return [section], {"metrics": metrics, "checkpoint": tmp / "train", "data_root": data_root}


def _competence(test_auc: float, tpr: dict[str, float]) -> str:
    """What the ERM model's test AUC and its per-group TPR at 0.5 say (the planted mechanism: malignant
    lesions on dark skin are missed more often)."""
    text = f"On the test split the ERM classifier has AUC {test_auc:.3f}."
    if "dark" in tpr and "light" in tpr:
        dark, light = tpr["dark"], tpr["light"]
        text += (
            f" At threshold 0.5 it detects {dark:.0%} of malignant lesions on dark skin and {light:.0%} on "
            "light skin: "
            + (
                "the bias SynthSkin plants (few dark-skin malignant cases in training, lower contrast)."
                if dark < light
                else "the planted bias does not show as a lower dark-skin detection rate in this run."
            )
        )
    return text


def _results(
    cfg: DemoConfig, foundation: dict, sections_dir: Path, timings: dict[str, float], threads: int
) -> dict:
    """The machine-readable ``results.json``: the ERM model's numbers and each section's own
    ``demo_results.json`` (sections that write one), with the seed and torch's thread count at the start."""
    from trustmed.io import read_json

    sections = {}
    for name in cfg.sections:
        path = sections_dir / name / "demo_results.json"
        if name != "audit" and path.is_file():
            sections[name] = read_json(path)
    erm = {k: v for k, v in foundation.items() if k not in ("audit", "audit_tuned")}
    return {
        "seed": cfg.seed,
        "quick": cfg.quick,
        "torch_threads": threads,
        "erm": erm,
        "sections": sections,
        "timings": timings,
    }


def run_demo(cfg: DemoConfig, out_dir: str | Path) -> DemoResult:
    """Run the demo into ``out_dir`` (written atomically) and return where the report is."""
    import torch

    out_dir = Path(out_dir)
    threads = torch.get_num_threads()  # before any section (prompt tuning sets its own)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with staged_dir(out_dir) as tmp:
        sections, state = _foundation(cfg, tmp, timings)
        for name in cfg.sections:
            if name == "audit":
                continue
            t0 = time.perf_counter()
            module = importlib.import_module(SECTION_MODULES[name])
            extra = (
                {"erm_checkpoint": state["checkpoint"], "data_root": state["data_root"]}
                if name == "debias"
                else {}
            )
            sections.append(module.demo_section(tmp / name, seed=cfg.seed, quick=cfg.quick, **extra))
            timings[name] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        rows = "".join(f"<tr><td>{k}</td><td>{v:.1f}</td></tr>" for k, v in timings.items())
        sections.append(Section("Run time", f"<table><tr><th>part</th><th>seconds</th></tr>{rows}</table>"))
        intro = (
            "<p>Every number below was computed by this run on built-in synthetic data, on "
            "this machine. Confidence intervals are 95 % percentile bootstraps, stratified by group "
            "and clustered by patient.</p>"
        )
        write_report(tmp / "report.html", "trustmed demo report", sections, intro=intro)
        write_json(tmp / "results.json", _results(cfg, state["metrics"], tmp, timings, threads))
    return DemoResult(out_dir, out_dir / "report.html", state["metrics"], timings)
