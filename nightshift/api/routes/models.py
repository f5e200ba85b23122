"""``/v1/models``: the models and LoRA adapters a batch line may name, from the model catalogue."""

from __future__ import annotations

from fastapi import APIRouter

from nightshift.api.deps import Caller, Gateway, Gw
from nightshift.api.errors import ApiError
from nightshift.api.schemas import ModelList, ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"])


def _models(gw: Gateway) -> list[ModelObject]:
    """Base models, then adapters (each naming its base model as ``parent``), as the catalogue lists them."""
    objects = []
    for model_id in gw.catalogue.ids():
        ref = gw.catalogue.resolve(model_id)
        assert ref is not None  # every listed id resolves
        objects.append(
            ModelObject(id=model_id, created=gw.catalogue_loaded, root=ref.model, parent=ref.model if ref.adapter else None)
        )
    return objects


@router.get("", response_model=ModelList)
async def list_models(who: Caller, gw: Gw) -> ModelList:
    """Every model and adapter served here (OpenAI's model list; adapters as vLLM lists them)."""
    return ModelList(data=_models(gw))


@router.get("/{model:path}", response_model=ModelObject)
async def retrieve_model(who: Caller, gw: Gw, model: str) -> ModelObject:
    """One model or adapter by id; OpenAI's 404 (``model_not_found``) for any other."""
    for found in _models(gw):
        if found.id == model:
            return found
    raise ApiError(404, f"The model {model[:128]!r} does not exist", code="model_not_found", param="model")
