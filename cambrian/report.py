"""`cambrian report`: the ladder's telemetry as Markdown + PNG under reports/; and the tables and
figures of the compare and continual benchmarks.

Reads only what the generations published (runs/gen_N/{summary,generation}.json, assimilation
attempts, colony populations) and reports/baseline.json; writes reports/report.md, the figures in
reports/plots/, and reports/plots/generations.csv, the per-generation table `dvc plots show`
draws (dvc.yaml's plots section) so the DVC view and the PNGs show the same curves.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from scipy import stats

from cambrian.checkpoint import atomic_dir, atomic_write_text
from cambrian.ledger import Run

VERDICT_COLOURS = {"accepted": "#2e7d32", "rejected": "#c62828", "unchanged": "#9e9e9e", "stopped": "#212121",
                   "rolled back": "#ef6c00"}
CURVES = ["roi_mean", "roi_median", "roi_std", "energy_mean", "energy_gini", "effective_population",
          "recall_parent", "recall_child", "generalization_parent", "generalization_child", "style_drift",
          "ppl_parent", "ppl_child", "ppl_root",
          "recall_loglik_parent", "recall_loglik_child", "heldout_loglik_parent", "heldout_loglik_child"]


PARTS = ("test", "transfer")  # the test split in trained phrasings, and in reserved ones
COLLAPSED = 0.8  # a family whose most common final answer is at least this share of its replies has collapsed...


def collapsed(top_share: float, constant: float) -> bool:
    """...unless its gold answers are as concentrated themselves (a model right on every challenge of
    a family whose answers are mostly one value is not collapsed)."""
    return top_share >= COLLAPSED and top_share > constant


def load(gids: list[str], runs: Path, baseline: Path) -> dict:
    gens = []
    for gid in gids:
        run = Run(runs / gid)
        if not run.finished():
            raise FileNotFoundError(f"{run.path}: no {Run.RECORD}: run `dvc repro` (or `cambrian generation {gid}`) first")
        gens.append({"gid": gid, "record": run.record(), "timing": run.timing(), "summary": run.summary(),
                     "attempts": run.attempts(), "population": run.population()})
    base = json.loads(baseline.read_text()) if baseline.is_file() else {}
    return {"gens": gens, "baseline": {key: base.get(key, {}) for key in (*PARTS, "constant", "top_share")}}


def table(data: dict) -> list[dict]:
    """One row per generation: the curves of CURVES (blank where a generation has none)."""
    rows = []
    for g in data["gens"]:
        s, gate = g["summary"], g["record"].get("gate") or {}
        row = {"generation": g["gid"], "verdict": g["record"]["ledger"]["gate_verdict"]}
        row.update({k: s.get(k, "") for k in CURVES[:6]})
        row.update({k: gate.get(k, "") for k in CURVES[6:]})
        rows.append(row)
    return rows


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: Path, dpi: int = 100) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")  # long titles and outside legends whole
    plt.close(fig)


def _num(rows, key):
    return [float(r[key]) if r[key] not in ("", None) else float("nan") for r in rows]


def plot_ecology(rows: list[dict], path: Path) -> None:
    plt = _plt()
    x = list(range(1, len(rows) + 1))
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    mean, std = _num(rows, "roi_mean"), _num(rows, "roi_std")
    ax[0].plot(x, mean, "o-", label="mean")
    ax[0].plot(x, _num(rows, "roi_median"), "s--", label="median")
    ax[0].fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2,
                       label="± std (volatility)")
    ax[0].set_title("ROI (reward / cost)")
    ax[1].plot(x, _num(rows, "energy_mean"), "o-", color="tab:orange", label="mean energy")
    twin = ax[1].twinx()
    twin.plot(x, _num(rows, "energy_gini"), "d:", color="tab:purple", label="Gini")
    twin.set_ylim(0, 1)
    twin.set_ylabel("energy Gini")
    ax[1].set_title("energy: mean (orange), Gini (purple)")
    ax[2].plot(x, _num(rows, "effective_population"), "o-", color="tab:green")
    ax[2].set_title("effective population (1 / sum share²)")
    for a in ax:
        a.set_xticks(x, [r["generation"] for r in rows])
    ax[0].legend(fontsize=8)
    _save(plt, fig, path)


def plot_species(data: dict, path: Path) -> None:
    plt = _plt()
    gens = data["gens"]
    families = sorted({f for g in gens for f in g["summary"].get("species_shares", {})})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bottom = [0.0] * len(gens)
    for f in families:
        share = [g["summary"].get("species_shares", {}).get(f, 0.0) for g in gens]
        ax.bar([g["gid"] for g in gens], share, bottom=bottom, label=f)
        bottom = [b + s for b, s in zip(bottom, share)]
    ax.set_ylabel("share of living organelles")
    ax.set_title("species shares")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    _save(plt, fig, path)


def plot_assimilation(data: dict, path: Path) -> None:
    plt = _plt()
    gens = data["gens"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    names = [g["gid"] for g in gens]
    passed = [sum(a["passed"] for a in g["attempts"]) for g in gens]
    failed = [sum(not a["passed"] for a in g["attempts"]) for g in gens]
    ax[0].bar(names, passed, color="#2e7d32", label="passed")
    ax[0].bar(names, failed, bottom=passed, color="#c62828", label="failed")
    ax[0].set_title("assimilation attempts")
    ax[0].legend(fontsize=8)
    attempts = [a for g in gens for a in g["attempts"]]
    for ok, colour in ((True, "#2e7d32"), (False, "#c62828")):
        pts = [a for a in attempts if a["passed"] == ok]
        ax[1].scatter([a["uplift"] for a in pts], [max(a["p_value"], 1e-12) for a in pts], c=colour,
                      label="passed" if ok else "failed")
    if attempts:
        ax[1].axhline(attempts[-1]["alpha"], ls="--", c="grey", lw=1)
        ax[1].axvline(attempts[-1]["min_effect"], ls=":", c="grey", lw=1)
    ax[1].set_yscale("log")
    ax[1].set_xlabel("probe uplift over the host")
    ax[1].set_ylabel("p-value (McNemar)")
    ax[1].set_title("uplift vs significance (dashed: alpha, dotted: min effect)")
    _save(plt, fig, path)


def plot_accuracy(data: dict, path: Path) -> None:
    plt = _plt()
    gens = [g for g in data["gens"] if "scores" in g["summary"]]
    families = sorted(data["baseline"]["test"] or {f for g in gens for f in g["summary"]["scores"]["test"]})
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = ["base"] + [g["gid"] for g in gens]
    for k, f in enumerate(families):
        for part, style in zip(PARTS, ("o-", "s--")):
            ax.plot(names, [data["baseline"][part].get(f, float("nan"))] +
                    [g["summary"]["scores"][part].get(f, float("nan")) for g in gens], style, color=f"C{k}",
                    label=f"{f} ({'new phrasings' if part == 'transfer' else 'test'})")
        if f in data["baseline"]["constant"].get("test", {}):  # what always giving one answer scores
            ax.axhline(data["baseline"]["constant"]["test"][f], color=f"C{k}", linestyle=":", linewidth=1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("test accuracy (strict)")
    ax.set_title("test accuracy per family (dashed: held-out phrasings; dotted: a constant answer)", fontsize=10)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    _save(plt, fig, path)


def plot_lineage(data: dict, path: Path) -> None:
    """Organelles as lines from birth to their last generation (star: assimilated, x: culled),
    crossover/clone parents joined to children; the generations' verdicts along the bottom."""
    plt = _plt()
    gens = data["gens"]
    life: dict[str, dict] = {}
    for k, g in enumerate(gens, start=1):
        for o in g["population"]:
            entry = life.setdefault(o["id"], {"born": o["born"], "parents": o["parents"], "species": o["species"]})
            entry["last"] = k
        for oid in g["summary"].get("assimilated", []):
            life[oid]["fate"] = "assimilated"
        for oid in g["summary"].get("culled", []):
            life[oid]["fate"] = "culled"
    order = sorted(life, key=lambda o: (life[o]["born"], o))
    y = {oid: i for i, oid in enumerate(order)}
    families = sorted({v["species"] for v in life.values()})
    colours = dict(zip(families, plt.cm.tab10.colors))
    fig, ax = plt.subplots(figsize=(max(7, 3 + 1.6 * len(gens)), 2 + 0.28 * len(order)))
    for oid in order:
        o = life[oid]
        start = max(o["born"], 1)
        ax.plot([start, o["last"]], [y[oid], y[oid]], "-", color=colours[o["species"]], lw=2)
        marker = {"assimilated": "*", "culled": "x"}.get(o.get("fate"), "o")
        ax.plot(o["last"], y[oid], marker, color=colours[o["species"]], ms=11 if marker == "*" else 7)
        for p in o["parents"]:
            if p in y:
                ax.plot([start - 0.5, start], [y[p], y[oid]], "-", color="grey", lw=0.8)
        ax.text(start - 0.08, y[oid], oid, ha="right", va="center", fontsize=7)
    for k, g in enumerate(gens, start=1):
        verdict = g["record"]["ledger"]["gate_verdict"]
        ax.scatter([k], [-1.2], s=260, marker="s", color=VERDICT_COLOURS.get(verdict, "grey"))
        ax.text(k, -2.1, f"{g['gid']}\n{verdict}", ha="center", va="top", fontsize=8)
    for f in families:
        ax.plot([], [], "-", color=colours[f], label=f)
    ax.set_ylim(-3.2, len(order))
    ax.set_xlim(0.2, len(gens) + 0.6)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_title("lineage (★ assimilated, × culled, ● alive)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1))
    _save(plt, fig, path)


def plot_gate(rows: list[dict], path: Path, thresholds: dict) -> None:
    """The gate's measures per generation, parent (dashed) beside child; a fourth panel when the
    ladder learned conversation deltas (answer log-likelihood of held-out conversations)."""
    plt = _plt()
    names = [r["generation"] for r in rows]
    conversations = any(r["heldout_loglik_child"] not in ("", None) for r in rows)
    fig, ax = plt.subplots(1, 3 + conversations, figsize=(13 + 4 * conversations, 3.6))
    panels = [("recall", f"recall on the parent's QA set (max drop {thresholds['recall_drop_max']})"),
              ("generalization", "generalization (holdout of new families)")]
    if conversations:
        panels.append(("heldout_loglik", "held-out conversations: answer log-lik."))
    for a, (key, title) in zip([ax[0], ax[1], *ax[3:]], panels):
        a.plot(names, _num(rows, f"{key}_parent"), "s--", label="parent")
        a.plot(names, _num(rows, f"{key}_child"), "o-", label="child")
        a.set_title(title)
        a.legend(fontsize=8)
    if conversations:
        ax[3].plot(names, _num(rows, "recall_loglik_child"), "x", color="tab:purple", ms=9,
                   label="child, earlier deltas (recall)")
        ax[3].legend(fontsize=8)
    ax[2].plot(names, _num(rows, "style_drift"), "o-", color="tab:red")
    ax[2].axhline(thresholds["max_kl"], ls="--", c="grey", lw=1)
    ax[2].set_title("style drift KL (dashed: max_kl)")
    for a in ax:
        for i, r in enumerate(rows):
            a.axvspan(i - 0.4, i + 0.4, color=VERDICT_COLOURS.get(r["verdict"], "grey"), alpha=0.08)
    _save(plt, fig, path)


def step_minutes(timeline: list) -> dict[str, float]:
    """Minutes per step from a generation's timeline of (step, minutes elapsed) marks; the learn
    marks ("learn 2/5") are summed into one "learn"."""
    out, before = {}, 0.0
    for what, minutes in timeline:
        name = what.split(" ")[0]
        out[name] = out.get(name, 0.0) + minutes - before
        before = minutes
    return out


def markdown(data: dict, rows: list[dict], last: int) -> str:
    out = ["# Cambrian ladder report", "",
           "Figures in `plots/`; `dvc plots show` draws the same per-generation curves.", "",
           "ppl: general-text perplexity of the child, of its parent and of the lineage's root (G0), as its gate "
           "measured them (the child may exceed each by at most `gate.max_ppl_increase` and "
           "`gate.max_ppl_increase_total`).", "",
           "| generation | verdict | why | assimilated | ppl child / parent / root | ROI mean | energy Gini | eff. population |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g, r in zip(data["gens"], rows):
        led = g["record"]["ledger"]
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
        ppl = " / ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else "-" for k in ("ppl_child", "ppl_parent", "ppl_root"))
        out.append(f"| {g['gid']} | {led['gate_verdict']} | {led['gate_reason']} | "
                   f"{', '.join(g['summary'].get('assimilated', [])) or '-'} | {ppl} | {fmt(r['roi_mean'])} | "
                   f"{fmt(r['energy_gini'])} | {fmt(r['effective_population'])} |")
    out += ["", "![ecology](plots/ecology.png)", "![species](plots/species.png)", "",
            "## Assimilation", ""]
    attempts = [a for g in data["gens"] for a in g["attempts"]]
    out.append(f"{len(attempts)} attempts, {sum(a['passed'] for a in attempts)} passed. The last {min(last, len(attempts))}:")
    out += ["", "| gen | organelle | species | control | treatment | uplift (min) | p | holdout | top-up | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in attempts[-last:]:
        out.append(f"| {a['gen']} | {a['organelle']} | {a['species']} | {a['control_mean']:.3f} | "
                   f"{a['treatment_mean']:.3f} | {a['uplift']:+.3f} ({a['min_effect']}) | {a['p_value']:.2g} | "
                   f"{'pass' if a['holdout_pass'] else 'fail'} | {'yes' if a['topup'] else 'no'} | {a['reason']} |")
    out += ["", "![assimilation](plots/assimilation.png)", "", "## Accuracy, lineage and gate", "",
            "Strict accuracy on the test split, which no training or selection step ever reads; the "
            "transfer rows ask the same skills in phrasings that no training or selection row uses. "
            "constant: what always giving the family's most common answer scores on the same challenges. "
            f"⚑: the replies collapsed (one final answer is at least {COLLAPSED:.0%} of them, more than of the gold "
            "answers): that accuracy is not a skill.", "",
            "| family | constant | base | " + " | ".join(g["gid"] for g in data["gens"]) + " |",
            "|---" * (len(data["gens"]) + 3) + "|"]
    checkpoints = [("base", data["baseline"]), *((g["gid"], g["summary"].get("scores", {})) for g in data["gens"])]
    flagged = []
    for f in sorted(data["baseline"]["test"]):
        for part in PARTS:
            cells = []
            constant = data["baseline"]["constant"].get(part, {}).get(f)
            for gid, scores in checkpoints:
                share = scores.get("top_share", {}).get(part, {}).get(f, 0.0)
                flag = collapsed(share, constant if constant is not None else 0.0)
                cells.append(f"{scores.get(part, {}).get(f, float('nan')):.3f}" + (" ⚑" if flag else ""))
                if flag:
                    reply = scores.get("top_reply", {}).get(part, {}).get(f)  # the bare host's is not kept
                    flagged.append(f"{gid} {f} ({part}): {share:.0%} of the replies are "
                                   f"{json.dumps(reply) if reply is not None else 'one answer'}")
            out.append(f"| {f} ({part}) | {'-' if constant is None else f'{constant:.3f}'} | " + " | ".join(cells) + " |")
    if flagged:
        out += ["", "Collapsed, not counted as learning: " + "; ".join(flagged) + "."]
    out += ["", "![accuracy](plots/accuracy.png)", "![lineage](plots/lineage.png)", "![gate](plots/gate.png)", ""]
    minutes = {g["gid"]: step_minutes(g["timing"]["timeline"]) for g in data["gens"]}
    steps = list(dict.fromkeys(k for m in minutes.values() for k in m))
    out += ["## Where the time went", "",
            "Minutes per step as this run measured them (a step served from the cache costs ~0).", "",
            "| generation | " + " | ".join(steps) + " | total |", "|---" * (len(steps) + 2) + "|"]
    for g in data["gens"]:
        m = minutes[g["gid"]]
        out.append(f"| {g['gid']} | " + " | ".join(f"{m[k]:.1f}" if k in m else "-" for k in steps) +
                   f" | {g['timing']['walltime_min'] or 0.0:.1f} |")
    return "\n".join(out) + "\n"


def write(gids: list[str], runs: Path, baseline: Path, out: Path, thresholds: dict, last: int = 10) -> Path:
    data = load(gids, runs, baseline)
    rows = table(data)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "plots") as tmp:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "generations.csv").write_text(buf.getvalue())
        plot_ecology(rows, tmp / "ecology.png")
        plot_species(data, tmp / "species.png")
        plot_assimilation(data, tmp / "assimilation.png")
        plot_accuracy(data, tmp / "accuracy.png")
        plot_lineage(data, tmp / "lineage.png")
        plot_gate(rows, tmp / "gate.png", thresholds)
    atomic_write_text(out / "report.md", markdown(data, rows, last))
    return out / "report.md"


# The compare and continual benchmarks' tables and figures (flows/compare.py, flows/continual.py).

def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval; 0 for a single seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5


def compare_summary(cells: list[dict], host: dict, families: list[str]) -> dict:
    """Per recipe: mean and 95% interval over its seeds of every column."""
    out = {}
    for recipe in dict.fromkeys(c["recipe"] for c in cells):
        mine = [c for c in cells if c["recipe"] == recipe]
        cols = {**{f"test_{f}": [c["test"][f] for c in mine] for f in families},
                **{f"top_share_{f}": [c["top_share"]["test"][f] for c in mine if "top_share" in c] or [0.0]
                   for f in families},
                "test_mean": [statistics.fmean(c["test"][f] for f in families) for c in mine],
                # families of your own have no transfer part: with only those, no transfer column
                **({"transfer_mean": [statistics.fmean(c["transfer"].values()) for c in mine]}
                   if all(c["transfer"] for c in mine) else {}),
                "ppl_change": [c["ppl"] / host["ppl"] - 1 for c in mine],
                "rows": [c["rows"] for c in mine], "minutes": [c["minutes"] for c in mine]}
        out[recipe] = {"seeds": [c["seed"] for c in mine], **{k: interval(v) for k, v in cols.items()}}
    return out


def _compare_cell(column: str, mean: float, half: float, flag: bool = False) -> str:
    """A table cell: rows as a count, minutes to 0.1, the rest to 3 decimals with the interval; ⚑
    where a family's replies collapsed (`flag`)."""
    if column in ("rows", "minutes"):
        return f"{mean:.0f}" if column == "rows" else f"{mean:.1f}"
    text = f"{mean:+.3f}" if column == "ppl_change" else f"{mean:.3f}"
    return text + (f" ± {half:.3f}" if half else "") + (" ⚑" if flag else "")


def compare_table(agg: dict, host: dict, families: list[str], preset: str) -> str:
    cols = [*(f"test_{f}" for f in families), "test_mean", "transfer_mean", "ppl_change", "rows", "minutes"]
    constant = host.get("constant", {}).get("test", {})
    lines = [f"Preset `{preset}` (compare.preset). Strict accuracy on the test split (no training or selection step reads it); transfer: the same skills "
             "asked in phrasings no training row uses. Mean ± half-width of the 95% t-interval over the seeds shown; "
             "ppl_change: general-text perplexity relative to the bare host; rows: SFT rows seen. constant answer: what "
             f"always giving a family's most common answer scores; ⚑: the replies collapsed (one answer is at least "
             f"{COLLAPSED:.0%} of them, mean over the seeds), so that accuracy is not a skill.", "",
             "| recipe | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|",
             *([f"| constant answer | - | " + " | ".join([*(f"{constant[f]:.3f}" for f in families),
                                                         f"{statistics.fmean(constant[f] for f in families):.3f}",
                                                         "-", "-", "0", "0"]) + " |"] if constant else []),
             "| bare host | - | " + " | ".join(
                 [*(f"{host['test'][f]:.3f}" for f in families), f"{statistics.fmean(host['test'].values()):.3f}",
                  f"{statistics.fmean(host['transfer'].values()):.3f}" if host["transfer"] else "-",
                  "+0.000", "0", "0"]) + " |"]
    for recipe, a in agg.items():
        flags = {f"test_{f}": collapsed(a[f"top_share_{f}"][0], constant.get(f, 0.0)) for f in families}
        lines.append(f"| {recipe} | {len(a['seeds'])} | " + " | ".join(
            _compare_cell(c, *a[c], flags.get(c, False)) if c in a else "-" for c in cols) + " |")
    return "\n".join(lines) + "\n"


# The stream table's columns: what each recipe ends with, and what it cost.
STREAM_COLUMNS = {"final_seen_acc_avg": "final mean", "final_max_forgetting": "largest drop", "final_bwt": "BWT",
                  "final_ppl_increase": "perplexity vs bare", "final_sft_rows": "SFT rows", "final_minutes": "minutes",
                  "final_bad_published": "bad deltas published"}


def continual_table(runs: list[dict], recipes: list[str], preset: str) -> str:
    """The stream table: per recipe the mean and 95% interval over seeds of STREAM_COLUMNS, then the final
    accuracy per family (first seed) beside the bare host and the constant answer, collapsed replies flagged."""
    def cell(key: str, values: list[float]) -> str:
        mean, half = interval(values)
        if key == "final_sft_rows":
            return f"{mean:.0f}"
        if key == "final_minutes":
            return f"{mean:.1f}"
        if key == "final_bad_published":
            return f"{mean:g} of {runs[0]['bad_deltas']}"
        if key == "final_ppl_increase":  # a percentage, its interval too
            return f"{mean:+.1%}" + (f" ± {half:.1%}" if half else "")
        return (f"{mean:+.3f}" if key == "final_bwt" else f"{mean:.3f}") + (f" ± {half:.3f}" if half else "")
    seeds, first = sorted({r["seed"] for r in runs}), runs[0]
    families = first["families"]
    lines = [f"Preset `{preset}` (continual.preset), stream {' -> '.join(first['order'])}. Mean ± half-width of the "
             f"95% t-interval over seeds {seeds}; accuracy is exact match on test challenges no step reads.",
             "", "| recipe | " + " | ".join(STREAM_COLUMNS.values()) + " |", "|---" * (len(STREAM_COLUMNS) + 1) + "|"]
    for recipe in recipes:
        mine = [r for r in runs if r["recipe"] == recipe]
        lines.append(f"| {recipe} | " + " | ".join(cell(k, [float(r[k]) for r in mine]) for k in STREAM_COLUMNS) + " |")
    lines += ["", f"Final accuracy per family, seed {first['seed']} (⚑: replies collapsed to one value, not learning):",
              "", "| | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|",
              "| constant answer | " + " | ".join(f"{c:.2f}" for c in first["constant"]) + " |",
              "| bare host | " + " | ".join(f"{b:.2f}" for b in first["b"]) + " |"]
    for r in runs:
        if r["seed"] == first["seed"]:
            lines.append(f"| {r['recipe']} | " + " | ".join(
                f"{a:.2f}" + (" ⚑" if collapsed(s, c) else "") for a, s, c in zip(r["A"][-1], r["top_share_end"], r["constant"])) + " |")
    ladder, joint = ([r for r in runs if r["recipe"] == k] for k in ("ladder", "joint"))
    if ladder and joint:
        mean = lambda key, rs: statistics.fmean(r[key] for r in rs)  # noqa: E731
        lines += ["", f"Ladder against joint retraining: final mean {mean('final_seen_acc_avg', ladder) / max(mean('final_seen_acc_avg', joint), 1e-9):.2f}x "
                  f"(target >= 0.95x), SFT rows {mean('final_sft_rows', ladder) / mean('final_sft_rows', joint):.2f}x (target <= 0.5x)."]
    return "\n".join(lines) + "\n"


def stream_figure(runs: list[dict], path: Path) -> None:
    """One A matrix per recipe (its first seed) side by side, and final mean against cumulative SFT rows."""
    plt = _plt()
    shown = list({r["recipe"]: r for r in reversed(runs)}.values())[::-1]  # the first seed of each recipe
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(3.1 * len(shown) + 4.2, 3.9))
    for ax, run in zip(axes, shown):
        ax.imshow(run["A"], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(run["families"])), run["families"], rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(run["order"])), [f"after {e}" for e in run["order"]] if ax is axes[0] else [""] * len(run["order"]),
                      fontsize=7)
        for i, row in enumerate(run["A"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=6)
        ax.set_title(f"{run['recipe']} (seed {run['seed']})", fontsize=9)
    ax = axes[-1]
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        mine = [r for r in runs if r["recipe"] == recipe]
        ax.scatter([r["final_sft_rows"] for r in mine], [r["final_seen_acc_avg"] for r in mine], label=recipe)
    ax.axhline(statistics.fmean(runs[0]["constant"]), color="grey", ls=":", label="constant answer")
    ax.set_xlabel("cumulative SFT rows")
    ax.set_ylabel("final mean accuracy")
    ax.legend(fontsize=7)
    _save(plt, fig, path, dpi=110)
