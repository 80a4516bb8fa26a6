"""Connecting to Redis: from a URL, with retries and backoff, and a clear error when it is down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from pbt_mq.broker.cluster import cluster_enabled, connect_cluster, is_cluster

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
        first_contact(url)
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


FIRST_CONTACT_S = 5.0  # how long the first PING may take before a wrong password or TLS setting is named


def first_contact(url: str) -> None:
    """One PING without retries, so that what retrying cannot fix fails at once with its cause and the
    setting to change: a missing or wrong password, TLS against a plain server and the reverse. Anything
    else (refused: Redis restarting) is left to the retrying client."""
    tls = url.startswith("rediss://")
    setting = "(--redis / PBT_REDIS_URL)"
    try:
        probe_client = redis.Redis.from_url(url, socket_connect_timeout=FIRST_CONTACT_S, socket_timeout=FIRST_CONTACT_S,
                                            retry=Retry(NoBackoff(), 0), retry_on_error=[])
    except ValueError:
        return  # the caller's from_url says what is wrong with the URL
    try:
        probe_client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        text = str(exc)
        if isinstance(exc, redis.AuthenticationError) or any(
                w in text for w in ("NOAUTH", "HELLO must be called", "WRONGPASS", "invalid password", "NOPERM")):
            missing = "@" not in url.split("://", 1)[-1]
            raise RedisUnavailable(
                f"Redis at {redact(url)}: authentication failed ({text.split(',')[0]}): "
                + ("the server requires a password; put it in the URL, redis://:PASSWORD@host:port/db "
                   if missing else "check the user and password in the URL ") + setting) from None
    except redis.TimeoutError:
        if tls:
            raise RedisUnavailable(f"Redis at {redact(url)}: no TLS handshake within {FIRST_CONTACT_S:g} s; if the "
                                   f"server does not use TLS, use redis:// instead of rediss:// {setting}") from None
        raise RedisUnavailable(f"Redis at {redact(url)}: no answer within {FIRST_CONTACT_S:g} s; if the server "
                               f"requires TLS, use rediss:// {setting}") from None
    except redis.ConnectionError as exc:
        text = str(exc).lower()
        if tls and ("ssl" in text or "wrong version" in text or "record layer" in text):
            raise RedisUnavailable(f"Redis at {redact(url)}: TLS failed ({exc}); if the server does not use TLS, "
                                   f"use redis:// instead of rediss:// {setting}") from None
        if not tls and ("reset by peer" in text or "closed by server" in text or "protocol" in text):
            raise RedisUnavailable(f"Redis at {redact(url)}: the server closed the connection ({exc}); if it "
                                   f"requires TLS, use rediss:// {setting}") from None
    except redis.RedisError:
        return  # e.g. LOADING: the retrying client waits it out
    finally:
        probe_client.close()


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if ':' in cred else user}@{host}"


def probe(r: Any, timeout_s: float = 1.0) -> Callable[[], bool]:
    """A check that Redis answers now: one PING on a connection of its own, ``timeout_s`` at most,
    no retries (``r`` retries with backoff for seconds: right for work, wrong for this question)."""
    pool_kw = (r.get_default_node().redis_connection if is_cluster(r) else r).connection_pool.connection_kwargs
    kw = {k: v for k, v in pool_kw.items() if k not in ("retry", "socket_timeout", "socket_connect_timeout",
                                                         "retry_on_error", "health_check_interval")}
    cls = pool_kw.get("connection_class")
    client = redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=cls or redis.Connection, **{k: v for k, v in kw.items() if k != "connection_class"},
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)))

    def answers() -> bool:
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    return answers
