"""LoRA pinning and listing: /apply-lora, /remove-lora, /lora-status, /loras."""

from fastapi import APIRouter, Body

from ...schemas import ApplyLoraRequest, RemoveLoraRequest
from ..deps import EngineDep
from ..errors import error_responses
from ..results import lora_specs

router = APIRouter(tags=["lora"])
ERRORS = error_responses(403, 404, 503)


@router.post("/apply-lora", summary="Pin LoRAs for requests that name none", responses=ERRORS)
async def apply_lora(body: ApplyLoraRequest, engine: EngineDep) -> dict:
    """Replace the pinned LoRA set. It loads completely or nothing changes. Runs between generations."""
    return await engine.apply_loras(lora_specs(body.lora_refs()))


@router.post("/remove-lora", summary="Unpin one LoRA, or all", responses=error_responses(404, 503))
async def remove_lora(engine: EngineDep, body: RemoveLoraRequest | None = Body(None)) -> dict:
    """With no body, unpin everything; with lora_name, that one. The base model comes back exactly."""
    return await engine.remove_loras(body.lora_name if body else None)


@router.get("/lora-status", summary="Pinned and loaded LoRAs")
async def lora_status(engine: EngineDep) -> dict:
    """What is pinned (used by requests that name no LoRA) and which adapters are in memory."""
    return await engine.lora_status()


@router.get("/loras", summary="LoRAs in the LoRA folder, and those in memory")
async def loras(engine: EngineDep) -> dict:
    """Each .safetensors file in the LoRA folder with its size, rank and target modules."""
    return await engine.list_loras()
