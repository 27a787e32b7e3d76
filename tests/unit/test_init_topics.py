"""`dicomcloud init` creates every topic a service uses, so none is made on the fly with other settings."""

from __future__ import annotations

import importlib
import pkgutil

from dicomcloud import events, workers
from dicomcloud.cli import bus_topics


def test_every_topic_named_in_events_is_created() -> None:
    named = {value for name, value in vars(events).items() if name.endswith("_QUEUE") and isinstance(value, str)}
    named |= {event.topic for event in events.Event.__subclasses__()}
    assert named <= set(bus_topics())


def test_every_workers_dead_letter_topic_is_created() -> None:
    dead_letters = set()
    for info in pkgutil.walk_packages(workers.__path__, workers.__name__ + "."):
        module = importlib.import_module(info.name)
        dead_letters |= {value for name, value in vars(module).items() if name.endswith("DEAD_LETTER_TOPIC")}
    assert dead_letters
    assert dead_letters <= set(bus_topics())
