# A dated probe (2026-11-28), not part of the package: run from the repo root as
#   python docs/quality/2026-11-28-guidance-interval-probe.py .gpu/draw/from/r7a   (needs .gpu/draw/prep from prepare.py)
# Output: docs/quality/2026-11-28-guidance-interval-probe.txt
"""True CFG (uncond "a shape") applied only below a noise level: does a guidance interval keep the
complete-prompt gain without painting a lone colour over the background?"""
import sys, torch
from pathlib import Path
from diffusers import FluxPipeline
from flux_api.tiny_train.train import Trainer
from flux_api.tiny_train.model import scheduler
from flux_api.tiny_train.grammar import eval_prompts, partial_prompts
from flux_api.meaning import adherence, read_scene
tr = Trainer(Path(".gpu/draw/prep"), "cpu"); m = Path(sys.argv[1]); tr.load_vae(m); tr.resume(m)
mods = [tr.models[k].eval() for k in ("text_encoder", "text_encoder_2", "transformer")]
U = tr.prompts.texts.index("a shape")
def sample(idx, w, hi, steps=8, seed=0):
    sched = scheduler(); sched.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).numpy(), mu=0.5)
    n = len(idx); g = torch.Generator().manual_seed(seed)
    x = FluxPipeline._pack_latents(torch.randn(n, 16, 32, 32, generator=g), n, 16, 32, 32)
    with torch.no_grad():
        for t in sched.timesteps:
            s = (t / 1000).expand(n)
            v = tr.predict(mods, x, s, idx, torch.full((n,), 3.5)).float()
            if w != 1 and t / 1000 < hi:
                vu = tr.predict(mods, x, s, torch.full_like(idx, U), torch.full((n,), 3.5)).float()
                v = vu + w * (v - vu)
            x = sched.step(v, t, x, return_dict=False)[0]
        img = tr.models["vae"].decode(FluxPipeline._unpack_latents(x, 256, 256, 8) / tr.scale + tr.shift).sample.float().clamp(-1, 1)
    return ((img + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
comp = eval_prompts(200)[:48]; part = partial_prompts()
ci = torch.tensor([tr.prompts.texts.index(t) for t, _ in comp]); pi = torch.tensor([tr.prompts.texts.index(t) for t, _ in part])
for w, hi in [(1, 1.1), (3, 1.1), (3, 0.75), (3, 0.5)]:
    c = adherence([(s, a) for (_, s), a in zip(comp, sample(ci, w, hi))])
    pairs = [(s, a) for seed in range(3) for (_, s), a in zip(part, sample(pi, w, hi, seed=seed))]
    p = adherence(pairs); obj = round(100 * sum(read_scene(a).colour is not None for _, a in pairs) / len(pairs), 1)
    print(f"w={w} below sigma {hi}: complete48 {c} | partial {p} object {obj}", flush=True)
