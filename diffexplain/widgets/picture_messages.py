"""PictureLab's messages from the browser (a mixin of ``diffexplain.widgets.picture_lab.PictureLab``):
each sets the boxes the browser sent, then redraws once, loads a picture, or clicks Run / Invert."""

from __future__ import annotations

from typing import Any

from diffexplain.widgets.inputs import InputError
from diffexplain.widgets.typed_inputs import as_upload, parse_number

BOX = ("x0", "y0", "x1", "y1")


class PictureMessages:
    """``action_<name>`` for each message of ``picture_lab.js`` (``TraceView`` calls them in ``guard``)."""

    _quiet: bool
    source: Any
    upload: Any
    preview: Any
    use_mask: Any
    box: dict[str, Any]
    run_button: Any
    invert_button: Any

    # ---- the browser's messages ------------------------------------------------------------------
    def _apply(self, values: dict[str, Any]) -> None:
        """Set the boxes the browser sent (quietly: the caller redraws once)."""
        self._quiet = True
        try:
            for name in ("prompt", "caption", "seed"):
                if name in values:
                    getattr(self, name).value = str(values[name])
            for name in ("strength", "steps"):
                if name in values:
                    getattr(self, name).value = parse_number(values[name], name)
            if "source" in values:
                self.source.value = values["source"]
            if "use_mask" in values:
                self.use_mask.value = bool(values["use_mask"])
            for name, value in (values.get("box") or {}).items():
                self.box[name].value = int(value)
        finally:
            self._quiet = False

    def action_set(self, **values: Any) -> None:
        """Strength, steps or the mask changed in the browser (once the slider settles)."""
        self._apply(values)
        self._draw_schedule()
        self._draw_input()

    def action_picture(self, **values: Any) -> None:
        """Another picture: the source, the scene's caption or its seed changed in the browser."""
        self._apply(values)
        self.load_picture()

    def action_upload(self, name: str, buffers: list[Any] | None = None) -> None:
        """The browser's upload: the picture's bytes came as a binary buffer."""
        if not buffers:
            raise InputError(f"the upload of {name!r} came without its content")
        self._quiet = True
        try:
            self.source.value = "upload"
        finally:
            self._quiet = False
        self.upload.value = as_upload(name, bytes(buffers[0]))  # loads it (its observer)

    def action_run(self, **values: Any) -> None:
        """The browser's Run, with its boxes as typed there."""
        self._apply(values)
        self._draw_schedule()
        self.run_button.click()

    def action_invert(self, **values: Any) -> None:
        """The browser's Invert, with its boxes as typed there."""
        self._apply(values)
        self._draw_schedule()
        self.invert_button.click()

    def action_preview(self, value: bool) -> None:
        """The browser's "fast latent preview" box."""
        if self.preview.disabled:
            self._sync_inputs()  # the box was not to be changed: drawn again as it is
        else:
            self.preview.value = bool(value)
