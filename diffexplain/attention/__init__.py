"""Cross-attention: where each pixel reads each word of the prompt, per step, and edits of it.

- ``layers``: the denoiser's text-attention layers and their hook points (``attn.<layer>.probs.cond`` ...);
- ``processors`` and ``capture``: computing those layers explicitly for one run, and the per-step maps;
- ``tokens``: the prompt's tokens, one per text position, with their words;
- ``maps``: reading a trace's maps (``Trace.attention``);
- ``edits``: prompt-to-prompt style interventions (reweight, replace, confine) for ``run`` and ``fork``.

Nothing is imported here (the loop imports the parts it needs): ``from diffexplain.attention import edits``.
"""
