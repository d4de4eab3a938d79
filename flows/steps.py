"""Cached pipeline steps, built once for every flow.

`@step("name")` turns a plain function over plain data into a Prefect task whose result is cached
across processes and machines, and which computes the same bytes wherever it runs:

- key: sha256 of the step's module and name, the code it can run (`step_code`: its own source and
  that of every top-level statement of its flow module that binds a name it uses, at any depth,
  and every repository module those import, with all that they import; a helper of the flow that
  the step never calls, the report or the CLI are not among them) and its arguments as JSON, a
  folder (`cambrian.checkpoint.Ref`) by the sha256 of its contents alone, never by where it lies. A
  step that declares `sections` gets, and is keyed on, only those parts of its `params` argument (and the seed),
  whole sections or single keys (`cambrian.config.declared`): changing `colony.lr` re-runs learn, not
  the gate; changing a gate threshold re-runs no step at all (the gate step declares only the keys it
  measures with). It reads them with `cambrian.config.restricted`, which refuses anything it did not declare.
- result: plain JSON in CAMBRIAN_HOME/results/<key>.json, written atomically with the seconds it
  took (benchmarks/ reads them for the per-step table) and signed (HMAC-SHA256 with `secret()`).
  Never a pickle, so a result file can never run code; one that is not what this module wrote and
  signed for that key (a pickle, another key's record, a half-written file, an edited value) is
  ignored and the step recomputes.
- threads: torch runs every step with exactly `THREADS` intra-op threads, in the flow's process and
  in a Dask worker alike (workers start with OMP_NUM_THREADS=1). Float reductions are summed in an
  order that depends on the thread count, so a fixed count is what makes the bytes independent of
  the runner.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import hmac
import inspect
import json
import os
import secrets
import time
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger

from cambrian.checkpoint import Ref, atomic_write_text, home
from cambrian.config import Params, declared

THREADS = 2
_ROOT = Path(__file__).resolve().parents[1]


def _module_files(name: str) -> list[Path]:
    """The repository's files that importing module `name` runs: its packages' __init__ and its own
    file (none for library modules)."""
    parts, files = name.split("."), []
    for i in range(1, len(parts) + 1):
        base = _ROOT.joinpath(*parts[:i])
        files += [f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()][:1]
    return files


def _imported(node: ast.AST) -> list[str]:
    """The modules an import statement names (`from a.b import c` -> a.b and a.b.c)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return []


def code_files(*module_files: str | Path) -> list[Path]:
    """The repository's Python files `module_files` can run: themselves and every module they
    import, at any depth and wherever the import stands (inside a function too), packages'
    __init__ included. Library code is left out: requirements.lock pins it."""
    todo, seen = [Path(f).resolve() for f in module_files], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(node):
                todo += _module_files(name)
    return sorted(seen)


