"""Parsing untrusted Python source without letting its shape hurt the parser's caller.

Both the plan template (recovering a plan from submitted code) and the site's code
review parse researcher source; both go through `bounded_parse`. It must never
execute, compile or import anything from the source.
"""

from __future__ import annotations

import ast

from policies.contract.errors import MedsyftError

MAX_DEPTH = 100


class TooComplex(MedsyftError, ValueError):
    """Source the review will not walk: deeper than MAX_DEPTH or beyond the parser."""


def tree_depth(tree: ast.AST, limit: int) -> int:
    """Depth of a syntax tree, counted without recursion; stops once past `limit`."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def bounded_parse(source: str, max_depth: int = MAX_DEPTH) -> ast.Module:
    """`ast.parse`, but a source too deep to walk safely raises TooComplex (SyntaxError
    stays SyntaxError)."""
    try:
        tree = ast.parse(source)
    except (RecursionError, MemoryError):
        raise TooComplex("nested too deeply for Python's parser") from None
    if tree_depth(tree, max_depth) > max_depth:
        raise TooComplex(f"nested deeper than {max_depth} levels")
    return tree


