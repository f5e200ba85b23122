"""NightshiftStorage: a Prefect block naming the artifact store (local folder or S3)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from nightshift.settings import StorageConfig


class NightshiftStorage(Block):
    """Where batches, results and the request cache live.

    Save one per environment (``NightshiftStorage(root="s3://bucket/nightshift", ...).save("prod")``)
    and point workers at it with ``NIGHTSHIFT_STORAGE_BLOCK=prod``; the secret fields are stored
    encrypted by Prefect and never appear in ``prefect.yaml`` or flow parameters.
    """

    _block_type_name = "Nightshift Storage"
    _block_type_slug = "nightshift-storage"
    _description = "Artifact store of nightshift batches: a folder, file:// or s3:// root, with S3 endpoint and keys."

    root: str = Field(description="Root URL of the store: a folder, file://… or s3://bucket/prefix.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, Ceph…); empty for AWS.")
    region: str | None = Field(default=None, description="S3 region.")
    access_key_id: SecretStr | None = Field(default=None, description="S3 access key id (empty: environment or role).")
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")

    def to_config(self, base: StorageConfig) -> StorageConfig:
        """``base`` with this block's location and credentials (shard size etc. stay as set)."""
        return base.model_copy(
            update={
                "root": self.root,
                "endpoint_url": self.endpoint_url,
                "region": self.region,
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
                "block": None,
            }
        )


def resolve_storage(config: StorageConfig) -> StorageConfig:
    """The storage to use: the named block's when ``config.block`` is set, else ``config``; made absolute."""
    if config.block:
        config = NightshiftStorage.load(config.block).to_config(config)  # type: ignore[union-attr]
    return config.resolved()
