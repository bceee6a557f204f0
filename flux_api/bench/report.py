"""The benchmark's report: each target's images against stock's and its defaults', a headline line as it finishes, then
one markdown table row per target and size, and each service's settings."""

from __future__ import annotations

from .images import psnr


def without_images(obj):
    if isinstance(obj, dict):
        return {k: without_images(v) for k, v in obj.items() if k not in ("last_image_b64", "png_b64")}
    return obj


def image_of(target: dict, px) -> str | None:
    """A target's image at `px` (base64 PNG): a service's last one, or stock's."""
    return target.get("last_image_b64", {}).get(px) or target.get("sizes", {}).get(px, {}).get("png_b64")


def compare_images(R: dict, name: str, default: str) -> list[str]:
    """PSNR of `name`'s largest image against stock's and against its service's defaults (the target `default`,
    e.g. fp4 for fp4+qkv, and the other way round), as soon as both have run: issue 25 asks >= 40 dB. Kept in
    each target's `psnr_vs`; the lines to print for the earlier targets that got a comparison now."""
    done = R["targets"]
    t = done[name]
    if "error" in t or not t.get("sizes"):
        return []
    px = max(t["sizes"], key=int)
    for other in dict.fromkeys(("stock", default)):  # stock+fp8's defaults are stock: once
        if other != name and image_of(t, px) and image_of(done.get(other, {}), px):
            t.setdefault("psnr_vs", {})[other] = psnr(image_of(t, px), image_of(done[other], px))
    lines = []
    if name == default:  # the defaults after their variants: each variant against them
        for other, o in done.items():
            if other.startswith(default + "+") and "error" not in o and image_of(o, px) and image_of(t, px):
                o.setdefault("psnr_vs", {})[default] = psnr(image_of(o, px), image_of(t, px))
                lines.append(f"PSNR {other} vs {default}: {o['psnr_vs'][default]}")
    return lines


def headline(name: str, t: dict, R: dict) -> str:
    """One line a target's essentials, printed as it finishes: a run cut short still has them in its log."""
    if "error" in t:
        return f"HEADLINE {name}: ERROR {t['error'][:200]}"
    px, stock = max(t["sizes"], key=int), R["targets"].get("stock", {}).get("sizes", {})
    s = t["sizes"][px]
    base = stock.get(px, {}).get("latency_s")
    parts = [f"{px}px {s['latency_s']} s", f"{round(s['latency_s'] / base, 3)}x stock" if base else "no stock yet"]
    if "s_per_step" in s:
        lora, compile_ = t.get("lora") or {}, t.get("compile") or {}
        parts += [f"{s['s_per_step']} s/step", f"ready {t.get('ready_s')} s",
                  f"LoRA/base {lora.get('lora_over_base')} (two {lora.get('two_loras_over_base')})",
                  f"compiles after warm-up {compile_.get('compiles_after_warmup')}"]
    parts += [f"PSNR vs {other} {value}" for other, value in (t.get("psnr_vs") or {}).items()]
    return f"HEADLINE {name}: " + ", ".join(parts)


def throughput(t: dict) -> str:
    """Images a minute by concurrency, or "-" where the run asked for none (`--concurrency` with no values)."""
    if not t.get("images_per_min"):
        return "-"
    return f"{t['images_per_min']} @{t.get('images_per_min_px')}px"


