"""The seeds of a run: a count, a list or a range (``--seeds 3``, ``0,1,2``, ``1-2``).

Example
-------
>>> from rmtprune.paper.experiments.seeds import seed_tuple
>>> seed_tuple(3), seed_tuple("0,2-3"), seed_tuple([5])
((0, 1, 2), (0, 2, 3), (5,))
"""

from __future__ import annotations

from collections.abc import Sequence

from rmtprune._util.validation import check_int, param_error

__all__ = ["SEEDS_GRAMMAR", "parse_seeds", "seed_tuple"]

SEEDS_GRAMMAR = "a count K (seeds 0..K-1), a list 0,1,2, a range 1-2, or a mix such as 0,3-5"


def parse_seeds(text: str) -> int | tuple[int, ...]:
    """Parse ``--seeds``: a count (``"3"`` → 3) or seed values (``"0,2-4"`` → (0, 2, 3, 4)).

    Examples
    --------
    >>> parse_seeds("3"), parse_seeds("0,1,2"), parse_seeds("1-2"), parse_seeds("0,3-4")
    (3, (0, 1, 2), (1, 2), (0, 3, 4))
    """
    body = str(text).replace(" ", "")
    if body.isdigit():
        if int(body) == 0:  # a lone number is a count: say how to name seed 0 itself
            raise param_error(
                "seeds", "reproduce", "a count >= 1 (a lone number counts seeds: '1' is seed 0 "
                "alone, '0-0' names seed 0 itself)", text,
            )  # fmt: skip
        return int(body)
    seeds: list[int] = []
    for part in body.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise param_error("seeds", "reproduce", SEEDS_GRAMMAR, text)
        seeds += range(int(low), int(high) + 1) if dash else [int(low)]
    if len(set(seeds)) != len(seeds):
        raise param_error("seeds", "reproduce", f"distinct seeds ({SEEDS_GRAMMAR})", text)
    return tuple(seeds)


def seed_tuple(seeds: int | str | Sequence[int], owner: str = "reproduce") -> tuple[int, ...]:
    """The seed values meant by ``seeds``: a count ``K`` → ``0..K−1``; a string as in
    :func:`parse_seeds`; a sequence of ints as given."""
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return tuple(range(check_int(seeds, "seeds", owner, low=1)))
    if isinstance(seeds, bytes) or not isinstance(seeds, Sequence) or not seeds:
        raise param_error(
            "seeds", owner, f"a positive int or a sequence of ints ({SEEDS_GRAMMAR})", seeds
        )
    return tuple(check_int(s, "seeds", owner, low=0) for s in seeds)
