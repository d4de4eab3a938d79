"""The cached-step decorator (flows/steps.py): results are plain JSON that is never executed, a
tampered or foreign result is recomputed, and every step runs with the same torch thread count
whatever the process it lands in was started with; a step is keyed on, and reads, only the params
sections it declares, and on exactly the code it can run, which the DVC stages name as their deps."""
import json
import pickle
from pathlib import Path

import pytest
import torch

from cambrian.checkpoint import Ref, home
from cambrian.config import Params, ParamsError, restricted
import flows.steps
from flows.steps import THREADS, cache_key, code_files, step, step_code

CALLS = []


def _matmul_sum(seed: int, parent: Ref = Ref("", "")) -> dict:
    CALLS.append(seed)
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(384, 512, generator=g), torch.randn(512, 256, generator=g)
    return {"threads": torch.get_num_threads(), "sum": (a @ b).sum().item(), "pair": (1, 2)}


def _result_file(seed: int):
    return home() / "results" / f"{cache_key(_matmul_sum, {'seed': seed, 'parent': Ref('', '')})}.json"


class _Payload:
    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(home() / "pwned"), "w"))


def test_a_step_runs_with_fixed_threads_whatever_the_process_started_with():
    run = step("matmul")(_matmul_sum).fn
    before = torch.get_num_threads()
    try:
        results = []
        for ambient, seed in ((1, 11), (3, 12)):  # a Dask worker starts with 1; a flow process with the cores
            torch.set_num_threads(ambient)
            results.append(run(seed=seed))
            assert results[-1]["threads"] == THREADS
        torch.set_num_threads(1)
        _result_file(11).unlink()
        again = run(seed=11)
        assert again == results[0]  # same bits of the float sum, though the caller had 1 thread, then 3
    finally:
        torch.set_num_threads(before)


def test_results_are_json_keyed_by_inputs_and_folders_by_content_and_reused():
    run = step("matmul")(_matmul_sum).fn
    CALLS.clear()
    first = run(seed=21)
    assert first["pair"] == [1, 2]  # plain JSON data, the same on a cache hit as when computed
    record = json.loads(_result_file(21).read_text())
    assert record["result"] == first and record["step"] == "matmul"
    run(seed=21, parent=Ref("/a", "sha-1")), run(seed=21, parent=Ref("/b", "sha-1"))
    assert CALLS == [21, 21]  # a folder is keyed by its content's sha, not by where it lies
    run(seed=21, parent=Ref("/a", "sha-2")), run(seed=22)
    assert CALLS == [21, 21, 21, 22]


def test_a_tampered_result_is_recomputed_never_executed(monkeypatch):
    run = step("matmul")(_matmul_sum).fn
    CALLS.clear()
    honest = run(seed=31)
    path = _result_file(31)
    edited = json.loads(path.read_text())
    edited["result"]["sum"] += 1.0  # a forged value in a well-formed record, its signature kept
    for forged in (pickle.dumps(_Payload()),  # what Prefect's pickle cache would have run
                   json.dumps({"key": "0" * 64, "result": {"sum": 0.0}}).encode(),  # another key's record
                   b'{"key": "' + path.stem.encode() + b'", "resu',  # half-written
                   json.dumps(edited).encode()):
        path.write_bytes(forged)
        assert run(seed=31) == honest
    assert CALLS == [31] * 5 and not (home() / "pwned").exists()
    monkeypatch.setenv("CAMBRIAN_SECRET", "another machine's key")  # signed with another key: recomputed
    assert run(seed=31) == honest and CALLS == [31] * 6
    assert run(seed=31) == honest and CALLS == [31] * 6  # and then a hit under this key


def _read_gate(params: dict) -> list:
    p = restricted(params)
    CALLS.append(p.gate.max_kl)
    return [p.gate.max_kl, p.eval.batch_size]


def _read_colony(params: dict) -> float:
    return restricted(params).colony.lr


