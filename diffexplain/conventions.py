"""A family's conventions: what its model outputs and with which sign, which way time runs, what time the
model is given, and what its pipeline's "guidance scale" means, recorded in every trace.

The loop speaks one language (``diffexplain.names``): ``step.model.*`` holds the prediction *after* the
family's sign convention (so x̂0 = a·x_t + b·prediction holds for every family), and guidance is read on the
classic scale, ε_guided = ε_u + w·(ε_c − ε_u), where w = 1 is no guidance. Families differ from that:

- Z-Image's transformer outputs −v and is given (1000 − t)/1000 (time reversed); its pipeline's scale s
  means pred = c + s·(c − u), so s = 0 is off and s is w − 1 on the classic scale;
- FLUX.1 dev and FLUX.2 dev take w as an embedded input (no second branch);
- Qwen-Image's "true CFG" rescales each token to the conditional prediction's norm.

A trace records its family's ``Conventions.record()`` under ``settings.model["conventions"]`` (and
``Trace.conventions`` reads it back, with the run's w on both scales), so a student sees which convention a
picture was made under, and code comparing families reads one scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PREDICTIONS = {
    "epsilon": "the noise ε",
    "v_prediction": "v = α·ε − σ·x0",
    "flow_prediction": "the flow velocity v = ε − x0",
    "flow": "the flow velocity v = ε − x0",
    "sample": "the clean sample x0",
    "trigflow": "the TrigFlow velocity cos t·z − sin t·x0 (z = σ_d·ε), so x0 = cos t·x_t − sin t·F",
}
"""What ``step.model.*`` holds, by ``prediction_type``, in words."""


@dataclass(frozen=True)
class Conventions:
    """How one family's model and pipeline speak, beside the loop's one language (module docstring)."""

    prediction: str  # what step.model.* holds: a key of PREDICTIONS ("epsilon", "flow_prediction", ...)
    model_output_sign: int = 1  # the raw model output is sign × prediction (Z-Image: −1)
    model_time: str = "t"  # the time the model is given, in terms of the scheduler's t (0 … 1000)
    time_direction: str = "t falls from the noisiest step to 0"
    guidance_formula: str = "ε_u + w·(ε_c − ε_u)"  # the pipeline's own formula, in its own scale
    pipeline_scale: str = "w"  # the pipeline's guidance number in terms of the classic w
    classic_offset: float = 0.0  # classic w = pipeline's scale + offset (Z-Image: 1)
    notes: str = ""  # anything else a student should know (normalisation, an embedded guidance input)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"Conventions: unknown prediction {self.prediction!r}; expected one of {', '.join(PREDICTIONS)}"
            )
        if self.model_output_sign not in (1, -1):
            raise ValueError(
                f"Conventions: model_output_sign must be 1 or -1, got {self.model_output_sign!r}"
            )

    def classic_scale(self, pipeline_scale: float) -> float:
        """The classic w (ε_u + w·Δ) of the pipeline's own guidance number."""
        return float(pipeline_scale) + self.classic_offset

    def pipeline_scale_of(self, classic_w: float) -> float:
        """The pipeline's own guidance number for a classic w (what to pass the diffusers pipeline)."""
        return float(classic_w) - self.classic_offset

    def record(self) -> dict[str, Any]:
        """JSON-ready, with the prediction in words (``prediction_meaning``)."""
        return {**asdict(self), "prediction_meaning": PREDICTIONS[self.prediction]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Conventions:
        """Back from ``record()`` (keys this version does not know are left out)."""
        known = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        return cls(**known)


def conventions_of_run(record: dict[str, Any] | None, guidance_scale: float) -> dict[str, Any] | None:
    """A trace's recorded conventions with the run's w on both scales (None for a file from before)."""
    if not record:
        return None
    conventions = Conventions.from_record(record)
    return {
        **record,
        "guidance_scale": float(guidance_scale),
        "pipeline_guidance_scale": conventions.pipeline_scale_of(guidance_scale),
    }
