"""Where a LoRA comes from, and checking it before it touches the model.

A LoRA is named relative to the configured LoRA folder. Only `.safetensors` files are read (pickle
formats can run code when loaded), and a name that resolves outside the folder (`..`, an absolute
path, a symlink pointing out) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InvalidLora, LoraNotFound

SUFFIX = ".safetensors"


@dataclass(frozen=True)
class LoraSpec:
    name: str
    weight: float

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight}


def resolve_lora_path(lora_dir: Path, name: str) -> Path:
    """The file a LoRA name points to, inside `lora_dir`. Raises InvalidLora or LoraNotFound."""
    if not name or not name.strip() or "\x00" in name:
        raise InvalidLora("LoRA name is empty")
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or Path(name).is_absolute():
        raise InvalidLora(f"LoRA name {name!r} is an absolute path; give a name inside the LoRA folder")
    if ".." in rel.parts:
        raise InvalidLora(f"LoRA name {name!r} points outside the LoRA folder")
    if rel.suffix and rel.suffix != SUFFIX:
        raise InvalidLora(f"LoRA {name!r} is not a .safetensors file; pickle formats (.pt, .bin, .ckpt) are never read")
    if not rel.suffix:
        rel = rel.with_name(rel.name + SUFFIX)
    root = Path(lora_dir).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise InvalidLora(f"LoRA {name!r} resolves outside the LoRA folder (a symlink pointing out?)")
    if not path.is_file():
        raise LoraNotFound(f"LoRA {name!r} was not found in the LoRA folder {root}")
    return path


def _target_name(module: str) -> str:
    """'transformer.transformer_blocks.3.attn.to_out.0' -> 'attn.to_out.0': the module within its block."""
    parts = module.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return ".".join(parts[i + 1 :])
    return module.removeprefix("transformer.")


def inspect_lora(path: Path) -> dict:
    """Rank and target modules, read from the tensors' names and shapes (no weights are loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            ranks, targets = set(), set()
            for k in keys:
                if ".lora_A." in k or ".lora_down." in k:
                    ranks.add(f.get_slice(k).get_shape()[0])
                    targets.add(_target_name(k.split(".lora_A.")[0].split(".lora_down.")[0]))
    except Exception as e:  # safetensors raises several types for a damaged header
        raise InvalidLora(f"LoRA file {path.name} is not a readable safetensors file: {e}") from e
    if not ranks:
        raise InvalidLora(f"LoRA file {path.name} holds no LoRA tensors (no lora_A / lora_down weights)")
    return {"rank": max(ranks), "target_modules": sorted(targets), "tensors": len(keys)}


def list_lora_folder(lora_dir: Path) -> list[dict]:
    """Every .safetensors file under the folder, with its size, rank and targets (or why not)."""
    root = Path(lora_dir)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        name = path.relative_to(root).as_posix()[: -len(SUFFIX)]
        try:
            resolve_lora_path(root, name)
        except (InvalidLora, LoraNotFound):
            continue  # symlinks out of the folder are not offered
        entry = {"name": name, "size_bytes": path.stat().st_size}
        try:
            entry.update(inspect_lora(path))
        except InvalidLora as e:
            entry["error"] = e.message
        out.append(entry)
    return out