def test_a_step_is_keyed_on_its_own_params_sections_and_reads_no_other():
    run = step("gate-like", sections=("gate", "eval"))(_read_gate).fn
    CALLS.clear()
    params = Params().for_steps()
    assert run(params=params) == [0.5, 64]
    # Another section changed: a cache hit. Its own section changed: computed again.
    assert run(params={**params, "colony": {**params["colony"], "lr": 0.5}}) == [0.5, 64] and CALLS == [0.5]
    assert run(params={**params, "gate": {**params["gate"], "max_kl": 0.25}}) == [0.25, 64] and CALLS == [0.5, 0.25]
    with pytest.raises(ParamsError, match="'colony' is read by a step that does not declare it"):
        step("sneaky", sections=("gate",))(_read_colony).fn(params=params)


def _measure_like(params: dict) -> int:
    p = restricted(params)
    CALLS.append(p.gate.reply_tokens)
    return p.gate.reply_tokens


def _judge_like(params: dict) -> float:
    return restricted(params).gate.max_kl


def test_a_step_declaring_single_keys_is_keyed_on_those_keys_only():
    """The gate step declares the keys it measures with, not the thresholds: editing a threshold
    re-judges from the cached measurement; editing a key it declared measures again."""
    run = step("measure-like", sections=("gate.reply_tokens", "gate.neutral_prompts"))(_measure_like).fn
    CALLS.clear()
    params = Params().for_steps()
    assert run(params=params) == 32
    assert run(params={**params, "gate": {**params["gate"], "max_kl": 0.01}}) == 32 and CALLS == [32]
    assert run(params={**params, "gate": {**params["gate"], "reply_tokens": 8}}) == 8 and CALLS == [32, 8]
    with pytest.raises(ParamsError, match="key 'gate.max_kl' is read by a step that does not declare it"):
        step("sneaky-key", sections=("gate.reply_tokens",))(_judge_like).fn(params=params)
    with pytest.raises(ValueError, match="declares 'gate.reply_token'"):
        step("misspelt", sections=("gate.reply_token",))


FLOW = """\"\"\"A flow.\"\"\"
import functools
from tasks.t import g
from cambrian import table
LIMIT = 3
LIMIT += 1


def _helper():
    return g() + LIMIT


@functools.lru_cache(maxsize=1)
def _other():
    return table.X


def one():
    from cambrian import util
    return _helper()


def two():
    return _other()
"""


def test_a_step_is_keyed_on_the_code_it_can_run_and_nothing_else(tmp_path, monkeypatch):
    for name, text in {"flows/__init__.py": "", "tasks/__init__.py": "", "cambrian/__init__.py": "",
                       "flows/f.py": FLOW, "tasks/t.py": "import json\n\ndef g():\n    return 1\n",
                       "cambrian/util.py": "X = 1\n", "cambrian/table.py": "X = 1\n",
                       "cambrian/report.py": "from tasks.t import g\n"}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(flows.steps, "_ROOT", tmp_path)
    flow = str(tmp_path / "flows/f.py")
    # A step's own code: what it names in its flow module, at any depth, and what those import.
    sources, files = step_code(flow, "one")
    assert [s.split("\n")[0] for s in sources] == ["from tasks.t import g", "LIMIT = 3", "LIMIT += 1",
                                                   "def _helper():", "def one():"]
    assert {str(p.relative_to(tmp_path)) for p in files} == {"tasks/__init__.py", "tasks/t.py",
                                                             "cambrian/__init__.py", "cambrian/util.py"}
    # A module's code: everything it imports, directly, through a helper module or inside a function.
    assert {str(p.relative_to(tmp_path)) for p in code_files(flow)} == {
        "flows/f.py", "tasks/__init__.py", "tasks/t.py", "cambrian/__init__.py", "cambrian/util.py", "cambrian/table.py"}
    sha = flows.steps._code_sha.__wrapped__

    def edit(name, old, new):
        before = {s: sha(flow, s) for s in ("one", "two")}
        (tmp_path / name).write_text((tmp_path / name).read_text().replace(old, new))
        return {s for s in before if sha(flow, s) != before[s]}

    assert edit("cambrian/report.py", "g\n", "g\nY = 2\n") == set()  # a module no step runs
    assert edit("flows/f.py", "def one():\n", "def one():\n    \"\"\"Says what it does.\"\"\"  # and why\n") == set()
    assert edit("cambrian/table.py", "X = 1\n", "X = 1\n\"\"\"What X is.\"\"\"\n") == set()  # a docstring, a comment
    assert edit("flows/f.py", "g() + LIMIT", "g() - LIMIT") == {"one"}  # a flow helper: the steps that call it
    assert edit("flows/f.py", "LIMIT = 3", "LIMIT = 4") == {"one"}  # a constant of the flow
    assert edit("flows/f.py", "LIMIT += 1", "LIMIT += 2") == {"one"}  # every statement that binds it
    assert edit("flows/f.py", "maxsize=1", "maxsize=2") == {"two"}  # a decorator
    assert edit("cambrian/table.py", "X = 1", "X = 2") == {"two"}  # a module imported at the top
    assert edit("cambrian/util.py", "X = 1", "X = 2") == {"one"}  # a module imported inside a function
    assert edit("tasks/t.py", "return 1", "return 2") == {"one"}
    # A top-level statement whose effect no key could follow is refused, not silently left out.
    (tmp_path / "flows/f.py").write_text(FLOW + "\ntable.X = 2\n")
    with pytest.raises(ValueError, match=rf"f.py:{len(FLOW.splitlines()) + 2}: a top-level statement .* \(Assign\)"):
        step_code(flow, "two")


