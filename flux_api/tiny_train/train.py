"""Step 2: train the tiny drawing model from `prepare.py`'s tokens, seeded, on one GPU in minutes (or
the CPU, slower). Needs torch, diffusers and transformers' model classes; no tokenizer.

1. The VAE, on scenes rendered on the fly: reconstruction (MSE) plus a small KL term. Its latents'
   mean and spread become the VAE's shift_factor and scaling_factor, as FLUX's VAE has.
2. The transformer with both text encoders, jointly, with FLUX's rectified-flow objective: for clean
   latents x0, noise e and sigma in (0, 1), x = (1 - sigma) x0 + sigma e and the model predicts
   e - x0. Sigma is drawn half logit-normal, half uniform, then shifted as the pipeline's scheduler
   shifts it at 256x256 (mu = 0.5). The distilled-guidance input is drawn at random, so the model
   learns to ignore it; with --distill-guidance it is taught as classifier-free guidance instead,
   with --distill-below only below a noise level (the shipped model's last two runs: 4, below 0.75).
   The object's tokens weigh more than the background's and, with --edge-weight, the tokens on its
   outline more still. Training prompts are drawn uniformly, or with --even-said evenly over how many
   attributes they say; what a prompt leaves unsaid is drawn at random, or with --usual mostly the
   usual size, position and background (render.fill_unsaid). Held-out prompts are never drawn. An EMA
   of the weights is what is saved.
3. A LoRA on the transformer's attention projections only, trained on the same prompts with every
   object drawn green (the background never green): the "green" LoRA.

Writes DIR/{text_encoder,text_encoder_2,transformer,vae,lora_green}.safetensors and DIR/train.json;
`export.py` turns them into the diffusers folder.

    python -m flux_api.tiny_train.train --prepared DIR --out DIR [--device cuda] [--scale 0.01]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

# attention projections of the double and single blocks: what the LoRA may touch
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
GREEN = 3  # index of "green" in grammar.COLOURS
OBJECT_WEIGHT = 10.0


class Prompts:
    """The prepared prompt table on one device; `sample` draws training prompts: each training prompt
    as often as any other, or with `even_said` each number of attributes said (0 to 5) as often as any
    other."""

    def __init__(self, path: Path, device, even_said: bool = False):
        import torch

        d = torch.load(path / "prompts.pt")
        self.texts = d["texts"]
        self.attrs = d["attrs"].long().to(device)
        self.clip_ids = d["clip_ids"].long().to(device)
        t5 = d["t5_ids"].long()
        self.t5_ids = torch.cat([t5, t5.new_zeros(t5.shape[0], 512 - t5.shape[1])], 1).to(device)
        self.train_idx = d["train"].nonzero().squeeze(1).to(device)
        self.uncond = self.texts.index("a shape")  # the prompt that says nothing: guidance's unconditional
        self.device = device
        self.weights = None
        if even_said:
            # Of the grammar's 10,502 training prompts 63 say one attribute and 3,501 all five: drawn
            # uniformly, "a circle" is a twentieth of a percent of what the model sees, and what it
            # draws for it was a smudge as often as a circle. Even over the count, each prompt weighs
            # 1 / (how many prompts say as many attributes). Measured (docs/QUALITY.md): 5,600 steps of
            # it did not make one-attribute prompts better, so the shipped model was not trained so.
            said = (self.attrs[self.train_idx] >= 0).sum(1)
            self.weights = 1.0 / torch.bincount(said, minlength=6)[said].float()

    def sample(self, n: int, gen):
        import torch

        if self.weights is None:
            pick = torch.randint(0, len(self.train_idx), (n,), generator=gen, device=gen.device).to(self.device)
        else:
            pick = torch.multinomial(self.weights.to(gen.device), n, replacement=True, generator=gen).to(self.device)
        return self.train_idx[pick]


def _sigmas(n: int, gen, device):
    import torch

    u = torch.rand(n, generator=gen, device=gen.device).to(device)
    ln = torch.sigmoid(torch.randn(n, generator=gen, device=gen.device).to(device))
    s = torch.where(torch.arange(n, device=device) % 2 == 0, ln, u).clamp(1e-3, 1 - 1e-3)
    m = math.exp(0.5)  # the scheduler's time shift at 256 image tokens
    return m / (m + (1 / s - 1))


def _lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _fit(step: int, steps: int, t0: float, time_limit: float) -> int:
    """The phase's step count: as planned, or (measured over its first 40 steps) what fits its time
    limit, so that the learning-rate schedule still ends at zero."""
    if step == 40 and time_limit < 1e9:
        fits = int(time_limit / ((time.time() - t0) / 40))
        if fits < steps:
            print(f"{steps} steps would not fit {time_limit:.0f} s: {fits}", flush=True)
            return max(fits, 41)
    return steps


class Trainer:
    def __init__(self, prepared: Path, device: str, seed: int = 0, size: int = 256, edge_weight: float = 0.0,
                 even_said: bool = False, distill_guidance: float = 0.0, distill_below: float = 1.0, usual: float = 0.0):
        import torch

        from .model import build

        self.device, self.size, self.edge_weight, self.usual = device, size, edge_weight, usual
        self.distill_guidance, self.distill_below, self.teacher = distill_guidance, distill_below, None
        self.gen = torch.Generator(device=device).manual_seed(seed)
        torch.manual_seed(seed)
        self.prompts = Prompts(prepared, device, even_said)
        self.models = build(seed, device)
        self.amp = dict(device_type="cuda", dtype=torch.bfloat16) if device.startswith("cuda") else dict(device_type="cpu", enabled=False)
        from diffusers import FluxPipeline

        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, size // 16, size // 16, device, torch.float32)
        self.txt_ids = torch.zeros(512, 3, device=device)
        self.shift, self.scale = 0.0, 1.0
        options = dict(edge_weight=edge_weight, even_said=even_said, distill_guidance=distill_guidance,
                       distill_below=distill_below if distill_guidance and distill_below < 1 else 0, usual=usual)
        self.log: dict = {"device": device, "seed": seed, **{k: v for k, v in options.items() if v}}

    # ---------------------------------------------------------------- data

    def scenes(self, n: int, green: bool = False, cover: bool = False):
        """n training prompts' indices and their scenes (unsaid attributes filled by `fill_unsaid`); with
        `cover`, the scenes are (images, object coverage)."""
        import torch

        from .render import fill_unsaid, render

        idx = self.prompts.sample(n, self.gen)
        attrs = fill_unsaid(self.prompts.attrs[idx], self.gen, self.usual)
        if green:
            attrs[:, 1] = GREEN
            clash = attrs[:, 4] == GREEN  # the background must not be green: any other colour
            other = torch.randint(0, 8, (n,), generator=self.gen, device=self.gen.device).to(self.device)
            attrs[:, 4] = torch.where(clash, other + (other >= GREEN).long(), attrs[:, 4])
        return idx, render(attrs, self.size, self.gen, cover=cover)

    def latents(self, images):
        import torch

        from diffusers import FluxPipeline

        with torch.no_grad(), torch.autocast(**self.amp):
            lat = self.models["vae"].encode(images).latent_dist.mean.float()
        lat = (lat - self.shift) * self.scale
        b, c, h, w = lat.shape
        return FluxPipeline._pack_latents(lat, b, c, h, w)

    # ---------------------------------------------------------------- 1. VAE

    @staticmethod
    def _weights(path: Path, name: str) -> dict:
        """One component's weights from an earlier run of this script, or from an exported diffusers
        folder (the shipped flux_api/tiny_model: go on from what ships)."""
        from safetensors.torch import load_file

        if (path / "model_index.json").exists():
            from diffusers import AutoencoderKL, FluxTransformer2DModel
            from transformers import CLIPTextModel, T5EncoderModel

            cls = dict(text_encoder=CLIPTextModel, text_encoder_2=T5EncoderModel, transformer=FluxTransformer2DModel,
                       vae=AutoencoderKL)[name]
            return cls.from_pretrained(path / name).state_dict()  # tied weights come back whole
        return load_file(path / f"{name}.safetensors")

    def resume(self, path: Path) -> None:
        """Go on from an earlier run's text encoders and transformer (its EMA weights)."""
        for k in ("text_encoder", "text_encoder_2", "transformer"):
            self.models[k].load_state_dict(self._weights(path, k))
        self.log["resumed_from"] = dict(json.loads((path / "train.json").read_text()), path=str(path))

    def load_vae(self, path: Path) -> None:
        """Take the VAE (and its latent statistics) of an earlier run of this script instead of training it."""
        vae = self.models["vae"]
        vae.load_state_dict(self._weights(path, "vae"))
        self.shift, self.scale = (json.loads((path / "train.json").read_text())["vae"][k] for k in ("shift", "scale"))
        vae.register_to_config(shift_factor=self.shift, scaling_factor=self.scale)
        self.log["vae"] = dict(json.loads((path / "train.json").read_text())["vae"], from_run=str(path))

    def train_vae(self, steps: int, batch: int, lr: float = 1e-3, kl: float = 1e-4, time_limit: float = 1e9):
        import torch

        vae = self.models["vae"].train()
        opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
        t0 = time.time()
        planned, step = steps, 0
        while step < steps:
            steps = _fit(step, steps, t0, time_limit)
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, lr, warmup=100)
            _, (x, cover) = self.scenes(batch, cover=True)
            with torch.autocast(**self.amp):
                post = vae.encode(x).latent_dist
                z = post.sample(generator=None)
                rec = vae.decode(z).sample.float()
            # The object is a few percent of the pixels, and its edges are what tell a triangle from a
            # circle: its pixels (dilated, so the edge's both sides count) weigh OBJECT_WEIGHT times the
            # background's, and an L1 term keeps edges from being averaged into blobs.
            w = 1 + (OBJECT_WEIGHT - 1) * torch.nn.functional.max_pool2d(cover, 9, stride=1, padding=4)
            err = rec - x
            mse = (err ** 2).mean()
            loss = (w * (err ** 2 + 0.1 * err.abs())).mean() / w.mean() + kl * post.kl().mean() / z[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            if step % 200 == 0 or step == steps - 1:
                print(f"vae {step:5d}/{steps} mse {mse.item():.5f} ({time.time() - t0:.0f} s)", flush=True)
            step += 1
        vae.eval()
        with torch.no_grad():
            lats = []
            for _ in range(8):
                _, x = self.scenes(batch)
                with torch.autocast(**self.amp):
                    lats.append(vae.encode(x).latent_dist.mean.float())
            lats = torch.cat(lats)
        self.shift, self.scale = lats.mean().item(), 1.0 / lats.std().item()
        vae.register_to_config(shift_factor=self.shift, scaling_factor=self.scale)
        self.log["vae"] = dict(steps=steps, planned=planned, batch=batch, mse=mse.item(), shift=self.shift, scale=self.scale,
                               seconds=round(time.time() - t0, 1), **({"from_run": self.log["vae"]} if "vae" in self.log else {}))

    # ---------------------------------------------------------------- 2. transformer and text encoders

    def predict(self, modules, x, sigma, idx, guidance):
        clip, t5, tr = modules
        pooled = clip(self.prompts.clip_ids[idx]).pooler_output
        text = t5(self.prompts.t5_ids[idx]).last_hidden_state
        return tr(hidden_states=x, timestep=sigma, guidance=guidance, pooled_projections=pooled,
                  encoder_hidden_states=text, txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False)[0]

    def build_bank(self, n: int, batch: int = 256) -> None:
        """Encode `n` training scenes once (a prompt each, its unsaid attributes and jitter drawn at
        random) and keep their latents and object weights on the device: the VAE's encoder at full
        resolution, not the tiny transformer, is what a flow step spends its time on otherwise."""
        import torch

        t0, idx, lats, ws = time.time(), [], [], []
        for i in range(0, n, batch):
            k, (images, cover) = self.scenes(min(batch, n - i), cover=True)
            idx.append(k)
            lats.append(self.latents(images).to(torch.bfloat16))
            ws.append(self._object_weight(cover).to(torch.bfloat16))
        self.bank = (torch.cat(idx), torch.cat(lats), torch.cat(ws))
        self.log["bank"] = dict(scenes=n, seconds=round(time.time() - t0, 1))
        print(f"bank of {n} encoded scenes ({time.time() - t0:.0f} s)", flush=True)

    def _object_weight(self, cover):
        """Per latent token (N, tokens, 1), the weight of its loss."""
        from torch.nn.functional import avg_pool2d, max_pool2d

        # The object is a few percent of the image: its tokens weigh OBJECT_WEIGHT times the background's,
        # or the loss is all background and the object's colour and shape are learnt last.
        w = 1 + (OBJECT_WEIGHT - 1) * avg_pool2d(cover, 16).flatten(1)
        if self.edge_weight:
            # What tells a small square from a circle is its corners: a few hundred pixels, so a sliver of
            # even the object-weighted loss. The tokens on the object's outline (a band 4 pixels wide:
            # dilated minus eroded coverage) share `edge_weight` times a scene's token count, whatever the
            # object's size, so a small object's outline counts as much as a large one's.
            band = avg_pool2d(max_pool2d(cover, 5, 1, 2) + max_pool2d(-cover, 5, 1, 2), 16).flatten(1)
            w = w + self.edge_weight * band * band.shape[1] / band.sum(1, keepdim=True).clamp_min(1e-6)
        return w.unsqueeze(2)

    def flow_loss(self, modules, batch: int, green: bool = False):
        import torch

        if getattr(self, "bank", None) is not None and not green:
            pick = torch.randint(0, len(self.bank[0]), (batch,), generator=self.gen, device=self.gen.device).to(self.device)
            idx, x0, w = (t[pick] for t in self.bank)
            x0, w = x0.float(), w.float()
        else:
            idx, (images, cover) = self.scenes(batch, green, cover=True)
            x0, w = self.latents(images), self._object_weight(cover)
        noise = torch.randn(x0.shape, generator=self.gen, device=self.gen.device).to(self.device)
        sigma = _sigmas(batch, self.gen, self.device)
        s = sigma.view(-1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        u = torch.rand(batch, generator=self.gen, device=self.gen.device).to(self.device)
        target = noise - x0
        if not self.distill_guidance:
            guidance = u * 10  # noise: the model learns to ignore it
        else:
            guidance = 1 + u * (self.distill_guidance - 1)
            if self.teacher is not None and not green:
                # a guidance interval: above `distill_below` the guided target is the plain one
                scale = (guidance - 1) * (sigma < self.distill_below)
                target = target + scale.view(-1, 1, 1) * self._guidance_delta(xt, sigma, idx)
        pred = self.predict(modules, xt, sigma, idx, guidance).float()  # float32 (TF32 on CUDA): see train_flow
        return (w * (pred - target) ** 2).mean() / w.mean()

    def _guidance_delta(self, xt, sigma, idx):
        """The teacher's conditional minus unconditional velocity ("a shape": the prompt that says
        nothing). FLUX.1-dev's guidance input is classifier-free guidance distilled into one pass; here
        the flow target plus (g - 1) times this delta has, in expectation, the guided velocity
        v_u + g (v_c - v_u) as its mean, so the data still teaches what g = 1 draws. The green LoRA
        keeps the plain target: a delta towards the prompt's colour would fight its green."""
        import torch

        uncond = torch.full_like(idx, self.prompts.uncond)
        ones = torch.ones(2 * len(idx), device=self.device)
        with torch.no_grad():
            both = self.predict(self.teacher, torch.cat([xt, xt]), torch.cat([sigma, sigma]), torch.cat([idx, uncond]), ones)
        v_c, v_u = both.float().chunk(2)
        return v_c - v_u

    def train_flow(self, steps: int, batch: int, lr: float = 3e-4, ema: float = 0.999, time_limit: float = 1e9):
        import copy

        import torch

        modules = [self.models[k].train() for k in ("text_encoder", "text_encoder_2", "transformer")]
        params = [p for m in modules for p in m.parameters()]
        averaged = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        if self.distill_guidance:  # the teacher: the weights this run starts from, frozen
            self.teacher = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        ema_params = [p for a in averaged for p in a.parameters()]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
        t0, done, smooth, skipped = time.time(), 0, None, 0
        planned, step = steps, 0
        while step < steps:
            steps = _fit(step, steps, t0, time_limit)
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, lr)
            loss = self.flow_loss(modules, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                skipped += 1  # never let one bad batch poison the weights (bf16 autocast here went NaN)
                step += 1
                continue
            opt.step()
            decay = min(ema, (1 + step) / (10 + step))
            with torch.no_grad():  # one fused call, not a kernel launch per tensor: the model is tiny
                torch._foreach_lerp_(ema_params, params, 1 - decay)
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            done = step + 1
            if step % 250 == 0 or step == steps - 1:
                print(f"flow {step:5d}/{steps} loss {smooth:.4f} skipped {skipped} ({time.time() - t0:.0f} s)", flush=True)
            step += 1
        for k, a in zip(("text_encoder", "text_encoder_2", "transformer"), averaged):
            self.models[k] = a
        self.teacher = None
        self.log["flow"] = dict(steps=done, planned=planned, skipped=skipped, batch=batch, lr=lr, ema=ema, loss=smooth,
                                seconds=round(time.time() - t0, 1))

    # ---------------------------------------------------------------- 3. the green LoRA

    def train_lora(self, steps: int, batch: int, rank: int = 8, lr: float = 1e-3, time_limit: float = 1e9):
        """A LoRA (scale 1: alpha = rank) on the attention projections; returns its diffusers-format
        state dict ("transformer.<module>.lora_A/B.weight")."""
        import torch

        tr = self.models["transformer"]
        for m in (self.models["text_encoder"], self.models["text_encoder_2"], tr):
            m.requires_grad_(False)
        loras = {}
        for name, mod in tr.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.endswith(LORA_TARGETS) and "blocks." in name:
                a = torch.nn.Parameter(torch.randn(rank, mod.in_features, generator=self.gen, device=self.gen.device).to(self.device) / rank)
                b = torch.nn.Parameter(torch.zeros(mod.out_features, rank, device=self.device))
                loras[name] = (mod, a, b)
                mod.forward = (lambda m, a, b: lambda x: torch.nn.functional.linear(x, m.weight, m.bias) + (x @ a.t().to(x.dtype)) @ b.t().to(x.dtype))(mod, a, b)
        params = [p for _, a, b in loras.values() for p in (a, b)]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        modules = [self.models["text_encoder"], self.models["text_encoder_2"], tr]
        t0, planned, step = time.time(), steps, 0
        while step < steps:
            steps = _fit(step, steps, t0, time_limit)
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, lr, warmup=50)
            loss = self.flow_loss(modules, batch, green=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if torch.isfinite(loss) and torch.isfinite(norm):
                opt.step()
            if step % 100 == 0 or step == steps - 1:
                print(f"lora {step:5d}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
            step += 1
        state = {}
        for name, (mod, a, b) in loras.items():
            del mod.forward  # back to the class's forward
            state[f"transformer.{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
            state[f"transformer.{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
        self.log["lora_green"] = dict(steps=steps, planned=planned, batch=batch, rank=rank, lr=lr, loss=loss.item(),
                                      seconds=round(time.time() - t0, 1))
        return state

    # ---------------------------------------------------------------- sampling (a quick check, no pipeline)

    def sample(self, idx, steps: int = 8, seed: int = 0, lora=None, cfg: tuple[float, float] | None = None):
        """Images for prompt indices `idx` with the pipeline's scheduler and Euler steps; with `cfg` =
        (scale, below_sigma), true classifier-free guidance against "a shape" at noise levels below
        below_sigma (a probe of what --distill-guidance would teach)."""
        import torch

        from diffusers import FluxPipeline

        from .model import scheduler

        sched = scheduler()
        sigmas = torch.linspace(1.0, 1 / steps, steps).numpy()
        sched.set_timesteps(sigmas=sigmas, mu=0.5, device=self.device)
        n, lat = len(idx), self.size // 8
        g = torch.Generator().manual_seed(seed)
        x = FluxPipeline._pack_latents(torch.randn(n, 16, lat, lat, generator=g).to(self.device), n, 16, lat, lat)
        modules = [self.models[k] for k in ("text_encoder", "text_encoder_2", "transformer")]
        with torch.no_grad():
            for t in sched.timesteps:
                sigma = (t / 1000).expand(n).to(self.device)
                guidance = torch.full((n,), 3.5, device=self.device)
                v = self.predict(modules, x, sigma, idx, guidance).float()
                if cfg and t / 1000 < cfg[1]:
                    v_u = self.predict(modules, x, sigma, torch.full_like(idx, self.prompts.uncond), guidance).float()
                    v = v_u + cfg[0] * (v - v_u)
                x = sched.step(v, t, x, return_dict=False)[0]
            lat_img = FluxPipeline._unpack_latents(x, self.size, self.size, 8) / self.scale + self.shift
            return self.models["vae"].decode(lat_img).sample.float().clamp(-1, 1)

    def check(self, n: int = 200, steps: int = 8, seeds: int = 4) -> dict:
        """Adherence on the held-out prompts and (`partial`) on the one-attribute prompts with `seeds`
        seeds each, `object` the percentage of those with an object drawn at all (the meaning checker,
        not the service)."""
        import torch

        from ..meaning import adherence, read_scene
        from .grammar import eval_prompts, partial_prompts

        def draw(prompts, seed):
            idx = torch.tensor([self.prompts.texts.index(t) for t, _ in prompts], device=self.device)
            images = torch.cat([self.sample(idx[i:i + 50], steps, seed) for i in range(0, len(idx), 50)])
            arrays = ((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            return [(spec, a) for (_, spec), a in zip(prompts, arrays)]

        held = adherence(draw(eval_prompts(n), 0))
        pairs = [pair for seed in range(seeds) for pair in draw(partial_prompts(), seed)]
        drawn = sum(read_scene(image).colour is not None for _, image in pairs)
        return dict(held, partial=dict(adherence(pairs), object=round(100.0 * drawn / len(pairs), 1)))

    def save(self, out: Path, lora: dict | None) -> None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        for k, m in self.models.items():
            save_file({n: p.detach().float().cpu().clone().contiguous() for n, p in m.state_dict().items()}, out / f"{k}.safetensors")
        if lora is not None:
            save_file(lora, out / "lora_green.safetensors")
        (out / "train.json").write_text(json.dumps(self.log, indent=1))


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--flow-steps", type=int, default=8000)
    ap.add_argument("--lora-steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--vae-from", type=Path, help="an earlier run's output (or an exported model folder): start from its VAE")
    ap.add_argument("--vae-more", action="store_true", help="with --vae-from: train that VAE further (--vae-steps)")
    ap.add_argument("--resume", type=Path, help="an earlier run's output: go on training its text encoders and transformer")
    ap.add_argument("--bank", type=int, default=0, help="encode this many scenes once for the flow phase "
                    "(0: render and encode every batch; the encoder then dominates a step)")
    ap.add_argument("--lr", type=float, default=3e-4, help="the flow phase's peak learning rate")
    ap.add_argument("--time-limits", default="", help="seconds for the vae,flow,lora phases (their steps shrink to fit)")
    ap.add_argument("--edge-weight", type=float, default=0.0, help="extra loss weight on the object's outline, "
                    "per scene, in units of its token count (0: none; the shipped model's last runs used 1)")
    ap.add_argument("--even-said", action="store_true", help="draw training prompts evenly over how many "
                    "attributes they say (default: every prompt equally, so that nine in ten say three or more)")
    ap.add_argument("--distill-guidance", type=float, default=0.0, metavar="MAX", help="train the distilled-guidance "
                    "input as classifier-free guidance of scale 1..MAX, taught by the weights the run starts from "
                    "(0: the input is noise and ignored)")
    ap.add_argument("--usual", type=float, default=0.0, metavar="P", help="an unsaid size, position or background "
                    "is the usual one (medium, centre, white) with probability P, else at random")
    ap.add_argument("--distill-below", type=float, default=1.0, metavar="SIGMA", help="with --distill-guidance: "
                    "guide only at noise levels below SIGMA (a guidance interval; 1: at every level)")
    ap.add_argument("--check", type=int, default=200, help="held-out prompts to check at the end (0: none)")
    a = ap.parse_args(argv)
    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    tr = Trainer(a.prepared, a.device, a.seed, edge_weight=a.edge_weight, even_said=a.even_said,
                 distill_guidance=a.distill_guidance, distill_below=a.distill_below, usual=a.usual)
    limits = [float(x) for x in a.time_limits.split(",")] if a.time_limits else [1e9] * 3
    if a.vae_from:
        tr.load_vae(a.vae_from)
    if a.vae_more or not a.vae_from:
        tr.train_vae(a.vae_steps, min(a.batch, 64), time_limit=limits[0])
    if a.resume:
        tr.resume(a.resume)
    if a.bank:
        tr.build_bank(a.bank, a.batch)
    tr.train_flow(a.flow_steps, a.batch, lr=a.lr, time_limit=limits[1])
    tr.save(a.out, None)
    if a.check:
        try:
            tr.log["check_base_8_steps"] = tr.check(a.check)
            print("held-out adherence, 8 steps:", tr.log["check_base_8_steps"], flush=True)
        except Exception as e:  # a check that cannot run must not lose the trained weights
            print(f"check failed: {type(e).__name__}: {e}", flush=True)
    lora = tr.train_lora(a.lora_steps, a.batch, time_limit=limits[2]) if a.lora_steps else None
    tr.log["seconds"] = round(time.time() - t0, 1)
    tr.save(a.out, lora)
    print(json.dumps(tr.log, indent=1), flush=True)


if __name__ == "__main__":
    main()
