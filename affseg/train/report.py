"""What ``affseg train`` writes: results.json, results.md (the table) and results.png.

The table gives each metric's mean ± std over seeds (population std over the seeds' per-run means;
a single seed shows ± 0), per foreground class and averaged, with the training time per run. The
figure shows example test predictions next to their labels and the loss curves of every seed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from affseg.train.checkpoint import atomic_write, atomic_write_text
from affseg.train.metrics import METRICS


def mean_std(values):
    v = torch.tensor([x for x in values if not math.isnan(x)], dtype=torch.float64)
    if v.numel() == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(unbiased=False)) if v.numel() > 1 else 0.0


def aggregate(runs: list[dict], class_names) -> dict:
    """Mean ± std over seeds of every metric (per class and mean) and of the training time."""
    agg = {"seeds": [r["seed"] for r in runs], "method": runs[0]["method"],
           "label_fraction": runs[0]["label_fraction"], "steps": runs[0]["steps"],
           "labelled_cases": runs[0]["labelled_cases"], "class_names": list(class_names[1:])}
    for k in METRICS:
        agg[k] = {"mean": mean_std([r["test"][k]["mean"] for r in runs]),
                  "per_class": [mean_std([r["test"][k]["per_class"][c] for r in runs])
                                for c in range(len(class_names) - 1)]}
    agg["train_time_s"] = mean_std([r["train_time_s"] for r in runs])
    agg["step_time_s"] = mean_std([r["step_time_s"] for r in runs])
    agg["empty_pred"] = [sum(r["test"]["empty_pred"][c] for r in runs) for c in range(len(class_names) - 1)]
    agg["empty_label"] = [sum(r["test"]["empty_label"][c] for r in runs) for c in range(len(class_names) - 1)]
    agg["cases"] = sum(r["test"]["cases"] for r in runs)
    return agg


def _fmt(ms, digits=3):
    m, s = ms
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(aggs: list[dict]) -> str:
    names = aggs[0]["class_names"]
    head = ["method", "labels", "seeds", "Dice", "Jaccard", "HD95 (px)", "ASD (px)"]
    head += [f"Dice {n}" for n in names] + ["empty pred / label (cases)", "train time / run (s)", "step (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggs:
        row = [a["method"], f"{a['label_fraction']:.0%} ({a['labelled_cases']})", str(len(a["seeds"])),
               _fmt(a["dice"]["mean"]), _fmt(a["jaccard"]["mean"]), _fmt(a["hd95"]["mean"], 2),
               _fmt(a["asd"]["mean"], 2)]
        row += [_fmt(pc) for pc in a["dice"]["per_class"]]
        # HD95/ASD leave out cases where a class is missing from the prediction or the label: counted here.
        row += [" ".join(f"{p}/{q}" for p, q in zip(a["empty_pred"], a["empty_label"])) + f" of {a['cases']}"]
        row += [_fmt(a["train_time_s"], 0), _fmt(a["step_time_s"], 3)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def figure(runs_by_method: dict[str, list[dict]], path: Path, num_classes: int = 0) -> None:
    """Example predictions (first seed of each method) next to the labels, and the loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(runs_by_method)
    first = runs_by_method[methods[0]][0]["examples"]
    n_ex = len(first["images"])
    cols = 2 + len(methods)
    fig, axes = plt.subplots(n_ex + 1, cols, figsize=(2.4 * cols, 2.4 * (n_ex + 1)), squeeze=False)

    def show(ax, img, title=None, cmap="gray", vmax=None):
        if img.dim() == 3:  # a 3D volume: its middle plane
            img = img[img.shape[0] // 2]
        ax.imshow(img.float().numpy(), cmap=cmap, vmin=0 if vmax else None, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=8)

    k = max(1, num_classes - 1) if num_classes else (int(max(int(t.max()) for t in first["labels"])) if n_ex else 1)
    for i in range(n_ex):
        show(axes[i, 0], first["images"][i][0], "image" if i == 0 else None)
        show(axes[i, 1], first["labels"][i], "label" if i == 0 else None, "viridis", k)
        for j, m in enumerate(methods):
            show(axes[i, 2 + j], runs_by_method[m][0]["examples"]["preds"][i], m if i == 0 else None, "viridis", k)
    for ax in axes[n_ex]:
        ax.axis("off")
    curve = fig.add_subplot(n_ex + 1, 1, n_ex + 1)
    for m in methods:
        for r in runs_by_method[m]:
            steps = [h["step"] for h in r["history"]]
            curve.plot(steps, [h["loss"] for h in r["history"]], lw=0.8, label=f"{m} s{r['seed']}")
    curve.set_xlabel("step")
    curve.set_ylabel("training loss")
    curve.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write(out: Path, runs_by_method: dict[str, list[dict]], description: str, class_names) -> dict:
    """results.json, results.md and results.png under ``out``; returns the aggregates."""
    aggs = [aggregate(runs, class_names) for runs in runs_by_method.values()]
    serialisable = {m: [{k: v for k, v in r.items() if k != "examples"} for r in runs]
                    for m, runs in runs_by_method.items()}
    atomic_write_text(out / "results.json", json.dumps({"data": description, "summary": aggs, "runs": serialisable},
                                                       indent=1, default=float))
    table = markdown_table(aggs)
    atomic_write_text(out / "results.md", f"Data: {description}\n\nTest split, mean ± std over seeds.\n\n{table}")
    figure(runs_by_method, out / "results.png", len(class_names))
    return {"aggregates": aggs, "table": table, "png": str(out / "results.png")}
