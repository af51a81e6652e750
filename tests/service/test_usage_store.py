"""A tenant's storage as the store counts it, on both stores, in-process: uploaded datasets, uploads in flight
and job outputs count, external datasets and other tenants do not; the quota refuses before a row is written.
(The whole path over HTTP and through a worker: test_storage_quota.py.)"""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import func, select

from saft_service import db, jobs, keys, multipart
from saft_service.settings import Settings
from saft_service.tables import Checkpoint, Dataset, Mask, Upload, utcnow
from saft_service.usage import StorageQuotaExceeded, tenant_usage

pytestmark = pytest.mark.service


def dataset(tenant_id: str, size: int, *, external: bool = False) -> Dataset:
    return Dataset(id=f"ds_{secrets.token_hex(6)}", tenant_id=tenant_id, name="d", status="ready", path="datasets/x",
                   num_images=2, classes=["a", "b"], class_names=["a", "b"], counts={"a": 1, "b": 1},
                   size_bytes=size, external=external, created_at=utcnow())


def test_usage_counts_each_kind_of_the_tenants_own_bytes(migrated_settings: Settings) -> None:
    settings = migrated_settings.model_copy(update={"tenant_storage_bytes": 10_000})
    with db.session_factory(settings)() as s:
        mine, other = (keys.get_or_create_tenant(s, f"t-{secrets.token_hex(3)}") for _ in range(2))
        s.add_all([dataset(mine.id, 1000), dataset(mine.id, 5_000_000, external=True), dataset(other.id, 7000)])
        job = jobs.create(s, tenant_id=mine.id, dataset_id=None, spec={})
        s.flush()
        s.add(Checkpoint(job_id=job.id, path="jobs/x/c", sha256="0" * 64, size_bytes=300, base_model="m",
                         base_sha256="0" * 64, classes=["a"], created_at=utcnow()))
        s.add(Mask(job_id=job.id, ratio=0.001, k=1, num_eligible=1, num_params=1, size_bytes=200))
        s.commit()
        upload = multipart.create_upload(s, settings, tenant_id=mine.id, filename="a.zip", size=2000, sha256=None)

        used = tenant_usage(s, mine.id, settings)
        assert (used.datasets, used.uploads, used.jobs, used.total, used.quota) == (1000, 2000, 500, 3500, 10_000)
        assert tenant_usage(s, mine.id, settings, exclude_upload=upload.id).uploads == 0
        assert tenant_usage(s, other.id, settings).total == 7000
        used.check(6500)  # exactly at the quota is allowed
        with pytest.raises(StorageQuotaExceeded) as over:
            used.check(6501)
        assert over.value.code == "storage_quota_exceeded" and "3,500 of 10,000 bytes" in over.value.message

        # An upload past the quota is refused before its row is written.
        before = s.scalar(select(func.count()).select_from(Upload))
        with pytest.raises(StorageQuotaExceeded):
            multipart.create_upload(s, settings, tenant_id=mine.id, filename="b.zip", size=6501, sha256=None)
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Upload)) == before
        # No quota: anything fits.
        assert tenant_usage(s, mine.id, migrated_settings).left is None
