"""Apache Kafka in KRaft mode on loopback, for the local stack, tests and developers.

The broker's jars come from Maven Central (`deploy/kafka/pom.xml`) into a cache folder shared by every
checkout and CI run. Each node is a combined KRaft broker and controller listening on 127.0.0.1 on free
ports, with its data in the cluster's folder; N nodes form one controller quorum, so replication and a
broker's death can be tested. Nodes run in their own session (a terminal's Ctrl-C does not reach them)
and are stopped by pid.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from dicomcloud.adapters.kafka_bus import LIBRDKAFKA_LOG
from dicomcloud.stack.servers import READY_TIMEOUT, STOP_TIMEOUT, Server, StackError, free_port, stop_pid

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).resolve().parents[3] / "deploy" / "kafka" / "pom.xml"
# Small and quick to start: C1-compiled code only and a serial collector suit a loopback test cluster.
JVM_OPTIONS = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
# Written once all jars are in place, so an interrupted download is fetched again.
COMPLETE_MARKER = ".complete"

_LOG4J2 = """\
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dicomcloud"


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The folder of the broker's jars, fetched with Maven on first use."""
    libs = cache_root() / f"kafka-{version}" / "libs"
    if (libs / COMPLETE_MARKER).is_file():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) not found; install the Debian package `maven` to fetch Kafka's jars")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    command = [
        mvn, "-q", "-B", "-f", str(POM), f"-Dkafka.version={version}",
        "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(f"fetching Kafka {version} with Maven failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    (staging / COMPLETE_MARKER).touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


@dataclass
class KafkaNode:
    """One combined broker and controller; `server` is None while it is stopped."""

    node_id: int
    broker_port: int
    controller_port: int
    folder: Path
    server: Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.broker_port}"


@dataclass
class KafkaCluster:
    """A running cluster: its bootstrap servers and how to stop or restart each node."""

    folder: Path
    libs: Path
    nodes: list[KafkaNode] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def start_node(self, index: int) -> None:
        """(Re)start one node on its folder, ports and data; returns once the process runs, not when ready."""
        node = self.nodes[index]
        if node.server is not None and node.server.alive():
            return
        log = node.folder / "kafka.log"
        command = [
            "java", *JVM_OPTIONS, f"-Dlog4j2.configurationFile={self.folder / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(node.folder / "server.properties"),
        ]  # fmt: skip
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node.server = Server(
            name=f"kafka-{node.node_id}",
            pid=process.pid,
            port=node.broker_port,
            url=node.address,
            folder=node.folder,
            process=process,
            command=command,
            log=log,
        )

    def stop_node(self, index: int, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
        """Stop one node: SIGTERM is a clean shutdown, SIGKILL a crash."""
        node = self.nodes[index]
        if node.server is not None:
            stop_pid(node.server.pid, sig, timeout, node.server.process)
            node.server = None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running node is registered with the cluster and answers metadata requests."""
        running = [node for node in self.nodes if node.server is not None]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in running:
                if node.server is not None and not node.server.alive():
                    raise StackError(f"kafka node {node.node_id} exited while starting:\n{_tail(node)}")
            if registered_brokers(",".join(n.address for n in running)) >= len(running):
                return
            time.sleep(0.2)
        raise StackError(f"kafka was not ready after {timeout:.0f}s:\n" + "\n".join(_tail(n) for n in running))

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Signal every node at once (a quorum's last nodes wait for each other), then wait for each."""
        for node in self.nodes:
            if node.server is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.server.pid, signal.SIGTERM)
        for index in range(len(self.nodes)):
            self.stop_node(index, timeout=timeout)


def registered_brokers(bootstrap: str) -> int:
    """How many brokers the cluster's metadata lists, asked of `bootstrap`; 0 when it does not answer."""
    # Connection errors while the nodes start are expected: logged at DEBUG, not on stderr.
    admin = AdminClient({"bootstrap.servers": bootstrap}, error_cb=log_error, logger=LIBRDKAFKA_LOG)
    try:
        return len(admin.list_topics(timeout=1).brokers)
    except KafkaException:
        return 0


def log_error(error: KafkaError) -> None:
    log.debug("while starting: %s", error.str())


def _tail(node: KafkaNode, lines: int = 20) -> str:
    log = node.folder / "kafka.log"
    if not log.exists():
        return ""
    return f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _cluster_id() -> str:
    """Kafka's cluster id format: a UUID as 22 characters of unpadded URL-safe base64. Like Kafka's own
    Uuid.randomUuid, never one starting with '-': the storage tool would read it as an option (1 start in 64 failed)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _properties(node: KafkaNode, voters: str, size: int) -> str:
    replicas, min_insync = min(3, size), min(2, size)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{node.address},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.address}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": node.folder / "data",
        "num.partitions": 1,
        "default.replication.factor": replicas,
        "min.insync.replicas": min_insync,
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_insync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_insync,
        # A group forms as soon as its first member joins, not three seconds later.
        "group.initial.rebalance.delay.ms": 0,
        # A dead broker is fenced (its partitions get new leaders) after 4 s instead of 9.
        "broker.session.timeout.ms": 4000,
        "broker.heartbeat.interval.ms": 1000,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def start_kafka(folder: Path, brokers: int = 1, version: str = KAFKA_VERSION) -> KafkaCluster:
    """Format and start a cluster of `brokers` combined nodes in `folder`; returns once all are ready."""
    if brokers < 1:
        raise StackError("a Kafka cluster needs at least one broker")
    libs = kafka_libs(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log4j2.properties").write_text(_LOG4J2)
    cluster = KafkaCluster(folder=folder, libs=libs)
    for node_id in range(1, brokers + 1):
        node_folder = folder / f"node-{node_id}"
        node_folder.mkdir(exist_ok=True)
        cluster.nodes.append(KafkaNode(node_id, free_port(), free_port(), node_folder))
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster.nodes)
    for node in cluster.nodes:
        (node.folder / "server.properties").write_text(_properties(node, voters, brokers))
    _format_storage(libs, folder, [node.folder / "server.properties" for node in cluster.nodes], _cluster_id())
    try:
        for index in range(brokers):
            cluster.start_node(index)
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _format_storage(libs: Path, folder: Path, configs: list[Path], cluster_id: str) -> None:
    """What `kafka-storage.sh format` does for this version (its class is kafka.tools.StorageTool),
    for every node at once."""
    runs = []
    for config in configs:
        command = [
            "java", *JVM_OPTIONS, f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}",
            "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config),
        ]  # fmt: skip
        runs.append((config, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for config, run in runs:
        output, _ = run.communicate()
        if run.returncode != 0:
            raise StackError(f"formatting Kafka storage for {config} failed:\n{output}")
