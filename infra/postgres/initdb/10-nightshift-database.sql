-- The gateway's own database beside Prefect's (POSTGRES_DB=prefect): both run Alembic migrations
-- with an `alembic_version` table, so they cannot share one database. The postgres image runs this
-- once, as POSTGRES_USER, when it initialises an empty data volume.
CREATE DATABASE nightshift;
