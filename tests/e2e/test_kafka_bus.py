"""`dicomcloud up` on the Kafka bus: C-STORE reaches the index through a real broker, and with the
broker gone the SCP refuses what it cannot make durable instead of acknowledging it.

The archive gets a broker of its own (the test stops it), with a short delivery timeout so a publish
to a dead cluster fails within seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomcloud.stack.kafka import KafkaCluster, start_kafka

from .conftest import AE_TITLE, Archive
from .dicom_clients import pynetdicom_store, storescu

pytestmark = [pytest.mark.e2e, pytest.mark.stack]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaCluster]:
    cluster = start_kafka(tmp_path / "kafka", brokers=1)
    yield cluster
    cluster.stop()


def ct_copies(folder: Path, count: int, study: str) -> list[Path]:
    """pydicom's CT_small as `count` instances of one new study, written to `folder`."""
    paths = []
    for i in range(count):
        dataset = dcmread(get_testdata_file("CT_small.dcm"))
        dataset.StudyInstanceUID = study
        dataset.SOPInstanceUID = f"{study}.{i + 1}"
        path = folder / f"ct{i}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_c_store_is_indexed_through_kafka_and_refused_when_the_broker_is_down(
    archive_factory: Callable[..., Archive], own_kafka: KafkaCluster, tmp_path: Path
) -> None:
    archive = archive_factory(
        f"kafka-{uuid.uuid4().hex[:6]}",
        {
            "DICOMCLOUD_BACKENDS__BUS": "kafka",
            "DICOMCLOUD_BACKENDS__KAFKA_BOOTSTRAP": own_kafka.bootstrap,
            "DICOMCLOUD_BACKENDS__KAFKA_PARTITIONS": "2",
            "DICOMCLOUD_BACKENDS__KAFKA_DELIVERY_TIMEOUT": "3",
        },
    )
    try:
        study = f"2.25.{uuid.uuid4().int}"
        files = ct_copies(tmp_path, 3, study)
        result = storescu(archive.dimse_port, AE_TITLE, files, EXPLICIT_VR_LITTLE_ENDIAN)
        assert result.returncode == 0, result.stdout + result.stderr
        archive.wait_indexed(3, StudyInstanceUID=study)
        found = {i["00080018"]["Value"][0] for i in archive.client().search_for_instances(study_instance_uid=study)}
        assert found == {f"{study}.{i}" for i in (1, 2, 3)}

        own_kafka.stop()
        (tmp_path / "late").mkdir()
        late = ct_copies(tmp_path / "late", 1, f"2.25.{uuid.uuid4().int}")
        assert pynetdicom_store(archive.dimse_port, AE_TITLE, late) == [OUT_OF_RESOURCES]
    finally:
        archive.stop()
