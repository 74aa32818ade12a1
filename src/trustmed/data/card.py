"""Dataset cards: what is in a manifest, group by group, from its table alone (no images).

Group balance is the first fairness question about a dataset, so a card counts samples per split,
per sensitive group and per label, gives label prevalence by group, counts missing attribute
values, describes how many images each patient has, checks that no patient is in two splits and
draws a group × label balance figure. The contents follow the spirit of "Datasheets for Datasets"
(Gebru et al., arXiv 1803.09010) and of the per-dataset statistics of MEDFAIR (Zong et al.,
arXiv 2210.01725), restricted to what can be computed from the files.

Everything is a pandas group-by over the manifest, so a 223k-row table takes well under a second.

>>> df = pd.DataFrame({"sample_id": list("abcd"), "path": list("abcd"), "label": [0, 1, 1, 0],
...                    "split": ["train", "train", "test", "test"], "patient_id": ["p", "p", "q", "r"],
...                    "sex": ["male", "female", "unknown", "female"]})
>>> card = build_card(df, attributes=["sex"])
>>> card["n_samples"], card["groups"]["sex"]["female"]["prevalence"], card["missing"]["sex"]
(4, 0.5, 1)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustmed.errors import InputError
from trustmed.io import atomic_write_bytes, atomic_write_text, write_json

__all__ = ["CARD_ATTRIBUTES", "build_card", "card_markdown", "dataset_card", "plot_balance", "write_card"]

# Attribute columns a card describes when present (loaders name their sensitive attributes so).
CARD_ATTRIBUTES: tuple[str, ...] = ("sex", "age_bin", "race", "skin_tone", "fitzpatrick", "view", "site")
_MISSING = {"unknown", "", "nan", "none", "-1"}
_PATIENT_BINS = ((1, 1, "1"), (2, 2, "2"), (3, 5, "3-5"), (6, 10, "6-10"), (11, 50, "11-50"))


def _n_missing(values: pd.Series) -> int:
    counts = values.value_counts(dropna=False)
    return int(sum(n for v, n in counts.items() if pd.isna(v) or str(v).strip().lower() in _MISSING))


def _rate(positive: int, n: int) -> float:
    return float(positive / n) if n else float("nan")


def _images_per_patient(df: pd.DataFrame) -> dict[str, Any]:
    per = df.groupby("patient_id", sort=False).size().to_numpy()
    hist = {label: int(((per >= lo) & (per <= hi)).sum()) for lo, hi, label in _PATIENT_BINS}
    hist[">50"] = int((per > 50).sum())
    return {
        "n_patients": int(len(per)),
        "mean": float(per.mean()),
        "median": float(np.median(per)),
        "max": int(per.max()),
        "histogram": hist,
    }


def _group_table(df: pd.DataFrame, attribute: str) -> dict[str, Any]:
    # Group by the raw values (fast on few distinct values), then name groups by their string form.
    stats = df.groupby(attribute, sort=True, dropna=False)["label"].agg(["size", "sum"])
    by_split = df.groupby([attribute, "split"], sort=True, dropna=False).size().unstack(fill_value=0)
    return {
        str(group): {
            "n": int(row["size"]),
            "fraction": float(row["size"] / len(df)),
            "n_positive": int(row["sum"]),
            "prevalence": _rate(int(row["sum"]), int(row["size"])),
            "by_split": {str(s): int(by_split.loc[group, s]) for s in by_split.columns},
        }
        for group, row in stats.iterrows()
    }


def build_card(
    manifest: pd.DataFrame,
    *,
    attributes: Sequence[str] | None = None,
    name: str = "dataset",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of a manifest as a JSON-ready dict (``n_samples`` first).

    Parameters
    ----------
    manifest : a validated manifest (``label``, ``split``, ``patient_id`` and attribute columns).
    attributes : sensitive attribute columns to describe; default: those of :data:`CARD_ATTRIBUTES`
        present in the manifest.
    name : dataset name written in the card.
    extra : more top-level entries (e.g. the root and the loader options).
    """
    for col in ("label", "split", "patient_id"):
        if col not in manifest.columns:
            raise InputError(f"manifest: missing column {col!r}; available: {', '.join(manifest.columns)}")
    if attributes is None:
        attributes = [a for a in CARD_ATTRIBUTES if a in manifest.columns]
    missing_cols = [a for a in attributes if a not in manifest.columns]
    if missing_cols:
        raise InputError(
            f"attribute(s) {', '.join(map(repr, missing_cols))} not in the {name} manifest; "
            f"available: {', '.join(map(str, manifest.columns))}"
        )
    df = manifest
    labels = df["label"].to_numpy()
    split_stats = df.groupby("split", sort=True).agg(
        n=("label", "size"), n_positive=("label", "sum"), n_patients=("patient_id", "nunique")
    )
    splits = {
        str(s): {
            "n": int(r.n),
            "n_patients": int(r.n_patients),
            "n_positive": int(r.n_positive),
            "prevalence": _rate(int(r.n_positive), int(r.n)),
        }
        for s, r in split_stats.iterrows()
    }
    splits_per_patient = df.groupby("patient_id", sort=False)["split"].nunique()
    card: dict[str, Any] = {
        "n_samples": int(len(df)),
        "dataset": name,
        **dict(extra or {}),
        "n_patients": int(df["patient_id"].nunique()),
        "n_positive": int(labels.sum()),
        "prevalence": _rate(int(labels.sum()), len(df)),
        "labels": {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()},
        "splits": splits,
        "patients_in_several_splits": int((splits_per_patient > 1).sum()),
        "images_per_patient": _images_per_patient(df),
        "attributes": list(attributes),
        "groups": {a: _group_table(df, a) for a in attributes},
        "missing": {a: _n_missing(df[a]) for a in attributes},
    }
    if "age" in df.columns:
        card["missing"]["age"] = int(pd.to_numeric(df["age"], errors="coerce").isna().sum())
    if "label_code" in df.columns:
        card["label_codes"] = {
            str(k): int(v) for k, v in df["label_code"].value_counts().sort_index().items()
        }
    return card