def table(R: dict) -> str:
    stock = R["targets"].get("stock", {})
    rows = ["| target | backend | size | latency s | vs stock | s/step | overhead % | encode ms | ready s | unseen size 1st/2nd s | images/min by concurrency | peak MiB alloc / reserved | PSNR vs stock |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in R["targets"].items():
        if "error" in t:
            rows.append(f"| {name} | ERROR: {t['error'][:160]} |")
            continue
        for px, s in t["sizes"].items():
            base = stock.get("sizes", {}).get(px, {}).get("latency_s")
            ratio = round(s["latency_s"] / base, 3) if base else "-"
            if name.startswith("stock"):
                how = " + ".join(t.get("options") or ["eager"])
                ps = psnr(image_of(t, px), image_of(stock, px)) if base and name != "stock" else "-"
                rows.append(f"| {name} | diffusers {how} | {px} | {s['latency_s']} | {ratio} | - | - | - | {t.get('load_s')} "
                            f"(+{t.get('warmup_s', {}).get(px, '-')} warm-up) | - | - | {t.get('peak_mib', '-')} | {ps} |")
                continue
            ps = psnr(image_of(t, px), image_of(stock, px)) if base else "-"
            u = t["unseen_size"]
            rows.append(f"| {name} | {t['backend']} | {px} | {s['latency_s']} | {ratio} | {s['s_per_step']} | {s['overhead_pct']} | "
                        f"{s['encode_ms']} | {t['ready_s']} | {u['first_latency_s']}/{u['second_latency_s']} ({u['px']}px) | "
                        f"{throughput(t)} | {t['peak_mib']} / "
                        f"{t.get('peak_reserved_mib')} | {ps} |")
    lora_rows = [(n, t["lora"]) for n, t in R["targets"].items() if t.get("lora")]
    if lora_rows:
        rows += ["\n| target | size | base s | LoRA s | LoRA / base | 2 LoRAs s | 2 LoRAs / base | changes image | base bitwise after |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for name, lo in lora_rows:
            if "error" in lo:
                rows.append(f"| {name} | {lo['px']} | {lo['base_latency_s']} | ERROR {lo['status']}: {lo['error'][:120]} |")
                continue
            rows.append(f"| {name} | {lo['px']} | {lo['base_latency_s']} | {lo['lora_latency_s']} | {lo['lora_over_base']} | "
                        f"{lo.get('two_loras_latency_s', '-')} | {lo.get('two_loras_over_base', '-')} | "
                        f"{lo['lora_changes_image']} | {lo['base_after_lora_identical']} |")
    cache_rows = [(n, row) for n, t in R["targets"].items() for row in t.get("step_cache") or ()]
    if cache_rows:
        rows += ["\n| target | first_block_cache | latency s | over base | steps skipped | same bytes twice | PSNR vs base | base bitwise after |",
                 "|---|---|---|---|---|---|---|---|"]
        rows += [f"| {n} | {c['threshold']} | ERROR: {c['error'][:160]} |" if "error" in c else
                 f"| {n} | {c['threshold']} | {c['latency_s']} | {c['over_base']} | {c['steps_skipped']} | {c['same_bytes']} | "
                 f"{c['psnr_vs_base']} | {c.get('base_after_identical', '')} |" for n, c in cache_rows]
    live = {n: t["compiles_after_warmup"] for n, t in R["targets"].items() if t.get("compiles_after_warmup")}
    if live:  # the promise is 0: say so loudly, above the details
        rows.append(f"\nCOMPILED ON A LIVE REQUEST (compiles after the warm-up, should be 0): {live}")
    for name, t in R["targets"].items():
        if t.get("memory"):
            rows.append(f"\n{name}: placement {t.get('placement')}; compile {t.get('compile')}; compiles after "
                        f"warm-up {t.get('compiles_after_warmup')}; attention {t.get('attention')}; CUDA graphs {t.get('cuda_graphs')}; memory "
                        f"{t.get('memory')}; LoRA switches ms {t.get('lora', {}).get('lora_ms_load_then_switches')}; "
                        f"other LoRAs {t.get('lora', {}).get('more')}; "
                        f"true CFG status {t.get('true_cfg_status')}")
    for name, t in R["targets"].items():
        if t.get("images") or t.get("batching"):
            rows.append(f"\n{name}: several images / edits {t.get('images') or t.get('batching')}")
    enc = "; ".join(f"{label}: " + ", ".join(f"{k} {v['ms']} ms/{v['kib']} KiB" for k, v in d.items())
                    for label, d in R.get("encoding_ms", {}).items())
    return "\n".join(rows) + f"\n\nImage encoding at {max(R['sizes'])}px (host CPU): {enc}\n" + \
        f"GPU: {R['gpu']}; torch {R['torch']}; diffusers {R['diffusers']}; command: {R['command']}"
