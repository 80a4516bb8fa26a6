"""Whole-fleet tools built on the rest: ``pbt local``, ``pbt bench``, ``pbt study``.

``workdir`` is also where every command that reads experiments finds them (a fleet's Redis, or a
``pbt local`` work dir, live or saved): ``workdir.redis_for(args)``.
"""
