"""Connecting to Redis: from a URL, with retries and backoff, and a clear error when it is down."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pbt_mq.broker.cluster import cluster_enabled, connect_cluster

DEFAULT_URL = "redis://localhost:6379/0"


class RedisUnavailable(RuntimeError):
    pass


def connect(url: str, check: bool = True, retries: int = 8) -> redis.Redis:
    """A client whose commands retry connection errors with backoff (Redis restarts, failovers).

    ``rediss://`` gives TLS; ``redis://user:password@host`` gives ACL auth. A node of a
    Redis Cluster is recognised (``INFO cluster``) and gives a cluster client.
    """
    opts: dict = dict(
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        socket_connect_timeout=5,
        socket_keepalive=True,
    )
    try:
        r = redis.Redis.from_url(
            url, retry_on_error=[redis.ConnectionError, redis.TimeoutError], health_check_interval=30, **opts
        )
    except ValueError as exc:
        raise RedisUnavailable(f"Redis URL {redact(url)!r} is not valid: {exc}") from None
    if check:
        try:
            r.ping()
        except redis.AuthenticationError as exc:
            raise RedisUnavailable(f"Redis at {redact(url)}: authentication failed ({exc})") from None
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {redact(url)} ({exc}); start redis-server or pass"
                " --redis / PBT_REDIS_URL"
            ) from None
        if cluster_enabled(r):
            r.close()
            try:
                return connect_cluster(url, **opts)
            except redis.RedisError as exc:
                raise RedisUnavailable(f"Redis Cluster at {redact(url)}: {exc}") from None
    return r


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if ':' in cred else user}@{host}"
