"""The table of compression methods and of low-rank decompositions: the one place their names are spelled.

The recipe schema builds its `method` and `decompose.method` choices from these tables, the pipeline dispatches
through `METHODS`, and the CLI and the decomposition study list `DECOMPOSITIONS`. A method is one module with one
entry point `run(ctx: CompressContext) -> MethodResult` (the contract is `MethodResult`'s docstring in
`compression/context.py`) plus a recipe; it joins the table here, or at run time through `register_method`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from vitdeploy.errors import RecipeError


@dataclass(frozen=True)
class Method:
    """A compression method: its name in recipes, its entry point, and what it accepts.

    `entry` is a callable or a "package.module:function" string, imported when the method first runs, so listing
    the methods imports none of them. `sites` restricts `prune.sites` (None: every site), and `scope` names that
    part of the model in the error ("the FFN"); `check(recipe)` raises RecipeError for settings the method cannot
    honour."""

    name: str
    entry: Union[str, Callable[..., Any]]
    summary: str
    sites: Optional[tuple[str, ...]] = None
    check: Optional[Callable[[Any], None]] = None
    scope: str = ""

    def load(self) -> Callable[..., Any]:
        if callable(self.entry):
            return self.entry
        module, _, func = self.entry.partition(":")
        return getattr(importlib.import_module(module), func)

    def check_recipe(self, recipe: Any) -> None:
        if self.sites is not None:
            other = [s for s in recipe.prune.sites if s not in self.sites]
            if other:
                allowed = " and ".join(self.sites) if len(self.sites) < 3 else ", ".join(self.sites)
                raise RecipeError(f"method '{self.name}' compresses {self.scope or allowed} only: prune.sites "
                                  f"may list {allowed}, not {other[0]}")
        if self.check is not None:
            self.check(recipe)


METHODS: dict[str, Method] = {}


def register_method(name: str, entry: Union[str, Callable[..., Any]], summary: str,
                    sites: Optional[tuple[str, ...]] = None, check: Optional[Callable[[Any], None]] = None,
                    scope: str = "", replace: bool = False) -> Method:
    """Add a method to the table (recipes may then say `method: NAME`). Re-registering a name needs `replace`."""
    if name in METHODS and not replace:
        raise ValueError(f"compression method {name!r} is already registered")
    METHODS[name] = method = Method(name, entry, summary, tuple(sites) if sites is not None else None, check,
                                      scope)
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise RecipeError(f"unknown compression method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def _check_vtp(recipe: Any) -> None:
    if recipe.prune.importance == "learned" and recipe.sparsity.epochs == 0:
        raise RecipeError("prune.importance 'learned' needs sparsity.epochs >= 1 (or use importance: magnitude)")


register_method("vtp", "vitdeploy.compression.vtp:run",
                "learned (VTP scores + L1) or magnitude importance over the chosen sites, one global threshold",
                check=_check_vtp)
register_method("mcf", "vitdeploy.compression.mcf:run",
                "FFN compression from the class token's contributions (FIS), structured cuts, back to front",
                sites=("mlp_in", "mlp_hidden"), scope="the FFN")


@dataclass(frozen=True)
class Decomposition:
    """A low-rank factoring of W (out × in) into up (out × r) · down (r × in); the function is in decompose.py."""

    name: str
    label: str  # in study tables: "VTP+SVD"
    short: str  # under a study plot's bars: "+SVD"
    doc: str


DECOMPOSITIONS: dict[str, Decomposition] = {d.name: d for d in (
    Decomposition("svd", "VTP+SVD", "+SVD", "balanced U√Σ · √ΣVᵀ (the best rank-r approximation)"),
    Decomposition("qr-full", "VTP+QR (full)", "+QR full", "complete QR: the first r columns of Q, R fitted"),
    Decomposition("qr-reduced", "VTP+QR (reduced)", "+QR reduced", "reduced (economic) QR"),
    Decomposition("qr-pivoted", "VTP+QR (column pivoting)", "+QR pivoted", "rank-revealing QR with column pivoting"),
    Decomposition("cod", "VTP+QR (complete orthogonal)", "+COD", "complete orthogonal decomposition"),
    Decomposition("lu", "VTP+LU", "+LU", "LU with complete pivoting"),
)}


def decomposition_names() -> tuple[str, ...]:
    return tuple(DECOMPOSITIONS)
