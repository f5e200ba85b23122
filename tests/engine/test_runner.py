"""Engine placement from settings: replica names, what enters the batch version, Ray addresses."""

from __future__ import annotations

import pytest

from nightshift.core.protocol import Endpoint
from nightshift.engine.runner import EngineSpec, ray_init_kwargs
from nightshift.settings import EngineConfig, RayConfig, Settings


def _spec(**config: object) -> EngineSpec:
    return EngineSpec(model_path="/m", served_model_name="m", endpoint=Endpoint.CHAT_COMPLETIONS, config=EngineConfig(**config))


def test_replicas_are_named_per_spec_and_scaling_keeps_replica_0():
    one, three = _spec(), _spec(replicas=3)
    assert one.actor_name() == three.actor_name(0) and one.actor_name().endswith("-0")
    assert len({three.actor_name(i) for i in range(3)}) == 3
    assert all(three.actor_name(i).startswith("engine-") for i in range(3))  # what release_all_engines finds
    assert _spec(num_cpus=2).actor_name() != one.actor_name()  # placement that changes the actor does


def test_replicas_and_placement_stay_out_of_the_batch_version():
    base = EngineConfig().output_params()
    assert EngineConfig(replicas=4, num_cpus=2, num_gpus=1, tensor_parallel_size=2).output_params() == base


def test_replicas_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_REPLICAS", "3")
    monkeypatch.setenv("NIGHTSHIFT_RAY_ADDRESS", "ray://127.0.0.1:10001")
    settings = Settings()
    assert settings.engine.replicas == 3 and settings.ray.address == "ray://127.0.0.1:10001"
    with pytest.raises(ValueError):
        EngineConfig(replicas=0)


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6390", "ray://127.0.0.1:10001"])
def test_the_task_runner_joins_the_configured_ray(address):
    from flows.batch import build_task_runner

    assert ray_init_kwargs(RayConfig(address=address))["address"] == address
    runner = build_task_runner(Settings(ray=RayConfig(address=address)))
    assert runner.address == address
    assert "num_cpus" not in runner.init_kwargs  # a joined cluster brings its own resources
    # prefect-ray passes a host:port positionally and calls ray.init() bare for 'auto': only
    # 'auto' is repeated in the kwargs, so that a missing cluster fails instead of starting one.
    assert runner.init_kwargs.get("address") == (address if address == "auto" else None)


def test_without_an_address_the_task_runner_starts_a_local_ray():
    from flows.batch import build_task_runner

    runner = build_task_runner(Settings(ray=RayConfig(address="  ")))
    assert runner.address is None and "address" not in runner.init_kwargs
    assert runner.init_kwargs["_node_ip_address"] == "127.0.0.1"