def _top_level(tree: ast.Module, where: str) -> dict[str, list[ast.AST]]:
    """Name -> the top-level statements of a module that bind it (defs, classes, imports, plain
    assignments). Any other top-level statement raises: no step could say whether it runs it."""
    bound: dict[str, list[ast.AST]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and all(isinstance(t, (ast.Name, ast.Tuple))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
            names = [t.id for t in ast.walk(node) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)]
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
            continue  # the docstring
        else:
            raise ValueError(f"{where}:{node.lineno}: a top-level statement that no step's cache key can "
                             f"account for ({type(node).__name__}): move it into a function")
        for name in names:
            bound.setdefault(name, []).append(node)
    return bound


def step_code(module_file: str | Path, name: str) -> tuple[list[str], list[Path]]:
    """The code step `name` of the flow module `module_file` can run: (the source, decorators
    included, of its own definition and of every top-level statement of that module that binds a
    name it uses, at any depth; the files of every repository module those import, with all they
    import). A helper of the flow module that the step never names is not part of it."""
    text = Path(module_file).read_text()
    lines, bound = text.splitlines(), _top_level(ast.parse(text), str(module_file))
    todo, seen, modules = list(bound[name]), [], set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.append(node)
        for sub in ast.walk(node):
            modules.update(_imported(sub))
            if isinstance(sub, ast.Name) and sub.id in bound:
                todo += bound[sub.id]
    starts = [min([n.lineno, *(d.lineno for d in getattr(n, "decorator_list", []))]) for n in seen]  # decorators
    return (["\n".join(lines[start - 1:n.end_lineno]) for start, n in sorted(zip(starts, seen), key=lambda x: x[0])],
            code_files(*{f for m in modules for f in _module_files(m)}))


def _meaning(source: str) -> bytes:
    """Python source as what it does: its syntax tree without comments, layout or bare strings (the
    docstrings, those under params' fields in cambrian/config.py included), so rewording one re-keys no step."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(getattr(node, "body", None), list):
            node.body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                                      and isinstance(n.value.value, str))] or [ast.Pass()]
    return ast.dump(tree).encode()


@functools.cache
def _code_sha(module_file: str, name: str) -> str:
    sources, files = step_code(module_file, name)
    h = hashlib.sha256(b"\0".join(_meaning(s) for s in sources))
    for p in files:
        h.update(str(p.relative_to(_ROOT)).encode() + b"\0" + _meaning(p.read_text()))
    return h.hexdigest()


def _log():
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow (tests, notebooks)
        return get_logger("cambrian")


def cache_key(fn, arguments: dict) -> str:
    inputs = {k: v.sha if isinstance(v, Ref) else v for k, v in arguments.items()}  # a folder by its content
    text = json.dumps([fn.__module__, fn.__name__, _code_sha(inspect.getsourcefile(fn), fn.__name__), inputs],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def secret() -> bytes:
    """The key results are signed with: CAMBRIAN_SECRET, else a random one made once and kept, readable
    by its owner only, in ~/.config/cambrian/secret (machines sharing a step store share it through
    CAMBRIAN_SECRET; a result signed with another key is recomputed)."""
    if os.environ.get("CAMBRIAN_SECRET"):
        return os.environ["CAMBRIAN_SECRET"].encode()
    try:
        path = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cambrian" / "secret"
        if not path.is_file():  # written whole, then linked into place: a reader never sees half a key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".secret-{os.getpid()}")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # the first process to get here makes it; every other one reads it
            except FileExistsError:
                pass
            tmp.unlink()
        return path.read_bytes()
    except (OSError, RuntimeError) as err:
        raise RuntimeError(f"no place to keep the key that signs cached results ({err}): set CAMBRIAN_SECRET") from None


def _mac(key: str, result) -> str:
    return hmac.new(secret(), json.dumps([key, result], sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _cached(path: Path, key: str):
    """(True, result) when `path` holds this key's result as written and signed by this module,
    else (False, None)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False, None
    if not isinstance(record, dict) or record.get("key") != key or "result" not in record or \
            not hmac.compare_digest(str(record.get("mac")), _mac(key, record["result"])):
        return False, None
    return True, record["result"]


def step(name: str, sections: tuple[str, ...] | None = None):
    """Decorator: a cached, thread-pinned Prefect task named `name` (see the module docstring)."""
    for part in sections or ():  # a misspelt declaration fails as the module loads, not when the step runs
        section, _, key = part.partition(".")
        field = Params.model_fields.get(section)
        if field is None or key and key not in getattr(field.annotation, "model_fields", {}):
            raise ValueError(f"step {name!r} declares {part!r}: params have no such section or key")

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if sections is not None:
                bound.arguments["params"] = declared(bound.arguments["params"], sections)
            key = cache_key(fn, bound.arguments)
            path = home() / "results" / f"{key}.json"
            hit, result = _cached(path, key)
            if hit:
                _log().info(f"{name}: from cache ({key[:12]})")
                return result
            torch.set_num_threads(THREADS)
            start = time.perf_counter()
            result = json.loads(json.dumps(fn(*bound.args, **bound.kwargs)))  # plain data only
            seconds = round(time.perf_counter() - start, 3)
            atomic_write_text(path, json.dumps({"key": key, "step": name, "seconds": seconds, "result": result,
                                                "mac": _mac(key, result)}, sort_keys=True))
            _log().info(f"{name}: computed in {seconds:.1f} s ({key[:12]})")
            return result
        return task(name=name, cache_policy=NO_CACHE, persist_result=False)(run)
    return wrap

