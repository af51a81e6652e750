"""Datasets: upload an ImageFolder archive or register a server path, list, read, delete."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from saft_service import datasets
from saft_service.input_checks import NO_CONTROL_CHARACTERS
from saft_service.tables import Dataset

from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep, TenantDataset
from ..idempotent_route import IDEMPOTENCY_RESPONSES, IDEMPOTENT, IdempotentAnswer, IdempotentRoute
from ..pagination import newest_first_page
from ..problems import AUTH_RESPONSES, CONFLICT, INVALID, NOT_FOUND, TOO_LARGE, problem_doc
from ..schemas import DatasetImport, DatasetPublic, DatasetsPublic

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], responses=AUTH_RESPONSES, route_class=IdempotentRoute
)



IMPORT_BODY = {
    "application/json": {"schema": {"$ref": "#/components/schemas/DatasetImport"}},
}


async def json_import(request: Request) -> DatasetImport | None:
    """The JSON body of an import (``{name, source: {type: "path", path}}``); None for a form upload."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return None
    try:
        return DatasetImport.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err.get("loc", ()))} for err in e.errors(include_url=False)]
        ) from e


def document_bodies(app: FastAPI) -> None:
    """The OpenAPI document of ``POST /v1/datasets``: two bodies, a form upload (``file`` and ``name``, both
    required) or a JSON import (``DatasetImport``, which no parameter declares, so its schema is added here)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        imported = DatasetImport.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(imported.pop("$defs", {}))
        schemas["DatasetImport"] = imported
        form = doc["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        body = schemas[form["$ref"].rsplit("/", 1)[-1]]
        for prop in body["properties"].values():
            options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
            prop.update(options[0] if options else {})
            prop.pop("default", None)
        body["required"] = ["file", "name"]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


@router.post(
    "",
    response_model=DatasetPublic,
    status_code=201,
    summary="Upload a dataset, or register one already on the server",
    responses={
        **INVALID,
        **TOO_LARGE,
        **IDEMPOTENCY_RESPONSES,
        403: problem_doc("`imports_disabled`: this service registers no server paths."),
        415: problem_doc("The file is not a .zip, .tar or .tar.gz archive."),
        507: problem_doc("The service's storage is full (`storage_full`); nothing was stored."),
    },
    dependencies=[IDEMPOTENT],
    openapi_extra={"requestBody": {"content": IMPORT_BODY}},
)
def create_dataset(
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    imported: Annotated[DatasetImport | None, Depends(json_import)],
    answer: IdempotentAnswer,
    file: Annotated[
        UploadFile | None, File(description="A .zip, .tar or .tar.gz of <class>/<image> (+ classes.json).")
    ] = None,
    name: Annotated[
        str | None,
        Form(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS, description="A name for people."),
    ] = None,
) -> DatasetPublic:
    """A form upload (`file`, `name`): the archive is checked (safe paths, no links, size and count limits,
    ImageFolder layout, every image decodable) before anything is stored; a refused upload leaves nothing
    behind. For archives over `SAFT_MAX_UPLOAD_BYTES` use the resumable `/v1/uploads`.

    A JSON body `{"name": ..., "source": {"type": "path", "path": "/data/..."}}` registers a dataset that is
    already on the server, under one of the operator's import roots (`SAFT_IMPORT_ROOTS`): a folder is checked
    the same way and read in place (`external: true`; deleting the dataset never deletes those files), an
    archive is extracted into the store like an upload."""

    def record(s: Session, row: Dataset) -> None:
        answer(s, 201, DatasetPublic.of(row))

    if imported is not None:
        row = datasets.import_path(imported.source.path, name=imported.name, tenant=tenant, session=session,
                                   settings=settings, storage=storage, also=record)
    elif file is not None and name is not None:
        row = datasets.ingest_archive(file.file, name=name, tenant=tenant, session=session, settings=settings,
                                      storage=storage, also=record)
    else:
        missing = [n for n, v in (("file", file), ("name", name)) if v is None]
        raise RequestValidationError(
            [{"loc": ("body", m), "msg": "Field required", "type": "missing", "input": None} for m in missing]
        )
    return DatasetPublic.of(row)


@router.get("", response_model=DatasetsPublic, summary="List datasets, newest first")
def list_datasets(
    tenant: CurrentTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DatasetsPublic:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant.id)
    rows, next_cursor = newest_first_page(session, stmt, Dataset, limit=limit, cursor=cursor)
    return DatasetsPublic(data=[DatasetPublic.of(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=NOT_FOUND, summary="Get a dataset")
def get_dataset(dataset: TenantDataset) -> DatasetPublic:
    return DatasetPublic.of(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a dataset and its files (an external dataset's files are left alone)",
)
def delete_dataset(dataset: TenantDataset, session: SessionDep, storage: StorageDep) -> Response:
    """Refused (409 dataset_in_use) while a queued or running job trains or evaluates on it."""
    datasets.delete_dataset(session, storage, dataset)
    return Response(status_code=204)
