"""The table of architectures (cvfp.models.registry) and the package's shape: every name has one row, every
other module asks the table, the zero-context control is a row like any other, and the layers import
downward only."""

from __future__ import annotations

import ast
import pathlib
import typing

import pytest
import torch

from cvfp.config import Arch, ModelConfig
from cvfp.data.embeddings import resolve_config
from cvfp.models import ARCHS, CVFPModel, SequenceLM, build_model, names, spec
from cvfp.training.point import RunOptions, train_point

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "cvfp"


def test_every_configurable_name_has_exactly_one_row_and_each_row_builds_its_family():
    assert names() == list(ARCHS) and sorted(names()) == sorted(typing.get_args(Arch))
    assert len({row.label for row in ARCHS.values()}) == len(ARCHS)
    cfg = ModelConfig(num_layers=1, context_dim=8, embed_dim=6, vocab_size=30)
    for name in names():
        row = spec(name)
        if row.family == "count":
            with pytest.raises(ValueError, match="counted"):
                build_model(cfg.replace(arch=name), torch.randn(30, 6))
            continue
        model = build_model(cfg.replace(arch=name), torch.randn(30, 6), seed=0)
        assert isinstance(model, CVFPModel if row.family == "cvfp" else SequenceLM)
        if row.family == "cvfp":
            assert model.design is row.design


def test_zero_context_reads_zeros_whatever_the_contexts():
    """The control's TokenBlock output equals the E design's own TokenBlock fed zero contexts, and does not move
    when the contexts do."""
    cfg = ModelConfig(arch="zero-context", num_layers=2, context_dim=8, embed_dim=6, vocab_size=30)
    table = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
    zero, e = build_model(cfg, table, seed=1), build_model(cfg.replace(arch="e"), table, seed=1)
    x = torch.randn(5, 6)
    contexts = [torch.randn(5, 8), torch.randn(5, 8)]
    with torch.no_grad():
        expected = e.token_features([torch.zeros(5, 8), torch.zeros(5, 8)], x)
        torch.testing.assert_close(zero.token_features(contexts, x), expected, rtol=0, atol=0)
        torch.testing.assert_close(zero.token_features([c * 3 for c in contexts], x), expected, rtol=0, atol=0)
        assert not torch.allclose(e.token_features(contexts, x), expected)


def test_a_zero_context_point_skips_phase1_and_trains_the_token_block(tiny_cfg, tmp_path, cache_dir):
    summary = train_point(tiny_cfg.override(['model.arch="zero-context"']), 8, tmp_path / "z",
                          options=RunOptions(cache_dir=cache_dir, progress=False))  # fmt: skip
    assert summary["phase1_iterations"] == 0 and summary["context_gap"] is None and summary["val_er"] is None
    params = summary["details"]["parameters"]
    assert summary["trainable_parameters"] == params["token_block"] + params["head"]
    vocab = resolve_config(tiny_cfg).model.vocab_size
    ppl = [e["val_ppl"] for e in summary["epochs"]]
    assert summary["val_ppl"] < vocab and ppl[-1] < ppl[0]  # it learns: below uniform, improving


# ---------------------------------------------------------------- the package's shape
def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(module, names) imported at module level (``TYPE_CHECKING`` blocks excluded) and inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cvfp"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("cvfp")]
    return out


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The cvfp modules imported at the top of ``path``; ``from package import module`` names the module."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cvfp"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def test_the_package_has_no_import_cycles():
    modules = {_module(p) for p in SRC.rglob("*.py")}
    graph = {_module(p): _top_level_imports(p, modules) for p in SRC.rglob("*.py")}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, m, d]))
            if d not in state:
                visit(d, [*trail, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_inference_and_the_cli_use_no_private_training_internals():
    for name in ("inference.py", "cli.py", "harness.py"):
        for module, imported in _imports(SRC / name):
            if module.startswith("cvfp.training"):
                assert name != "inference.py", f"inference imports {module}: scoring lives in cvfp.scoring"
                assert not [n for n in imported if n.startswith("_")], f"{name} imports private {imported}"


def test_the_architecture_name_is_branched_on_in_the_registry_only():
    """No comparison with an architecture's name, and no lookup keyed by one, outside models/registry.py."""
    arch_names = set(typing.get_args(Arch))
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                if any(c in arch_names for c in consts) and "context_mode" not in text:
                    found.append(f"{path.name}: {text}")
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and node.slice.value in arch_names
            ):
                found.append(f"{path.name}: {ast.unparse(node)}")
    assert not found, found


def test_no_file_over_400_lines_and_no_function_over_80():
    long_files = [f"{p.name}: {n}" for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400]
    long_functions = []
    for p in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{p.name}:{node.name} {node.end_lineno - node.lineno + 1}")
    assert not long_files and not long_functions, (long_files, long_functions)


def test_code_size_counts_each_kind_of_line_and_what_no_formatter_changes(tmp_path):
    """scripts/code_size.py, which measures src/ for the size target: one file of known counts, then the same
    code reformatted over more lines, which changes the lines but not the statements, the tokens or the lines
    of the bare code (no docstrings or comments, laid out by the formatter)."""
    import subprocess

    from conftest import load_script

    code_size = load_script("code_size")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    def commit(text: str) -> str:
        (tmp_path / "src" / "m.py").write_text(text)
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
        return git("rev-parse", "HEAD").strip()

    git("init", "-q")
    (tmp_path / "src").mkdir()
    one = commit('"""Module."""\n\n# a comment\ndef f(a, b):\n    """Doc\n    string."""\n    return g(a, b)\n')
    two = commit(
        '"""Module."""\n\n# a comment\ndef f(a, b):\n    """Doc\n    string."""\n    return g(\n        a,\n        b,\n    )\n'
    )
    first, second = code_size.size_at(tmp_path, one), code_size.size_at(tmp_path, two)
    assert (first.lines, first.code, first.docstring, first.comment, first.blank) == (7, 2, 3, 1, 1)
    assert (first.statements, first.tokens) == (2, 15)  # def, return; def f ( a , b ) : return g ( a , b )
    assert (second.lines, second.code) == (10, 5)
    assert (second.statements, second.tokens) == (2, 16)  # the trailing comma the formatter adds
    assert first.bare == second.bare == 2  # def f(a, b): / return g(a, b)
    assert "| " + one + " | 7 | 2 | 3 | 1 | 1 | 2 | 15 | 2 |" in code_size.table(tmp_path, [one])
