"""Which option belongs to which mode: the one place `prune`, `RunConfig`, the CLI and `tp.Importance` check it.

An option that only means something in one mode (the latency budget's batch size, sGLP-IB's
graph rule, the lasso's iteration budget) is refused when its mode is not asked for, instead
of being ignored and recorded; options that exclude each other are refused together; an
unknown option name is refused with the closest known one. A value equal to the option's
default counts as not given (a call cannot tell the two apart, and the record is the same).

Registering a new option is one row of `OPTIONS` (its default and mode) and, where it excludes
another, one pair of `EXCLUSIVE`; a new mode is one row of `MODES`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from .utils import PaperpruneError

__all__ = ["EXCLUSIVE", "MODES", "OPTIONS", "Option", "applies", "check_options", "closest", "unknown_name"]

_LASSO = ("apib", "classwise", "sglp", "stlp")


@dataclass(frozen=True)
class Mode:
    """A mode of a call: what asks for it (said in messages) and whether `settings` ask for it."""

    asked_by: str
    active: Callable[[dict], bool]


#: mode name -> (how a call asks for it, predicate over the call's settings {name: value})
MODES = {
    "latency": Mode("a latency budget (latency_reduction=, --latency-reduction)",
                    lambda s: s.get("latency_reduction") is not None),
    "lasso": Mode(f"a lasso criterion (method {', '.join(_LASSO)})", lambda s: s.get("method") in _LASSO),
    "classwise": Mode("a class-wise criterion (method classwise, sglp, stlp)",
                      lambda s: s.get("method") in ("classwise", "sglp", "stlp")),
    "class structure": Mode("a structured criterion (method sglp or stlp)", lambda s: s.get("method") in ("sglp", "stlp")),
    "class graph": Mode("sGLP-IB (method sglp)", lambda s: s.get("method") == "sglp"),
    "block statistics": Mode("block statistics (statistics='block', --statistics block, with a lasso criterion)",
                             lambda s: s.get("statistics") == "block" and s.get("method") in _LASSO),
}


@dataclass(frozen=True)
class Option:
    """An option that belongs to one mode: its default (the value that counts as not given)."""

    default: object
    mode: str


#: option -> its default and its mode (a key of MODES)
OPTIONS = {
    "latency_mode": Option("eager", "latency"),
    "latency_batch_size": Option(64, "latency"),
    "latency_rounding": Option(False, "latency"),
    "max_iter": Option(None, "lasso"),  # default filled in from lasso.SOLVER_MAX_ITER below
    "nonnegative": Option(False, "lasso"),
    "statistics": Option("exact", "lasso"),
    "block_size": Option(None, "block statistics"),
    "permutations": Option(None, "block statistics"),
    "response": Option("class", "classwise"),
    "structure": Option("embedding", "class structure"),
    "gamma_ratio": Option(0.5, "class graph"),
    "rho": Option(0.5, "class graph"),
    "knn": Option(None, "class graph"),
}

#: pairs of options that cannot both be given (each at a value other than its default)
EXCLUSIVE = (("flops_reduction", "latency_reduction", None, None), ("rho", "knn", 0.5, None))


def _defaults() -> dict:
    from .lasso import SOLVER_MAX_ITER

    return {name: (SOLVER_MAX_ITER if name == "max_iter" else option.default) for name, option in OPTIONS.items()}


def applies(name: str, settings: dict) -> bool:
    """Whether option `name` means something for a call with `settings` (method, budgets): True for an
    option that belongs to no mode. `compare_selections` passes each criterion only what applies to it."""
    return name not in OPTIONS or MODES[OPTIONS[name].mode].active(settings)


def _given(value, default) -> bool:
    if value is None or default is None:
        return value is not default
    try:
        return bool(value != default)
    except Exception:  # noqa: BLE001 - an uncomparable value is a value the caller gave
        return True


def closest(name: str, known) -> str:
    """' (did you mean X?)' for the known name closest to `name`, else ''."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_name(name: str, known, what: str = "option") -> PaperpruneError:
    """The error for an unknown `what` called `name`: the closest known name, and the list."""
    return PaperpruneError(f"unknown {what} {name!r}{closest(name, known)}; known: {', '.join(sorted(known))}")


def check_options(settings: dict, *, known=None, spell: Callable[[str], str] = lambda name: "") -> None:
    """Refuse what a call sets but does not use.

    Parameters
    ----------
    settings : dict
        The call's settings {name: value}, `method` and the budgets included; unset options
        may be absent or at their default.
    known : iterable of str, optional
        The names the call accepts; a name of `settings` outside it is refused with the closest
        known one. None: names are not checked (a signature already did).
    spell : callable
        What messages add after ``name=value`` (e.g. ``" (--knn)"`` for the CLI).

    Raises
    ------
    PaperpruneError
        For an unknown name, two exclusive options given together, or an option given (not at
        its default) whose mode the settings do not ask for; the message names the value and
        the fix.
    """
    if known is not None:
        for name in settings:
            if name not in known:
                raise unknown_name(name, known)
    for first, second, default_first, default_second in EXCLUSIVE:
        a, b = settings.get(first, default_first), settings.get(second, default_second)
        if _given(a, default_first) and _given(b, default_second):
            raise PaperpruneError(f"{first}={a!r}{spell(first)} and {second}={b!r}{spell(second)} exclude each other (one would be "
                                  f"ignored but recorded); pass only one of them")
    defaults = _defaults()
    for name, option in OPTIONS.items():
        if name not in settings or not _given(settings[name], defaults[name]):
            continue
        mode = MODES[option.mode]
        if not mode.active(settings):
            method = settings.get("method")
            asked = f" (method {method!r})" if method is not None and option.mode != "latency" else ""
            raise PaperpruneError(
                f"{name}={settings[name]!r}{spell(name)} only applies with {mode.asked_by}, which this call does not "
                f"ask for{asked}; leave {name} out (at its default {defaults[name]!r}) or ask for that mode")