def plot_balance(card: Mapping[str, Any]) -> bytes:
    """PNG bytes of a group × label balance figure: one panel per attribute, stacked negatives and
    positives per group, annotated with the group's prevalence."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trustmed.report.figures import save_png

    attributes = list(card["groups"]) or []
    n = max(len(attributes), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, attr in zip(axes[0], attributes, strict=False):
        groups = card["groups"][attr]
        names = list(groups)
        pos = np.array([groups[g]["n_positive"] for g in names])
        neg = np.array([groups[g]["n"] for g in names]) - pos
        y = np.arange(len(names))
        ax.barh(y, neg, color="#9ecae1", label="label 0")
        ax.barh(y, pos, left=neg, color="#de2d26", label="label 1")
        for yi, g in zip(y, names, strict=True):
            ax.text(neg[yi] + pos[yi], yi, f" {groups[g]['prevalence']:.1%}", va="center", fontsize=8)
        ax.set_yticks(y, names)
        ax.set_title(attr)
        ax.set_xlabel("images")
        ax.margins(x=0.2)
    if not attributes:
        axes[0][0].text(0.5, 0.5, "no attributes", ha="center", va="center")
        axes[0][0].set_axis_off()
    else:
        axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{card['dataset']}: group × label balance (prevalence at bar ends)")
    return save_png(fig, dpi=100)


def _md_table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.1%}"


def card_markdown(card: Mapping[str, Any], figure: str | None = "group_label_balance.png") -> str:
    """The card as Markdown: summary, splits, groups (with prevalence), missing values, patients."""
    ipp = card["images_per_patient"]
    parts = [
        f"# Dataset card: {card['dataset']}",
        "",
        f"{card['n_samples']} images of {card['n_patients']} patients; {card['n_positive']} positive "
        f"({_pct(card['prevalence'])}). Patients in more than one split: "
        f"{card['patients_in_several_splits']}.",
        "",
        "## Splits",
        "",
        _md_table(
            ["split", "images", "patients", "positive", "prevalence"],
            [
                [s, v["n"], v["n_patients"], v["n_positive"], _pct(v["prevalence"])]
                for s, v in card["splits"].items()
            ],
        ),
        "",
        "## Labels",
        "",
        _md_table(["label", "images"], [[k, v] for k, v in card["labels"].items()]),
    ]
    if "label_codes" in card:
        parts += [
            "",
            "Original label codes of the target finding (before the uncertainty policy):",
            "",
            _md_table(["code", "images"], [[k, v] for k, v in card["label_codes"].items()]),
        ]
    for attr, groups in card["groups"].items():
        splits = list(card["splits"])
        parts += [
            "",
            f"## Groups: {attr}",
            "",
            _md_table(
                ["group", "images", "fraction", "positive", "prevalence", *splits],
                [
                    [g, v["n"], _pct(v["fraction"]), v["n_positive"], _pct(v["prevalence"])]
                    + [v["by_split"].get(s, 0) for s in splits]
                    for g, v in groups.items()
                ],
            ),
        ]
    parts += [
        "",
        "## Missing attribute values",
        "",
        _md_table(
            ["attribute", "missing", "fraction"],
            [[a, n, _pct(n / card["n_samples"])] for a, n in card["missing"].items()],
        ),
        "",
        "## Images per patient",
        "",
        f"mean {ipp['mean']:.2f}, median {ipp['median']:g}, max {ipp['max']}.",
        "",
        _md_table(["images per patient", "patients"], [[k, v] for k, v in ipp["histogram"].items()]),
    ]
    if figure:
        parts += ["", "## Group × label balance", "", f"![group × label balance]({figure})"]
    return "\n".join(parts) + "\n"


def write_card(
    manifest: pd.DataFrame,
    out_dir: str | Path,
    *,
    attributes: Sequence[str] | None = None,
    name: str = "dataset",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``card.json``, ``card.md`` and ``group_label_balance.png`` to ``out_dir``; return the card.

    The card's ``seconds`` entry is the time taken to compute it and draw the figure.
    """
    t0 = time.perf_counter()
    card = build_card(manifest, attributes=attributes, name=name, extra=extra)
    png = plot_balance(card)
    card["figure"] = "group_label_balance.png"
    card["seconds"] = round(time.perf_counter() - t0, 3)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / card["figure"], png)
    write_json(out / "card.json", card)
    atomic_write_text(out / "card.md", card_markdown(card, card["figure"]))
    return card


