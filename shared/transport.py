"""Kombu's Redis transport with one change: a job sent again goes to the front of its
priority level, not the back.

Each priority level of a queue is a Redis list; the transport LPUSHes a message and
consumers BRPOP the other end, so a level is first in, first out. A job sent again (its
worker died and its lease expired, its message was lost, its worker gave it back) was
queued before the jobs waiting behind it: at the back it would wait for all of them. A
message whose headers carry ``JOB_FIRST_HEADER`` is RPUSHed instead, so it is the next its
level serves: still behind every message of a higher level.

Kombu's own restores, read in kombu 5.7 (``kombu/transport/redis.py``, ``QoS``):

- messages delivered and not acknowledged, restored when a worker shuts down
  (``restore_unacked``) or once the visibility timeout has passed (``restore_visible``),
  are RPUSHed: they are at the front already;
- a message rejected with ``requeue=True`` (Celery does so for ``task_reject_on_worker_lost``
  when a prefork child dies) is LPUSHed: at the back. Left so: once the child had claimed
  the job, the re-delivery is a no-op, and the reaper sends the job again, to the front,
  when the lease the child stopped renewing expires. (A child that died between taking
  the message and claiming the job leaves the job waiting at the back.)

The app's connections (``AMQP.Connection``) choose it for ``redis://`` and ``rediss://``
URLs, and kombu's own transports for others (``memory://``, ``sentinel://``). Not Celery's
``broker_transport`` setting: under it a connection's URL takes the class's path for its
scheme, which Flower's broker page cannot read, and ``rediss://`` loses kombu's TLS
defaults; here both keep the URL's scheme.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu.connection import Connection as KombuConnection
from kombu.connection import ConnectionPool as KombuConnectionPool
from kombu.connection import PooledConnection as KombuPooledConnection
from kombu.transport import redis
from kombu.utils.json import dumps

from shared.constants import JOB_FIRST_HEADER

REDIS_SCHEMES = frozenset({"redis", "rediss"})


class Channel(redis.Channel):
    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        kombu_channel: Any = super()  # kombu's Redis channel carries no type hints
        if not (message.get("headers") or {}).get(JOB_FIRST_HEADER):
            kombu_channel._put(queue, message, **kwargs)
            return
        # kombu's ``_put`` with RPUSH for LPUSH: the same key, and the same expiries.
        key = kombu_channel._q_for_pri(queue, kombu_channel._get_message_priority(message))
        payload = dumps(message)  # type: ignore[no-untyped-call]
        commands: list[tuple[Any, ...]] = [("rpush", key, payload)]
        if self._expires and queue in self._expires:
            commands += [
                ("pexpire", kombu_channel._q_for_pri(queue, p), self._expires[queue])
                for p in self.priority_steps
            ]
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:  # a producer's batch sends them with the rest of it
            for name, *args in commands:
                batch.add(name, *args)
            return
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            for name, *args in commands:
                getattr(pipe, name)(*args)
            pipe.execute()


class Transport(redis.Transport):
    Channel = Channel


def _transport_for(connection: KombuConnection) -> Any:
    """This module's transport for ``redis://`` and ``rediss://``, kombu's for others."""
    if connection.transport_cls in REDIS_SCHEMES:
        return Transport
    return KombuConnection.get_transport_cls(connection)  # type: ignore[no-untyped-call]


class Connection(KombuConnection):
    def get_transport_cls(self) -> Any:
        return _transport_for(self)

    def Pool(self, limit: int | None = None, **kwargs: Any) -> ConnectionPool:
        return ConnectionPool(self, limit=limit, **kwargs)  # type: ignore[no-untyped-call]


class ConnectionPool(KombuConnectionPool):
    """Kombu's pool of connections makes kombu's ``PooledConnection``: this one makes ours
    (Celery's producers, which send the jobs, are pooled)."""

    def new(self) -> PooledConnection:
        return PooledConnection(self, **dict(self.connection._info(resolve=False)))  # type: ignore[no-untyped-call]


class PooledConnection(KombuPooledConnection):
    def get_transport_cls(self) -> Any:
        return _transport_for(self)


class AMQP(CeleryAMQP):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's AMQP with this module's ``Connection``, through which every connection of
    the app is made: the producers', the workers', Flower's and the control commands'."""

    Connection = Connection
