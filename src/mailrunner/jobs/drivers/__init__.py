"""Driver name -> class, imported only when a pipeline uses it.

Lazy imports keep broker client libraries out of processes that do not need them, so
`config check` and the memory and sqlite drivers work without redis, aio-pika or nats-py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailrunner.config import PipelineConfig
from mailrunner.errors import DriverUnavailable
from mailrunner.jobs.driver import Driver

DriverClass = Callable[[str, Any, Path], Driver]
"""Every driver is built as `Driver(pipeline name, its PipelineConfig, data_dir)`."""

_CLASSES = {
    "memory": ("mailrunner.jobs.drivers.memory", "MemoryDriver"),
    "sqlite": ("mailrunner.jobs.drivers.sqlite", "SqliteDriver"),
    "redis": ("mailrunner.jobs.drivers.redis", "RedisDriver"),
    "amqp": ("mailrunner.jobs.drivers.amqp", "AmqpDriver"),
    "nats": ("mailrunner.jobs.drivers.nats", "NatsDriver"),
}


def build_driver(name: str, settings: PipelineConfig, data_dir: Path) -> Driver:
    """Instantiate the driver a pipeline's settings name (not opened yet)."""
    module_name, class_name = _CLASSES[settings.driver]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise DriverUnavailable(
            f"pipeline {name}: the {settings.driver} driver is not available: {error}"
        ) from error
    driver_class: DriverClass = getattr(module, class_name)
    return driver_class(name, settings, data_dir)
