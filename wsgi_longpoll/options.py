"""One definition per option: its name, default, check and help, written once.

Each part of the package declares its options as the fields of a frozen dataclass, each
made with :func:`option` (gunicorn's ``Setting`` is the model): the engines'
:class:`~wsgi_longpoll.engines.options.MemoryOptions` and
:class:`~wsgi_longpoll.engines.options.RedisOptions`, the manager's
:class:`~wsgi_longpoll.manager.ManagerOptions`, the endpoints'
:class:`~wsgi_longpoll.endpoints.EndpointOptions`, CORS's
:class:`~wsgi_longpoll.wsgi.cors.CORSOptions` and the server's own
:class:`~wsgi_longpoll.server.ServerOptions`. Everything else is derived from those fields:
the keyword arguments' defaults, ``ServerOptions`` (whose shared fields are copies made
with :func:`option_from`), the command line's flags, the Flask ``LONGPOLL_<NAME>`` keys and
the Django ``LONGPOLL["<NAME>"]`` settings, each under the option's one name.

A value from a configuration file or the environment goes through :func:`convert`, which
turns a string into the option's type and refuses, by the name it was given under, what
does not fit.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "Check",
    "Option",
    "at_least",
    "build",
    "check_options",
    "convert",
    "more_than",
    "option",
    "option_from",
    "options_of",
    "subset",
]

T = TypeVar("T")

#: A field's check: what is wrong with a value (``"must be at least 1, not 0"``), or
#: ``None``. It is not called with ``None``, which the field's type allows or refuses; for
#: a tuple, it is called with each item.
Check = Callable[[Any], "str | None"]

#: The key of an option's :class:`_Spec` in its field's metadata.
_SPEC = "wsgi_longpoll.option"


def at_least(least: float) -> Check:
    """A check: the value is *least* or more."""

    def check(value: Any) -> str | None:
        return None if value >= least else f"must be at least {least:g}, not {value!r}"

    return check


def more_than(least: float) -> Check:
    """A check: the value is more than *least*."""

    def check(value: Any) -> str | None:
        return None if value > least else f"must be more than {least:g}, not {value!r}"

    return check


@dataclass(frozen=True)
class _Spec:
    """What :func:`option` records in a field's metadata."""

    help: str
    check: Check | None = None
    #: More command-line flags for it, kept for compatibility (``--buffer-size``).
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    #: In a configuration value (:func:`convert`), 0 means ``None`` (no limit).
    zero_means_none: bool = False
    #: Its name everywhere else when the field's own differs (``url`` is ``redis_url``).
    name: str | None = None
    #: A secret: left out of the options object's ``repr`` (and so of logs and tracebacks).
    secret: bool = False
    #: The class that defines it, and its name there, for a copy made by
    #: :func:`option_from`.
    source: type | None = None
    original: str | None = None


