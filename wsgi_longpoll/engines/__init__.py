"""Storage engines: where a manager keeps the events of each category.

- :mod:`.base`: :class:`Engine`, the interface every engine implements;
- :mod:`.memory`: :class:`MemoryEngine`, one :class:`~.buffer.EventBuffer` per category
  of this process (the default), with an optional :mod:`.persist`\\ er;
- :mod:`.redis`: ``RedisEngine``, Redis Streams shared by many processes and hosts
  (needs the ``redis`` extra, so it is imported from its module);
- :mod:`.options`: their options, :class:`MemoryOptions` and :class:`RedisOptions`.
"""

from .base import Engine, Listener, Position, ReadResult
from .memory import MemoryEngine, Persister
from .options import EngineOptions, MemoryOptions, RedisOptions

__all__ = [
    "Engine",
    "EngineOptions",
    "Listener",
    "MemoryEngine",
    "MemoryOptions",
    "Persister",
    "Position",
    "ReadResult",
    "RedisOptions",
]
