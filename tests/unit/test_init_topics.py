"""`dicomcloud init` creates every topic a service uses, so none is made on the fly with other settings."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from dicomcloud import events, workers
from dicomcloud.cli import bus_topics
from dicomcloud.workers.loop import Handler, dead_letter_topic


def test_every_topic_named_in_events_is_created() -> None:
    named = {value for name, value in vars(events).items() if name.endswith("_QUEUE") and isinstance(value, str)}
    named |= {event.topic for event in events.BusEvent.__subclasses__()}
    assert named <= set(bus_topics())


def bus_handlers() -> set[type[Handler]]:
    """Every bus worker (a Handler subclass) defined anywhere in the workers package."""
    handlers: set[type[Handler]] = set()
    for info in pkgutil.walk_packages(workers.__path__, workers.__name__ + "."):
        module = importlib.import_module(info.name)
        handlers |= {
            value
            for value in vars(module).values()
            if inspect.isclass(value) and issubclass(value, Handler) and value is not Handler
        }
    return handlers


def test_every_bus_workers_dead_letter_topic_is_created() -> None:
    handlers = bus_handlers()
    assert {handler.group for handler in handlers} >= {"wado-consumer", "warehouse-loader", "wado-transcoder"}
    dead_letters = {dead_letter_topic(handler.group) for handler in handlers}
    assert dead_letters <= set(bus_topics())
