"""Turn teasr-mini evaluation JSONs (written by `teasr eval --json`) into docs tables and a quality-vs-steps plot.

Usage:
    python train_scripts/teasr_mini/report.py --runs runs/teasr_mini/eval --out docs

Writes `teasr_mini_tables.md` and `teasr_mini_steps.png` to --out (docs/RESULTS.md quotes the tables). Every number
in the outputs is read from the JSONs; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline_teasr.evaluation import load_report  # noqa: E402

# Evaluation files expected in --runs, by protocol: {model label: file stem}.
PROTOCOLS = {
    "light": "Held-out photos, training degradation family (light Real-ESRGAN-style, seeded)",
    "bicubic": "Held-out photos, plain bicubic x4 down-sampling",
}
MODEL_ORDER = ("teasr", "base", "coupled", "no_rect", "critic", "teasr_short")
MODEL_LABELS = {
    "teasr": "TEASR (distilled)",
    "base": "flow-matching base (T = 1)",
    "teasr_short": "TEASR, short schedule",
    "coupled": "ablation: coupled timestep",
    "no_rect": "ablation: no rectification",
    "critic": "variant: + self-adversarial term",
}
METRICS = ("psnr", "ssim", "gmsd", "hf_ratio")


def load(path: Path) -> dict:
    return load_report(path)


def rows_of(report: dict) -> list[dict]:
    return report["results"]


def collect(runs: Path) -> dict[str, dict[str, dict]]:
    """{protocol: {model: report}} for every `<model>_<protocol>.json` in `runs`."""
    found: dict[str, dict[str, dict]] = {}
    for protocol in PROTOCOLS:
        for model in MODEL_ORDER:
            path = runs / f"{model}_{protocol}.json"
            if path.is_file():
                found.setdefault(protocol, {})[model] = load(path)
    return found


def table(reports: dict[str, dict]) -> str:
    lines = [
        "| method | steps | PSNR-Y | SSIM-Y | GMSD | HF ratio | grid | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    baselines_done = False
    for model in MODEL_ORDER:
        if model not in reports:
            continue
        for row in rows_of(reports[model]):
            if row["kind"] == "baseline":
                if baselines_done:
                    continue
                name = row["label"]
            else:
                name = MODEL_LABELS[model]
            mean = row["mean"]
            grid = f"{mean['grid']:.3f}" if "grid" in mean else "-"  # reports written before `teasr eval` scored it
            lines.append(
                f"| {name} | {row['steps'] or '-'} | {mean['psnr']:.2f} | {mean['ssim']:.4f} | {mean['gmsd']:.4f} "
                f"| {mean['hf_ratio']:.3f} | {grid} | {row['mean_seconds']:.2f} |"
            )
        baselines_done = True
    return "\n".join(lines)


def plot(found: dict[str, dict[str, dict]], path: Path) -> None:
    figure, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 4.2), squeeze=False)
    for axis, (protocol, reports) in zip(axes[0], found.items()):
        baselines_drawn = False
        for model in MODEL_ORDER:
            if model not in reports:
                continue
            rows = rows_of(reports[model])
            model_rows = [r for r in rows if r["kind"] != "baseline"]
            steps = [r["steps"] for r in model_rows]
            axis.plot(steps, [r["mean"]["psnr"] for r in model_rows], marker="o", label=MODEL_LABELS[model])
            if not baselines_drawn:
                for row in (r for r in rows if r["kind"] == "baseline"):
                    axis.axhline(
                        row["mean"]["psnr"],
                        linestyle="--",
                        color="gray" if "bicubic" in row["key"] else "black",
                        label=row["label"],
                    )
                baselines_drawn = True
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 2, 4, 8], labels=["1", "2", "4", "8"])
        axis.set_xlabel("sampling steps (network calls per tile)")
        axis.set_ylabel("PSNR-Y (dB), 4-px border crop")
        axis.set_title(PROTOCOLS[protocol], fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/teasr_mini/eval"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    found = collect(args.runs)
    if not found:
        raise SystemExit(f"no evaluation JSONs (<model>_<protocol>.json) in {args.runs}")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(found, args.out / "teasr_mini_steps.png")
    sections = []
    for protocol, reports in found.items():
        any_report = next(iter(reports.values()))
        sections.append(
            f"### {PROTOCOLS[protocol]}\n\n{any_report['dataset']['num_images']} images; command of "
            f"the TEASR row: `{reports.get('teasr', any_report)['command']}`\n\n{table(reports)}\n"
        )
    (args.out / "teasr_mini_tables.md").write_text("\n".join(sections), encoding="utf-8")
    print("\n".join(sections))


if __name__ == "__main__":
    main()
