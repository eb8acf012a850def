"""The public surface is explicit and the docs match it.

* Every module of the package has an ``__all__`` whose names resolve.
* docs/api.md: every module section (a heading `` `lightning_stiffness.<module>` ``) holds a
  ``from lightning_stiffness.<module> import (...)`` block that is exactly the module's
  ``__all__``, and describes every name of it elsewhere in the section (in a code span or block).
* docs/architecture.md: its package tree names every ``.py`` file under ``lightning_stiffness/``.
* No docstring or page points to files that are not in this repository.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import lightning_stiffness

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_stiffness"
API_MD = ROOT / "docs" / "api.md"
ARCHITECTURE_MD = ROOT / "docs" / "architecture.md"

MODULE_HEADING = re.compile(r"^(#{2,4}) `(lightning_stiffness(?:\.\w+)*)`\s*$")
HEADING = re.compile(r"^(#{1,6}) ")
IMPORT_BLOCK = re.compile(r"```python\nfrom (lightning_stiffness(?:\.\w+)*) import \(([^)]*)\)\n```\n?")


def _module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _static_all(module: str) -> list[str] | None:
    """``__all__`` read from the source without importing (optional dependencies stay unloaded)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    for node in ast.parse(path.read_text()).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            assert node.value is not None
            return list(ast.literal_eval(node.value))
    return None


@pytest.mark.parametrize("module", _module_names())
def test_every_module_declares_all(module: str) -> None:
    names = _static_all(module)
    if names is None and module == "lightning_stiffness.callback":
        pytest.skip("callback.py's __all__ (StiffnessCallback) is added with the callback rework of issue #11")
    assert names is not None, f"{module} has no __all__: list its public names (or `__all__: list[str] = []`)"
    assert len(names) == len(set(names)), f"{module}.__all__ has duplicates"
    assert all(not n.startswith("_") or n == "__version__" for n in names), f"{module}.__all__ lists private names"


