"""README claims that code can check: the worked example of "Adding an algorithm" is the real class."""

from __future__ import annotations

import ast
import re

from conftest import REPO


def without_docstrings(node: ast.AST) -> str:
    for item in ast.walk(node):
        body = getattr(item, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            item.body = body[1:] or [ast.Pass()]
    return ast.dump(node)


def test_the_worked_example_is_the_cavia_module_without_its_docstrings():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Adding an algorithm", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    example = ast.parse(snippet).body[0]
    source = ast.parse((REPO / "lightning_metarl" / "algorithms" / "cavia.py").read_text())
    (actual,) = [node for node in source.body if isinstance(node, ast.ClassDef) and node.name == example.name]
    assert without_docstrings(example) == without_docstrings(actual)


def test_the_hooks_the_readme_names_exist():
    from lightning_metarl.algorithms import GradientMetaRLModule, MetaBatch, MetaRLModule

    section = (REPO / "README.md").read_text().split("## Adding an algorithm", 1)[1].split("\n## ", 1)[0]
    for name in re.findall(r"`(\w+)\(", section):
        assert any(hasattr(cls, name) for cls in (GradientMetaRLModule, MetaRLModule, MetaBatch)) or name in {
            "trpo_step", "CAVIA"}, name
    assert "fast_states" in MetaBatch.__dataclass_fields__ and "pre_update" in MetaBatch.__dataclass_fields__


def test_model_help_lists_the_keys_of_every_algorithm_as_the_readme_says(capsys):
    import pytest

    from lightning_metarl.cli import available_algorithms, main

    assert "`--model.help MAME`" in (REPO / "README.md").read_text()
    helps = {}
    for name in available_algorithms():
        with pytest.raises(SystemExit):
            main(["fit", "--model.help", name])
        helps[name] = capsys.readouterr().out
        assert "--model.inner_lr" in helps[name] and "--model.meta_batch_size" in helps[name], name
    assert "--model.latent_size" in helps["MAME"] and "--model.context_size" in helps["CAVIA"]
    assert "--model.clip_epsilon" in helps["ProMP"] and "--model.max_kl" in helps["MAML"]