def option(
    default: Any,
    *,
    help: str,
    check: Check | None = None,
    aliases: Iterable[str] = (),
    metavar: str | None = None,
    zero_means_none: bool = False,
    name: str | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field that is an option: its default and what else is known of it.

    :param default: the default value (immutable: ``None``, a number, a string, a tuple).
    :param help: what it does, in a phrase (the command line's help, the docs).
    :param check: what a valid value is, beyond its type (see :func:`at_least`).
    :param aliases: more command-line flags for it, kept for compatibility.
    :param metavar: the command line's name for its value.
    :param zero_means_none: in a configuration value, ``0`` means ``None``.
    :param name: its name everywhere else when the field's differs: the keyword
        argument, the command line's ``--flag``, ``LONGPOLL_<NAME>``.
    :param secret: a secret (a key): left out of the ``repr`` of the options object.
    """
    spec = _Spec(help, check, tuple(aliases), metavar, zero_means_none, name, secret)
    return dataclasses.field(default=default, metadata={_SPEC: spec}, repr=not secret)


def option_from(source: type, attribute: str, *, name: str | None = None,
                aliases: Iterable[str] = ()) -> Any:
    """A copy of the option *attribute* of the options class *source*: the same default,
    help and check, for a class that gathers the options of several (``ServerOptions``).

    :param name: a name of its own, where an older API spells it otherwise.
    :param aliases: more command-line flags for it.
    """
    original = next(item for item in options_of(source).values() if item.attribute == attribute)
    spec = dataclasses.replace(
        original.spec, name=name, source=original.owner, original=original.name,
        aliases=(*original.spec.aliases, *aliases),
    )
    return dataclasses.field(default=original.default, metadata={_SPEC: spec},
                             repr=not spec.secret)


_KINDS: dict[str, type] = {
    "int": int, "float": float, "bool": bool, "str": str, "None": type(None),
    "tuple[str, ...]": tuple,
}


def _kinds(annotation: Any) -> frozenset[type]:
    """The types an option's annotation allows: ``int | None`` gives ``{int, NoneType}``."""
    if isinstance(annotation, str):
        parts = [part.strip() for part in annotation.split("|")]
    elif isinstance(annotation, types.UnionType):
        parts = [getattr(arg, "__name__", str(arg)) for arg in annotation.__args__]
    else:
        parts = [getattr(annotation, "__name__", str(annotation))]
    parts = ["tuple[str, ...]" if part in ("tuple", "tuple[str, ...]") else part
             for part in parts]
    unknown = [part for part in parts if part not in _KINDS]
    if unknown:
        raise TypeError(f"an option is an int, float, bool, str, tuple[str, ...] or None, "
                        f"not {annotation!r}")
    return frozenset(_KINDS[part] for part in parts)


@dataclass(frozen=True)
class Option:
    """One option, as :func:`options_of` finds it in an options class."""

    #: Its name everywhere: keyword argument, ``--flag``, ``LONGPOLL_<NAME>``.
    name: str
    #: The field's name in the class (usually :attr:`name`).
    attribute: str
    #: The class that defines it (for a copy, the class it was copied from).
    owner: type
    default: Any
    #: The types it takes.
    kinds: frozenset[type]
    spec: _Spec

    @property
    def original(self) -> str:
        """The name of the option it copies (see :func:`option_from`), else its own."""
        return self.spec.original or self.name

    @property
    def help(self) -> str:
        """What it does."""
        return self.spec.help

    @property
    def flag(self) -> str:
        """Its command-line flag: ``--max-body-size``; ``--no-access-log`` for a switch
        that is on by default."""
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.default is True else f"--{dashed}"

    @property
    def key(self) -> str:
        """Its configuration key: ``MAX_BODY_SIZE`` (``LONGPOLL_MAX_BODY_SIZE`` in Flask)."""
        return self.name.upper()

    def problem(self, value: Any) -> str | None:
        """What is wrong with *value* (of the right type), or ``None``."""
        if value is None or self.spec.check is None:
            return None
        if isinstance(value, tuple):
            for item in value:
                problem = self.spec.check(item)
                if problem is not None:
                    return problem
            return None
        return self.spec.check(value)


_found: dict[tuple[type, ...], Mapping[str, Option]] = {}


def options_of(*classes: type) -> Mapping[str, Option]:
    """The options of the dataclasses *classes*, by name, in the order they are defined.

    Fields not made with :func:`option` (hooks, applications) are not options. An option
    that several of *classes* share (one inherited from a common base) is listed once.

    :raises TypeError: if two of *classes* define different options of the same name.
    """
    known = _found.get(classes)
    if known is None:
        known = _found[classes] = _options_of(classes)
    return known


def _options_of(classes: tuple[type, ...]) -> dict[str, Option]:
    found: dict[str, Option] = {}
    for cls in classes:
        for field in dataclasses.fields(cls):
            spec = field.metadata.get(_SPEC)
            if spec is None:
                continue
            name = spec.name or field.name
            owner = spec.source or _defining_class(cls, field.name)
            item = Option(name, field.name, owner, field.default, _kinds(field.type), spec)
            known = found.get(name)
            if known is not None and (known.owner, known.default) != (owner, item.default):
                raise TypeError(f"two different options are named {name!r}")
            found.setdefault(name, item)
    return found


def _defining_class(cls: type, attribute: str) -> type:
    """The base of *cls* (or *cls*) whose own fields include *attribute*."""
    for base in reversed(cls.__mro__):
        if attribute in getattr(base, "__annotations__", {}) and dataclasses.is_dataclass(base):
            return base
    return cls


def _typed(item: Option, value: Any, label: str) -> Any:
    """*value*, if its type is one *item* takes (a list for a tuple, an int for a float).

    :raises TypeError: naming *label* otherwise.
    """
    kinds = item.kinds
    if value is None and type(None) in kinds:
        return None
    if isinstance(value, bool):
        if bool in kinds:
            return value
    elif isinstance(value, int) and (int in kinds or float in kinds):
        return value
    elif isinstance(value, float) and float in kinds:
        if math.isfinite(value):
            return value
    elif isinstance(value, str) and str in kinds:
        return value
    elif (isinstance(value, (list, tuple)) and tuple in kinds
          and all(isinstance(entry, str) for entry in value)):
        return tuple(value)
    raise TypeError(f"{label} must be {_describe(kinds)}, not {value!r}")


def _describe(kinds: frozenset[type]) -> str:
    names = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
             tuple: "a list of strings", type(None): "None"}
    if float in kinds:
        kinds = kinds - {int}
    parts = [names[kind] for kind in (int, float, bool, str, tuple, type(None)) if kind in kinds]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def check_options(instance: object) -> None:
    """Check every option of the dataclass *instance* (in its ``__post_init__``): its type,
    then its :func:`option` check; a list given for a tuple becomes a tuple.

    :raises TypeError: naming the option, for a value of the wrong type.
    :raises ValueError: naming the option, for a value its check refuses.
    """
    for item in options_of(type(instance)).values():
        value = getattr(instance, item.attribute)
        typed = _typed(item, value, item.name)
        problem = item.problem(typed)
        if problem is not None:
            raise ValueError(f"{item.name} {problem}")
        if typed is not value:
            object.__setattr__(instance, item.attribute, typed)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none", "null"})


def convert(item: Option, value: Any, label: str | None = None) -> Any:
    """*value*, from a configuration (a settings module, the environment, the command
    line), as the type of the option *item*, checked.

    A string becomes the option's type: ``"250"`` an integer, ``"1.5"`` a number,
    ``"true"``/``"false"`` (``yes``/``no``, ``on``/``off``, ``1``/``0``) a bool, ``""`` or
    ``"none"`` ``None`` where the option takes it (an empty string too, for a string
    option), ``"a, b"`` a tuple of strings. A list
    becomes a tuple. Where the option says so, ``0`` means ``None``.

    :param label: the option's name in that configuration (``LONGPOLL_MAX_BODY_SIZE``,
        ``--max-body-size``); its own name by default.
    :raises ValueError: naming *label*, for a value that is not of the option's type or
        that its check refuses.
    """
    label = label or item.name
    if isinstance(value, str) and str not in item.kinds:
        value = _parse(item, value.strip(), label)
    elif value == "" and type(None) in item.kinds:
        value = None
    if item.spec.zero_means_none and value == 0 and not isinstance(value, bool):
        value = None
    try:
        typed = _typed(item, value, label)
    except TypeError as error:
        raise ValueError(str(error)) from None
    problem = item.problem(typed)
    if problem is not None:
        raise ValueError(f"{label} {problem}")
    return typed


def _parse(item: Option, text: str, label: str) -> Any:
    kinds = item.kinds
    if type(None) in kinds and text.lower() in _NONE:
        return None
    if tuple in kinds:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if bool in kinds:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    elif int in kinds:
        try:
            return int(text)
        except ValueError:
            pass
    elif float in kinds:
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise ValueError(f"{label} must be {_describe(kinds)}, not {text!r}")


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """An instance of the options class *cls* from *values*, by option name; the names
    that are not options of *cls* are left out."""
    return cls(**{item.attribute: values[name]
                  for name, item in options_of(cls).items() if name in values})


def subset(instance: object, cls: type[T]) -> T:
    """The options of *cls* that the options object *instance* also has, as a *cls*
    (``subset(server_options, CORSOptions)``)."""
    mine = options_of(type(instance))
    return build(cls, {name: getattr(instance, item.attribute) for name, item in mine.items()})
