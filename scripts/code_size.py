"""The size of ``src/`` at git revisions, counted several ways: physical lines (what ``wc -l`` gives), split into
code, docstring, comment and blank lines, and two counts a formatter cannot change, statements and tokens
(docstrings, comments and line breaks left out). The last two compare revisions formatted differently, e.g.
before and after ``# fmt: skip`` markers were dropped. ``bare`` is the lines the code takes with every docstring
and comment removed, laid out by the project's formatter (``ruff format``): how small ``src/`` could be made
without removing code. Strings that Python joins (``"a" "b"``) are joined, so it errs low.

    python scripts/code_size.py 3e2acc6 HEAD
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import subprocess
import sys
import tokenize
from pathlib import Path

LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


@dataclasses.dataclass
class Size:
    lines: int = 0
    code: int = 0
    docstring: int = 0
    comment: int = 0
    blank: int = 0
    statements: int = 0
    tokens: int = 0
    bare: int = 0

    def add(self, source: str, path: str, repo: Path) -> None:
        """Count one Python file's text (``path`` in ``repo``, whose formatter settings lay out ``bare``)."""
        tree = ast.parse(source)
        docstrings = _docstrings(tree)
        doc_lines = {i for d in docstrings for i in range(d.lineno, d.end_lineno + 1)}
        for number, line in enumerate(source.splitlines(), 1):
            self.lines += 1
            text = line.strip()
            if not text:
                self.blank += 1
            elif number in doc_lines:
                self.docstring += 1
            elif text.startswith("#"):
                self.comment += 1
            else:
                self.code += 1
        self.statements += sum(isinstance(node, ast.stmt) for node in ast.walk(tree)) - len(docstrings)
        starts = {(d.lineno, d.col_offset) for d in docstrings}
        self.tokens += sum(
            1
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type not in LAYOUT and not (tok.type == tokenize.STRING and tok.start in starts)
        )
        self.bare += len(_bare(tree, docstrings, path, repo).splitlines())


def _docstrings(tree: ast.AST) -> list[ast.Expr]:
    return [
        node.body[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
        and isinstance(node.body[0].value.value, str)
    ]


def _bare(tree: ast.AST, docstrings: list[ast.Expr], path: str, repo: Path) -> str:
    """The module's code without docstrings or comments (``ast.unparse`` keeps neither), formatted by ruff with
    the settings ``repo`` has for ``path``. ``tree`` is changed: its docstrings are removed."""
    dropped = {id(d) for d in docstrings}
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and id(body[0]) in dropped:
            node.body = body[1:] or [ast.Pass()]
    command = [sys.executable, "-m", "ruff", "format", "--stdin-filename", path, "-"]
    return subprocess.run(command, cwd=repo, input=ast.unparse(tree), capture_output=True, text=True, check=True).stdout


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def size_at(repo: Path, revision: str, folder: str = "src") -> Size:
    """The size of every ``.py`` file under ``folder`` at ``revision``."""
    size = Size()
    for path in _git(repo, "ls-tree", "-r", "--name-only", revision, folder).split("\n"):
        if path.endswith(".py"):
            size.add(_git(repo, "show", f"{revision}:{path}"), path, repo)
    return size


def table(repo: Path, revisions: list[str]) -> str:
    names = [field.name for field in dataclasses.fields(Size)]
    rows = ["| Revision | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for revision in revisions:
        size = size_at(repo, revision)
        rows.append(f"| {revision} | " + " | ".join(f"{getattr(size, n):,}" for n in names) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="+", help="git revisions, e.g. 3e2acc6 HEAD")
    args = parser.parse_args()
    print(table(Path.cwd(), args.revisions))


if __name__ == "__main__":
    main()