def test_each_dvc_stage_depends_on_exactly_the_code_it_runs():
    import yaml

    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    # stage -> the modules its command runs (through flows/cli.py)
    entries = {"host": ["cambrian/host.py", "cambrian/ledger.py"], "challenges": ["cambrian/challenges.py"],
               "baseline": ["flows/generation_steps.py"],  # the generation's score step
               **{flow: [f"flows/{flow}.py"] for flow in ("generation", "evomerge", "continual", "compare")},
               "ledger": ["cambrian/ledger.py"], "report": ["cambrian/report.py"]}
    for stage, modules in entries.items():
        deps = stages[stage].get("do", stages[stage])["deps"]
        code = {str(p.relative_to(root)) for m in modules for p in code_files(root / m)}
        assert {d for d in deps if d.endswith(".py")} == code | {"flows/__init__.py", "flows/cli.py"}, stage
        # the ladder's report re-runs no rung (the compare and continual flows write their tables with it)
        assert stage in ("report", "compare", "continual") or "cambrian/report.py" not in deps


def test_a_generation_stage_depends_on_every_params_section_a_generation_reads():
    """dvc.yaml's generation stage names each section whose change changes a generation's result, so
    `dvc repro` re-runs it (conversations: how a conversation delta's generation trains)."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    entries = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["generation"]["do"]["params"]
    params = {key for e in entries for key in ([e] if isinstance(e, str) else [f"{f}:{k}" for f, ks in e.items() for k in ks])}
    assert {"seed", "eval", "colony", "conversations", "bandit", "energy", "assimilate", "merge",
            "params/sleep.yaml:sleep", "gate", "ladder.${key}"} <= params


def test_each_floor_imports_only_the_floors_below_it_and_no_module_imports_itself_back():
    """cambrian/ (the library) < tasks/ (the steps) < flows/ (the flows, their cached steps and the
    command line): no import reaches up a floor, and no path of imports (top-level or inside a
    function; not those under `if TYPE_CHECKING:`, which never run) leads from a module back to it."""
    import ast

    root = Path(__file__).resolve().parents[1]
    floor = {"cambrian": 0, "tasks": 1, "flows": 2}

    def named(tree) -> set[str]:
        found, typing_only = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                typing_only |= {id(n) for n in ast.walk(node)}
            if isinstance(node, ast.Import) and id(node) not in typing_only:
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and id(node) not in typing_only:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}  # module a, or a.b
        return {m for m in found if m.split(".")[0] in floor and (root / m.replace(".", "/")).with_suffix(".py").is_file()}

    top = {}
    for path in sorted(p for name in floor for p in (root / name).glob("*.py")):
        module = f"{path.parent.name}.{path.stem}"
        top[module] = named(ast.parse(path.read_text()))
        assert all(floor[m.split(".")[0]] <= floor[path.parent.name] for m in top[module]), (module, top[module])

    def reach(module, seen):
        for m in top.get(module, ()):
            if m not in seen:
                seen.add(m)
                reach(m, seen)
        return seen
    assert [m for m in top if m in reach(m, set())] == []
