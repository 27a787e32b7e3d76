"""The local real stack: PostgreSQL, Redis, a KRaft Kafka cluster, Nginx and the services, on loopback.

`servers` starts and stops the third-party servers, `kafka` the Kafka cluster, `local` the whole stack
(`dicomcloud stack up/down`).
"""

from dicomcloud.stack.local import LocalStack
from dicomcloud.stack.servers import StackError

__all__ = ["LocalStack", "StackError"]