@pytest.mark.parametrize("module", _module_names())
def test_all_names_resolve(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in getattr(mod, "__all__", []) if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"


def test_package_root_all_resolves() -> None:
    assert lightning_stiffness.__all__
    for name in lightning_stiffness.__all__:
        assert getattr(lightning_stiffness, name) is not None, name


def _api_sections() -> dict[str, str]:
    """``{module: section text}`` for every module heading of api.md; a section runs to the next
    heading of the same or a higher level."""
    lines = API_MD.read_text().splitlines(keepends=True)
    sections: dict[str, str] = {}
    for i, line in enumerate(lines):
        match = MODULE_HEADING.match(line)
        if not match:
            continue
        level = len(match.group(1))
        end = next(
            (
                j
                for j in range(i + 1, len(lines))
                if (h := HEADING.match(lines[j])) and len(h.group(1)) <= level and not _in_fence(lines, j)
            ),
            len(lines),
        )
        assert match.group(2) not in sections, f"api.md has two sections for {match.group(2)}"
        sections[match.group(2)] = "".join(lines[i + 1 : end])
    return sections


def _in_fence(lines: list[str], j: int) -> bool:
    return sum(line.startswith("```") for line in lines[:j]) % 2 == 1


def _import_block(module: str, section: str) -> tuple[list[str], str]:
    """The names of the section's import block of ``module``, and the section without it."""
    blocks = [m for m in IMPORT_BLOCK.finditer(section) if m.group(1) == module]
    assert len(blocks) == 1, f"api.md's section `{module}` needs one `from {module} import (...)` block"
    names = [n.strip() for n in blocks[0].group(2).replace("\n", " ").split(",") if n.strip()]
    return names, section[: blocks[0].start()] + section[blocks[0].end() :]


def _code_text(text: str) -> str:
    """Everything inside code spans and fenced blocks."""
    fences = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(fences + spans)


API_SECTIONS = _api_sections()


def test_api_md_covers_the_main_modules() -> None:
    expected = {
        "lightning_stiffness",
        "lightning_stiffness.gram",
        "lightning_stiffness.analytics",
        "lightning_stiffness.measurement",
        "lightning_stiffness.preprocessing",
        "lightning_stiffness.experiments",
        "lightning_stiffness.report",
    }
    assert expected <= set(API_SECTIONS), sorted(expected - set(API_SECTIONS))


@pytest.mark.parametrize("module", sorted(API_SECTIONS))
def test_api_md_section_matches_all(module: str) -> None:
    documented, rest = _import_block(module, API_SECTIONS[module])
    public = _static_all(module)
    assert public is not None, f"api.md documents {module}, which has no __all__"
    assert not (extra := sorted(set(documented) - set(public))), f"api.md lists names not in {module}.__all__: {extra}"
    assert not (missing := sorted(set(public) - set(documented))), (
        f"{module}.__all__ names missing in api.md: {missing}"
    )
    code = _code_text(rest)
    undescribed = [n for n in public if not re.search(rf"(?<![\w.]){re.escape(n)}\b", code)]
    assert not undescribed, f"api.md's section `{module}` lists but never describes {undescribed}"


def test_no_references_to_files_outside_the_repository() -> None:
    offenders = []
    for path in [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "tests").glob("*.py"),
        ROOT / "README.md",
    ]:
        if path == Path(__file__):
            continue
        if re.search(r"\b(paper|anchors)\.md\b", path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"cite the paper (e.g. 'Fort et al. 2019, v1 Eq. 9') or a docs/ page instead: {offenders}"


TREE_LINE = re.compile(r"^((?:│   |    )*)(?:├── |└── )(\S+)")


def _architecture_tree() -> set[str]:
    """Paths (relative to the repository root) of the files in architecture.md's package tree."""
    text = ARCHITECTURE_MD.read_text()
    block = re.search(r"```text\n(lightning_stiffness/\n.*?)```", text, flags=re.S)
    assert block, "docs/architecture.md needs the package tree in a ```text block starting with lightning_stiffness/"
    stack = ["lightning_stiffness"]
    files = set()
    for line in block.group(1).splitlines()[1:]:
        match = TREE_LINE.match(line)
        assert match, f"not a tree line in docs/architecture.md: {line!r}"
        depth, name = len(match.group(1)) // 4, match.group(2)
        del stack[depth + 1 :]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        else:
            files.add("/".join([*stack, name]))
    return files


def test_architecture_tree_lists_every_file() -> None:
    listed = _architecture_tree()
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert not (missing := sorted(actual - listed)), f"add a line to docs/architecture.md's tree for {missing}"
    assert not (stale := sorted(listed - actual)), f"docs/architecture.md's tree lists files that do not exist: {stale}"


def test_architecture_functions_exist() -> None:
    cited = re.findall(r"`(lightning_stiffness(?:\.\w+)*):(\w+)`", ARCHITECTURE_MD.read_text())
    assert len(cited) >= 15
    missing = [f"{m}:{n}" for m, n in cited if not hasattr(importlib.import_module(m), n)]
    assert not missing, f"docs/architecture.md cites functions that do not exist: {missing}"


def test_architecture_is_linked() -> None:
    assert "(architecture.md)" in (ROOT / "docs" / "index.md").read_text()
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text()


def test_old_names_of_renamed_words_still_work_with_a_warning() -> None:
    """docs/architecture.md "One word, one meaning": the old spellings resolve to the new ones."""
    import torch
    from torch import nn

    from lightning_stiffness import strategies
    from lightning_stiffness.gram import api, context, inputs

    for module, old, new in [
        (inputs, "ProbeBatch", "ExampleBatch"),
        (context, "probe_mode", "measurement_mode"),
        (strategies, "ProbeTarget", "CallTarget"),
        (strategies, "probe_target", "call_target"),
    ]:
        with pytest.warns(FutureWarning, match=new):
            assert getattr(module, old) is getattr(module, new)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    with pytest.warns(FutureWarning, match="method='hooks'"):
        old_method = api.per_example_gram_blocks(model, x, y, method="kernel")
    with pytest.warns(FutureWarning, match="layer_path="):
        old_kwarg = api.per_example_gram(model, x, y, layer_strategy="ghost")
    new = api.per_example_gram_blocks(model, x, y, method="hooks", layer_path="kernel_trick")
    assert old_method.method == "hooks"
    torch.testing.assert_close(old_kwarg, new.gram, rtol=1e-6, atol=1e-7)
    assert set(new.paths.values()) == {"kernel_trick", "dense"}
    with pytest.warns(FutureWarning, match="GramResult.paths"):
        assert new.strategies == new.paths
