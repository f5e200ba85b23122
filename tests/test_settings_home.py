"""NIGHTSHIFT_HOME moves every default under .nightshift/; explicit settings keep their values."""

from nightshift.settings import Settings


def test_home_moves_the_store_and_the_gateway_database(monkeypatch, tmp_path):
    monkeypatch.delenv("NIGHTSHIFT_STORAGE_ROOT", raising=False)
    monkeypatch.delenv("NIGHTSHIFT_API_DATABASE_URL", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path))
    settings = Settings()
    assert settings.storage.root == str(tmp_path / "store")
    assert settings.api.database_url == f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    monkeypatch.setenv("NIGHTSHIFT_STORAGE_ROOT", "s3://bucket/ns")
    assert Settings().storage.root == "s3://bucket/ns"  # set on purpose: kept
    assert Settings().api.database_url.endswith(f"{tmp_path}/gateway.db")
