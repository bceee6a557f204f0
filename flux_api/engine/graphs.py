"""CUDA graphs of the whole transformer forward, one per input shape.

A FLUX step launches about two thousand kernels. At 512x512 the GPU finishes them faster than Python
can issue them, so a step is bound by the CPU (FACTS.md: 114 ms in the pipeline against 71 ms of GPU
work). Replaying a captured graph issues the step in one call.

What a graph bakes in, and how this stays correct:
- the input shapes: one graph per (shapes, dtypes, guidance or not); a new size captures a new graph
  on its first step (one extra forward), and the least recently used graph goes beyond `max_graphs`;
- the module structure and the weights' addresses: LoRAs never change either (lora_slot.py: one
  adapter slot made at load, filled in place), so a graph replays any LoRA; the slot switched on or off
  is part of the key (`variant`, from the adapter set). An adapter set that cannot promise this (the
  Nunchaku backend's) answers None while a LoRA is active, and that request runs the ordinary forward;
- the output buffer: each replay's output is cloned, so two calls in one step (true CFG) do not
  overwrite each other.
The graphs of one transformer share one memory pool: one replica runs one forward at a time.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

log = logging.getLogger(__name__)

_TENSOR_ARGS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids",
                "guidance")


class GraphedForward:
    """Installed as `transformer.forward`; falls back to the original forward where a graph cannot apply."""

    def __init__(self, transformer, variant=lambda: "base", max_graphs: int = 8):
        import torch

        self.transformer = transformer
        self.eager = transformer.forward
        self.variant = variant  # () -> the variant to replay (part of the key), or None: run eagerly
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle()
        self.failed: str | None = None  # capture failed once: never try again
        self.captures = 0
        self._lock = threading.Lock()

    def install(self) -> "GraphedForward":
        self.transformer.forward = self
        return self

    def status(self) -> dict:
        return {"graphs": len(self.graphs), "max_graphs": self.max_graphs, "captures": self.captures,
                "failed": self.failed}

    def __call__(self, *args, return_dict: bool = True, **kwargs):
        import torch

        variant = self.variant()
        usable = (not args and variant is not None and self.failed is None and not torch.is_grad_enabled()
                  and set(kwargs) <= set(_TENSOR_ARGS) | {"joint_attention_kwargs"}
                  and not kwargs.get("joint_attention_kwargs")
                  and all(kwargs.get(k) is None or isinstance(kwargs[k], torch.Tensor) for k in _TENSOR_ARGS)
                  and kwargs.get("hidden_states") is not None and kwargs["hidden_states"].is_cuda)
        if not usable:
            return self.eager(*args, return_dict=return_dict, **kwargs)
        inputs = {k: kwargs[k] for k in _TENSOR_ARGS if kwargs.get(k) is not None}
        # The other arguments as the pipeline gave them (joint_attention_kwargs: {} or None), for the
        # capture's forward: the compiled blocks guard on them, and a forward that runs outside the graph
        # later (First Block Cache) must find what the capture compiled, not compile again.
        others = {k: v for k, v in kwargs.items() if k not in _TENSOR_ARGS}
        # Tensors made under inference_mode cannot be written outside it: that is part of the key too.
        key = (variant, torch.is_inference_mode_enabled(), *((k, tuple(t.shape), t.dtype) for k, t in inputs.items()))
        with self._lock:
            entry = self.graphs.get(key)
            if entry is None:
                entry = self._capture(key, inputs, others)
                if entry is None:
                    return self.eager(*args, return_dict=return_dict, **kwargs)
            else:
                self.graphs.move_to_end(key)
                for k, t in inputs.items():
                    entry[1][k].copy_(t)
            graph, _, out = entry
            graph.replay()
            sample = out.clone()
        if not return_dict:
            return (sample,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)

    def _capture(self, key: tuple, inputs: dict, others: dict):
        import torch

        static = {**others, **{k: t.clone() for k, t in inputs.items()}}
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up off the capture: cuBLAS/cuDNN handles, compiled code
                for _ in range(2):
                    self.eager(**static, return_dict=False)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.eager(**static, return_dict=False)[0]
        except Exception as e:  # something in the forward cannot be captured: run it eagerly from now on
            self.failed = f"{type(e).__name__}: {e}"[:300]
            self.graphs.clear()
            log.warning("CUDA graph capture failed, using the ordinary forward: %s", self.failed)
            return None
        self.captures += 1
        self.graphs[key] = (graph, static, out)
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return self.graphs[key]
