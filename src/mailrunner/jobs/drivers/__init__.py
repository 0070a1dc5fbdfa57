"""Driver name -> class, imported only when a pipeline uses it: the broker client libraries
are extras (README.md), and a missing one stops start-up with the `pip install` that adds it."""

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

_CLASSES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("mailrunner.jobs.drivers.memory", "MemoryDriver", None),
    "sqlite": ("mailrunner.jobs.drivers.sqlite", "SqliteDriver", None),
    "redis": ("mailrunner.jobs.drivers.redis", "RedisDriver", "redis"),
    "amqp": ("mailrunner.jobs.drivers.amqp", "AmqpDriver", "amqp"),
    "nats": ("mailrunner.jobs.drivers.nats", "NatsDriver", "nats"),
}
"""Driver name -> its module, its class and the extra that installs its broker client."""


def build_driver(name: str, settings: PipelineConfig, data_dir: Path) -> Driver:
    """Instantiate the driver a pipeline's settings name (not opened yet)."""
    module_name, class_name, extra = _CLASSES[settings.driver]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if extra is None:
            raise DriverUnavailable(
                f"pipeline {name}: the {settings.driver} driver cannot be loaded: {error}"
            ) from error
        raise DriverUnavailable(
            f"pipeline {name}: the {settings.driver} driver needs its client library"
            f" ({error.name or error}), install it with: pip install 'mailrunner[{extra}]'"
        ) from error
    driver_class: DriverClass = getattr(module, class_name)
    return driver_class(name, settings, data_dir)
