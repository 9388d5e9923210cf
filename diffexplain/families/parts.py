"""Which family a set of parts belongs to (``Explainer(**parts)``): by their names, then by their kinds.

Part names alone are ambiguous: Stable Diffusion without a VAE and DeepFloyd IF stage I both take
``unet, tokenizer, text_encoder`` (and PixArt and SANA would both take ``tokenizer, text_encoder, vae,
transformer``). So each family may declare, in ``Family.part_kinds``, what some of its parts are: the
class they must be (by name, anywhere in the part's class hierarchy, so nothing heavy is imported) and
a property of their config. ``family_from_parts`` keeps the families whose part names fit and whose
declared kinds hold; it builds the one that is left, and names the candidates when none or several are.

The text encoder's class does not tell SD from IF here: the embedded default model (SD) and the embedded
pixel cascade (IF) both read MiniLM. What does is the U-Net's output: ε (or v) alone for SD, ε and a
learned variance for IF.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffexplain.errors import AmbiguousPartsError

if TYPE_CHECKING:
    from diffexplain.families.base import Family

OPTIONAL_PARTS = frozenset({"vae"})
"""Parts that may be left out or None (a family without a VAE works in pixel space)."""


def class_names(part: Any) -> frozenset[str]:
    """The names of every class of ``part`` (its MRO), and of the module a ``torch.compile`` wrapper holds."""
    names = {cls.__name__ for cls in type(part).__mro__}
    inner = getattr(part, "_orig_mod", None)  # torch.compile's OptimizedModule
    if inner is not None:
        names |= {cls.__name__ for cls in type(inner).__mro__}
    return frozenset(names)


def config_value(part: Any, key: str) -> Any:
    """``part.config.<key>``, or None where the part has no such config entry."""
    return getattr(getattr(part, "config", None), key, None)


@dataclass(frozen=True)
class PartKind:
    """What a family expects of one of its parts, beyond its name.

    ``classes``: the accepted class names (any of them, anywhere in the part's MRO; empty: any class);
    ``check``: a property the part must have, ``requirement`` says it in words for the error messages.
    """

    classes: tuple[str, ...] = ()
    requirement: str = ""
    check: Callable[[Any], bool] | None = None

    def problem(self, part: Any) -> str | None:
        """Why ``part`` is not of this kind, in words; None if it is."""
        if self.classes and not class_names(part) & set(self.classes):
            return f"is a {type(part).__name__}, not a {' or '.join(self.classes)}"
        if self.check is not None and not self.check(part):
            return f"does not have {self.requirement}"
        return None

    def __str__(self) -> str:
        kind = " or ".join(self.classes) or "any class"
        return f"{kind} with {self.requirement}" if self.requirement else kind


def expected_parts(family: type[Family]) -> str:
    """What ``family`` takes, in words: "unet, tokenizer, text_encoder, vae (optional) [unet: ...]"."""
    names = ", ".join(f"{n} (optional)" if n in OPTIONAL_PARTS else n for n in family.part_names)
    kinds = "; ".join(f"{name}: {kind}" for name, kind in family.part_kinds.items())
    return f"{names} [{kinds}]" if kinds else names


def names_fit(family: type[Family], parts: Mapping[str, Any]) -> bool:
    """Whether ``parts`` are ``family``'s by name: all of its parts (optional ones may be left out or None)
    and no other (a VAE only for a family that takes one)."""
    given = {n for n, part in parts.items() if not (n in OPTIONAL_PARTS and part is None)}
    takes = set(family.part_names)
    return given <= takes and takes - OPTIONAL_PARTS <= given


def kind_problems(family: type[Family], parts: Mapping[str, Any]) -> list[str]:
    """Each of ``family``'s declared ``part_kinds`` that a given part does not have, in words."""
    problems = []
    for name, kind in family.part_kinds.items():
        part = parts.get(name)
        problem = None if part is None else kind.problem(part)
        if problem is not None:
            problems.append(f"its {name} {problem}")
    return problems


def pick_family(parts: Mapping[str, Any], families: Iterable[type[Family]]) -> Family:
    """The one family of ``families`` that the parts fit, built over them: by the parts' names (``vae``
    optional), then by their declared ``part_kinds``. ``diffexplain.families.family_from_parts`` asks
    every family in ``FAMILIES`` (this module needs no import of the registry).

    ``TypeError`` naming what each family expects if none fits; ``AmbiguousPartsError`` (a ``TypeError``)
    naming the candidates, and how to pick one, if several do.
    """
    families = tuple(families)
    named = [family for family in families if names_fit(family, parts)]
    fitting = [family for family in named if not kind_problems(family, parts)]
    given = ", ".join(sorted(n for n, part in parts.items() if part is not None or n not in OPTIONAL_PARTS))
    if len(fitting) == 1:
        family = fitting[0]
        return family(**{n: part for n, part in parts.items() if n in family.part_names})
    if not fitting:
        refused = "".join(
            f"; {family.label} takes these names, but {' and '.join(kind_problems(family, parts))}"
            for family in named
        )
        expected = "; ".join(f"{family.label}: {expected_parts(family)}" for family in families)
        raise TypeError(f"no pipeline family takes the parts {given}{refused}; expected one of: {expected}")
    candidates = ", ".join(
        f"{family.label} ({family.__name__}, {family.pipeline_class})" for family in fitting
    )
    choices = " or ".join(
        f"Explainer(family={family.__name__}(**parts), scheduler=...)" for family in fitting
    )
    raise AmbiguousPartsError(
        f"the parts {given} fit more than one pipeline family: {candidates}. Choose one: {choices} "
        f"(the classes are in diffexplain.families), or build the diffusers pipeline and use "
        f"Explainer.from_pipeline(pipe), which picks the family from the pipeline's class"
    )
