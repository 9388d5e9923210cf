"""``fork(trace, step)``: restart a traced run at loop step k, re-running only steps k..N−1.

Each step of a trace keeps its restart point: the latents entering the step, a snapshot of the
scheduler's mutable state and the random generator's state. ``Explainer.fork`` re-enters the same
loop there (``diffexplain.loop.loop_steps`` with a ``Resume``); this function is its shortcut for a
trace that still knows the Explainer that made it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace


def fork(trace: Trace, step: int, explainer: Explainer | None = None, **changes: Any) -> Trace:
    """Fork ``trace`` at ``step`` with ``explainer`` (default: the one that made the trace, if attached).

    ``changes`` are those of ``Explainer.fork``: hooks, guidance_scale, prompt, negative_prompt,
    latents, progress. A trace loaded from a file needs ``explainer=``.
    """
    explainer = explainer or trace.explainer
    if explainer is None:
        raise ValueError(
            "this trace has no Explainer attached (was it loaded from a file?): "
            "pass explainer=..., e.g. fork(trace, step, explainer=my_explainer)"
        )
    return explainer.fork(trace, step, **changes)