def dataset_card(
    dataset: str | None,
    root: str | Path | None,
    out_dir: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    attributes: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Load a registered dataset (:func:`trustmed.data.load_dataset`) and write its card to ``out_dir``.

    ``seed`` is passed to loaders that take one (seeded splits) unless ``options`` sets it. The
    card records ``root``, ``options`` and ``load_seconds``. Grounding datasets have no manifest
    to describe and are an :class:`~trustmed.errors.InputError`, as are a missing name or root.
    """
    import inspect

    from trustmed.data import dataset_kind, dataset_loader, load_dataset

    if dataset is None or root is None:
        raise InputError("trustmed data card: give a dataset name and --root (or dataset/root in --config)")
    if dataset_kind(dataset) == "grounding":
        raise InputError(
            f"dataset {dataset!r} is a grounding table (image, phrase, boxes); a card describes a "
            "classification or group dataset's manifest"
        )
    options = dict(options or {})
    if "seed" in inspect.signature(dataset_loader(dataset)).parameters:
        options.setdefault("seed", seed)
    t0 = time.perf_counter()
    manifest = load_dataset(dataset, root, **options)
    extra = {"root": str(root), "options": options, "load_seconds": round(time.perf_counter() - t0, 3)}
    return write_card(manifest, out_dir, attributes=attributes, name=dataset, extra=extra)
