"""``GET /v1/objectives``: the objectives jobs may name."""

from __future__ import annotations

from fastapi import APIRouter

from metatune import objectives
from metatune_service.api.deps import OwnerDep
from metatune_service.api.errors import AUTHENTICATED, responses
from metatune_service.schemas import ObjectivePublic

router = APIRouter(prefix="/v1/objectives", tags=["objectives"], responses=responses(*AUTHENTICATED))


@router.get("", response_model=list[ObjectivePublic], operation_id="listObjectives")
def list_objectives(owner: OwnerDep) -> list[ObjectivePublic]:
    return [ObjectivePublic(**{**row, "parameters": {k: v for k, v in row["parameters"].items()
                                                     if isinstance(v, (int, float, str, bool))}})
            for row in objectives.describe()]
