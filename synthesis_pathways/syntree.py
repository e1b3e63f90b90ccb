"""Synthetic trees (the MDP's trajectories) and postfix routes, with JSON round-trip and replay.

A tree is the list of steps of the MDP. Each step has an action (Add 0, Expand 1, Merge 2, End 3), a
template index, up to two reactants and a product. The *roots* are the sub-tree roots after the last
step, most recent first (r1, r2). The root updates are: Add, r2 <- r1 and r1 <- product; Expand,
r1 <- product; Merge, r1 <- product and r2 <- none.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field

from .chem import Template

ADD, EXPAND, MERGE, END = 0, 1, 2, 3
ACTION_NAMES = ("add", "expand", "merge", "end")


@dataclass
class Step:
    action: int
    template: int | None = None
    reactant1: str | None = None
    reactant2: str | None = None
    product: str | None = None


class IllegalStepError(ValueError):
    """A step that the MDP does not allow from the current roots."""


@dataclass
class SyntheticTree:
    steps: list[Step] = field(default_factory=list)

    # -- state ------------------------------------------------------------------------------------
    @property
    def roots(self) -> list[str]:
        """Current sub-tree roots, most recent first (at most two)."""
        roots: list[str] = []
        for s in self.steps:
            if s.action == ADD:
                roots = [s.product] + roots
            elif s.action == EXPAND:
                roots = [s.product] + roots[1:]
            elif s.action == MERGE:
                roots = [s.product]
        return roots

    @property
    def ended(self) -> bool:
        return bool(self.steps) and self.steps[-1].action == END

    @property
    def root(self) -> str | None:
        """The final product (the product of the last reaction)."""
        for s in reversed(self.steps):
            if s.product is not None:
                return s.product
        return None

    @property
    def reactions(self) -> list[Step]:
        return [s for s in self.steps if s.action != END]

    @property
    def actions(self) -> list[int]:
        return [s.action for s in self.steps]

    @property
    def depth(self) -> int:
        """Number of reactions."""
        return len(self.reactions)

    def products(self) -> list[str]:
        return [s.product for s in self.reactions]

    def nodes(self) -> list[str]:
        """Every molecule of the tree (reactants and products), first-seen order, no duplicates."""
        seen: dict[str, None] = {}
        for s in self.reactions:
            for m in (s.reactant1, s.reactant2, s.product):
                if m is not None:
                    seen.setdefault(m, None)
        return list(seen)

    def building_blocks(self) -> list[str]:
        """Reactants that are not products of an earlier step."""
        made: set[str] = set()
        out: list[str] = []
        for s in self.reactions:
            for m in (s.reactant1, s.reactant2):
                if m is not None and m not in made and m not in out:
                    out.append(m)
            made.add(s.product)
        return out

    # -- building ---------------------------------------------------------------------------------
    def legal_actions(self) -> tuple[bool, bool, bool, bool]:
        """Structural legality (Add, Expand, Merge, End) from the number of roots; Merge still needs a
        template that accepts both roots, which the sampler and decoder check on top of this."""
        if self.ended:
            return (False, False, False, False)
        n = len(self.roots)
        return (n == 0 or n == 1, n >= 1, n == 2, n == 1)

    def update(self, action: int, template: int | None = None, reactant1: str | None = None,
               reactant2: str | None = None, product: str | None = None) -> None:
        legal = self.legal_actions()
        if not 0 <= action <= 3 or not legal[action]:
            raise IllegalStepError(f"action {ACTION_NAMES[action] if 0 <= action <= 3 else action} "
                                   f"is illegal with {len(self.roots)} roots")
        roots = self.roots
        if action == EXPAND and reactant1 != roots[0]:
            raise IllegalStepError("Expand must react the most recent root")
        if action == MERGE and {reactant1, reactant2} != set(roots):
            raise IllegalStepError("Merge must react both roots")
        if action != END and (template is None or product is None or reactant1 is None):
            raise IllegalStepError("a reaction step needs a template, a first reactant and a product")
        self.steps.append(Step(action, template, reactant1, reactant2, product))

    def truncated_at(self, smiles: str) -> SyntheticTree:
        """The tree cut after the step that made ``smiles`` (plus End); the reference does this when
        the best node is not the root. Returns a copy; the molecule must be a product of the tree."""
        for i, s in enumerate(self.steps):
            if s.product == smiles:
                out = SyntheticTree([Step(**asdict(x)) for x in self.steps[: i + 1]])
                if out.legal_actions()[END]:
                    out.steps.append(Step(END))
                return out
        raise ValueError(f"{smiles} is not a product of this tree")

    # -- serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"steps": [asdict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticTree:
        return cls([Step(**s) for s in d["steps"]])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SyntheticTree:
        return cls.from_dict(json.loads(text))

    # -- display ----------------------------------------------------------------------------------
    def pretty(self, templates: Sequence[Template] | None = None) -> str:
        """A readable route: one block per reaction, the final product on top."""
        if not self.reactions:
            return "(empty tree)"
        made = {s.product: i for i, s in enumerate(self.reactions)}

        def render(smiles: str, indent: int, upto: int) -> list[str]:
            i = made.get(smiles)
            pad = "    " * indent
            if i is None or i >= upto:
                return [f"{pad}{smiles}  [building block]"]
            s = self.reactions[i]
            name = f"R{s.template}" + ("" if templates is None else
                                       f" ({templates[s.template].num_reactants}-component)")
            lines = [f"{pad}{smiles}  <= {name}, {ACTION_NAMES[s.action]}"]
            for r in (s.reactant1, s.reactant2):
                if r is not None:
                    lines += render(r, indent + 1, i)
            return lines

        return "\n".join(render(self.root, 0, len(self.reactions)))


# ---------------------------------------------------------------------------------------------------
# Replay


@dataclass
class ReplayResult:
    ok: bool
    message: str = ""
    rebuilt: list[list[str]] = field(default_factory=list)  # all products of each step


def replay_tree(tree: SyntheticTree, templates: Sequence[Template], blocks: Collection[str]) -> ReplayResult:
    """Rebuild every node of a tree from the blocks and the templates and check each step.

    Add reactants and bimolecular partners must be blocks; Expand/Merge must use the current roots;
    each stored product must be one of the template's products on the stored reactants.
    """
    replayed = SyntheticTree()
    rebuilt: list[list[str]] = []
    for i, s in enumerate(tree.steps):
        where = f"step {i} ({ACTION_NAMES[s.action] if 0 <= s.action <= 3 else s.action})"
        if s.action == END:
            try:
                replayed.update(END)
            except IllegalStepError as e:
                return ReplayResult(False, f"{where}: {e}", rebuilt)
            continue
        if s.template is None or not 0 <= s.template < len(templates):
            return ReplayResult(False, f"{where}: unknown template {s.template}", rebuilt)
        tpl = templates[s.template]
        if s.action == ADD and s.reactant1 not in blocks:
            return ReplayResult(False, f"{where}: reactant {s.reactant1} is not a building block", rebuilt)
        if s.action in (ADD, EXPAND) and tpl.bimolecular and s.reactant2 not in blocks:
            return ReplayResult(False, f"{where}: partner {s.reactant2} is not a building block", rebuilt)
        products = tpl.run(s.reactant1, s.reactant2 if tpl.bimolecular else None)
        rebuilt.append(products)
        if s.product not in products:
            return ReplayResult(False, f"{where}: R{s.template} does not give {s.product} (gives {products})",
                                rebuilt)
        try:
            replayed.update(s.action, s.template, s.reactant1, s.reactant2, s.product)
        except IllegalStepError as e:
            return ReplayResult(False, f"{where}: {e}", rebuilt)
    return ReplayResult(True, "", rebuilt)


def replay_route(tokens: Sequence[str | int], templates: Sequence[Template], *,
                 keep_all_products: bool = True, max_products: int = 1000) -> set[str]:
    """Run a postfix route; returns the set of molecules it can end in (empty if it fails).

    Every product of each step is kept (``keep_all_products``), because the route does not say which
    one was meant; with False only the first by canonical order is kept.
    """
    stack: list[set[str]] = []
    for tok in tokens:
        if isinstance(tok, str):
            stack.append({tok})
            continue
        if not 0 <= tok < len(templates):
            return set()
        tpl = templates[tok]
        if len(stack) < tpl.num_reactants:
            return set()
        operands = [stack.pop() for _ in range(tpl.num_reactants)][::-1]
        products: set[str] = set()
        for combo in itertools.product(*operands):
            out = tpl.run(*combo)
            products.update(out if keep_all_products else out[:1])
            if len(products) > max_products:
                break
        if not products:
            return set()
        stack.append(products)
    return stack[0] if len(stack) == 1 else set()
