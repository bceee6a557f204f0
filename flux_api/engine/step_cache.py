"""First Block Cache, per request: the `first_block_cache` parameter (and the `fast` preset / `quality: low`).

diffusers' `FirstBlockCacheConfig(threshold)` runs the first transformer block at every step and, where its
residual changed less than `threshold` (relative mean absolute difference) since the last step that ran
in full, skips the other blocks and adds the residual they gave then. Faster, and lossy: an opt-in, never
the default. Its adherence cost on the tiny model is in docs/QUALITY.md.

How it stays out of the default path's way:
- The hooks are installed for one image's pipeline call and removed after it (`StepCache.on`): a request
  without it runs exactly what it ran before, its CUDA graph and its bytes; each image of a request of
  several starts with a fresh cache, so image i is still the image of the request alone with its seed.
- The compiled blocks: the hooks wrap each block's compiled forward from outside (`speed.compile_blocks`),
  so nothing compiles on the request.
- CUDA graphs: whether a step skips depends on its data, so a step cannot replay one captured graph;
  while the cache is on, `GraphedForward` runs the ordinary forward (the compiled blocks), `active`.
- How many transformer passes it skipped is counted for the response (`steps_skipped`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass
class SkipCount:
    """Transformer passes of one pipeline call that reused the last full step instead of running past the
    first block (those computed are the rest: steps x passes)."""

    skipped: int = 0


class StepCache:
    """First Block Cache over one transformer, switched on for one pipeline call at a time (the replica's
    worker thread: one call at a time)."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.active = False

    @contextlib.contextmanager
    def on(self, threshold: float, passes_to_name: int | None = None):
        """Within: the cache at `threshold`. Yields a SkipCount, filled as the steps decide.
        `passes_to_name`: None where the pipeline names each transformer pass's cache context itself
        ("cond", "uncond": FluxPipeline does); else how many passes a step makes (2 with true CFG), for
        the pipelines that name none (diffusers' image-to-image and inpainting: the hooks refuse to run
        without a context). Whatever happens within, the hooks are gone after it."""
        from diffusers import FirstBlockCacheConfig

        handles = ()
        self.active = True
        try:
            self.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
            if passes_to_name is not None:
                handles = self._name_passes(passes_to_name)
            yield self._count()
        finally:
            for h in handles:
                h.remove()
            self.active = False
            if self.transformer.is_cache_enabled:
                self.transformer.disable_cache()

    def _name_passes(self, passes: int) -> tuple:
        """Name each transformer call's cache context by its place in the step: the pipelines call the
        transformer `passes` times a step in a fixed order (the prompt's pass, then the negative prompt's),
        so each pass is compared with the same pass of the step before, as FluxPipeline's own names do."""
        calls = [0]
        entered = []  # the context of the call in progress (one at a time: the replica's worker)

        def before(module, args, kwargs):
            entered.append(module.cache_context(f"pass{calls[0] % passes}"))
            calls[0] += 1
            entered[-1].__enter__()

        def after(module, args, kwargs, output):
            if entered:
                entered.pop().__exit__(None, None, None)

        return (self.transformer.register_forward_pre_hook(before, with_kwargs=True),
                self.transformer.register_forward_hook(after, with_kwargs=True, always_call=True))

    def _count(self) -> SkipCount:
        """Wrap the head block hook's decision (diffusers names it `_should_compute_remaining_blocks`) to
        count it. Its first call at a step with nothing cached computes, like every later "compute"."""
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

        count = SkipCount()
        for module in self.transformer.modules():  # the head block: the first of the blocks, one hook
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.get_hook(_FBC_LEADER_BLOCK_HOOK) if isinstance(registry, HookRegistry) else None
            if hook is None:
                continue
            decide = hook._should_compute_remaining_blocks

            def counting(residual):
                compute = decide(residual)
                count.skipped += not compute
                return compute

            hook._should_compute_remaining_blocks = counting
            break
        return count
