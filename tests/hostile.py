"""Hostile inputs found by the fault trial (issue 8), shared by the tests that refuse them."""

from __future__ import annotations

from itertools import pairwise

_LEVELS = "abcdefghi"

ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]\n" for prev, name in pairwise(_LEVELS)
)
"""A "billion laughs" file of under 500 bytes: 9**9 strings once its aliases are expanded."""

ALIAS_LOOP = "a: &r [*r]\n"
"""An alias inside its own anchor: PyYAML builds a list that contains itself."""


def nested_list(depth: int) -> str:
    """A flow list `[[[...]]]` nested `depth` deep (YAML and JSON alike)."""
    return "[" * depth + "]" * depth


def nested_block_yaml(depth: int) -> str:
    """Mappings nested `depth` deep in block style (the indentation libyaml does not limit)."""
    return "".join(f"{'  ' * level}k{level}:\n" for level in range(depth)) + "  " * depth + "x\n"


def nested_parentheses(depth: int) -> str:
    """`((((1))))`: Jinja's parser spends about 14 stack frames on each level."""
    return "(" * depth + "1" + ")" * depth


def plus_chain(terms: int) -> str:
    """`1 + 1 + ...`: parsed flat, but compiled and walked as a tree `terms` deep."""
    return " + ".join(["1"] * terms)


def nested_ifs(depth: int) -> str:
    """`{% if true %}` nested `depth` deep around one character."""
    return "{% if true %}" * depth + "x" + "{% endif %}" * depth
