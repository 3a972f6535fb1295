"""A program trace's random choices as padded tensors, so that a latent of varying structure meets
the model contract (:mod:`wakesleep.models.contract`: z leaves [*S, B, …]) and every part of the
library that handles z as tensors (MWS's memory, defensive mixing, checkpoints, torchrun's
all-gather) handles traces unchanged.

One trace is a sequence of at most L scalar *slots*.  A site whose value has n elements takes n
consecutive slots, in the order the program drew them; each slot holds

- ``address`` (int64): a 64-bit hash of the site's name (BLAKE2b; never 0, which marks an empty slot);
- ``value`` (float64): one element of the value (exact for float32 and for integers below 2⁵³);
- ``kind`` (int8): the value's dtype, so that replay gives the site the dtype it drew.

Two traces are equal exactly when their three tensors are equal: the same sites, in the same
order, with the same values.  Names are kept in a registry only to decode z for people
(:meth:`ChoiceCodec.choices`); replay needs none.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

#: The dtypes a choice may have, by their code in ``kind`` (0: an empty slot).
DTYPES = {
    1: torch.float32,
    2: torch.float64,
    3: torch.int64,
    4: torch.bool,
    5: torch.int32,
    6: torch.float16,
    7: torch.bfloat16,
    8: torch.uint8,
    9: torch.int8,
    10: torch.int16,
}
KINDS = {dtype: code for code, dtype in DTYPES.items()}
LEAVES = ("address", "value", "kind")


class ChoiceCodec:
    """Encodes traces' choices into padded tensors of ``max_choices`` slots and decodes them.

    Args:
        max_choices: L, the most scalar choices one trace may hold (≥ 1).

    Raises:
        ValueError: for L < 1.
    """

    def __init__(self, max_choices: int):
        if isinstance(max_choices, bool) or not isinstance(max_choices, int) or max_choices < 1:
            raise ValueError(f"max_choices must be an integer >= 1, got {max_choices!r}")
        self.max_choices = max_choices
        self._address: dict[str, int] = {}
        self.names: dict[int, str] = {}

    def address(self, name: str) -> int:
        """The site name's 64-bit address (cached; the same in every process and run)."""
        a = self._address.get(name)
        if a is None:
            a = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True) or 1
            self._address[name] = a
            self.names[a] = name
        return a

    def encode(self, traces: list[list[tuple[str, Tensor]]], device, what: str) -> dict[str, Tensor]:
        """The choices of N traces (each a list of (site name, value) in the order drawn) as
        {address [N, L] int64, value [N, L] float64, kind [N, L] int8}, detached, on ``device``.

        Raises:
            ValueError: a trace with more than L scalar choices (naming ``max_choices=``), or a
                value of a dtype with no code.
        """
        l = self.max_choices
        address, value, kind = [], [], []
        for trace in traces:
            a, v, c = [], [], []
            for name, x in trace:
                code = KINDS.get(x.dtype)
                if code is None:
                    raise ValueError(f"site {name!r} of the {what} drew a value of dtype {x.dtype}, which a trace's choices cannot hold")
                flat = x.detach().reshape(-1).tolist()
                a += [self.address(name)] * len(flat)
                v += flat
                c += [code] * len(flat)
            if len(a) > l:
                raise ValueError(
                    f"a trace of the {what} drew {len(a)} scalar choices, more than max_choices={l}: pass a larger "
                    f"max_choices= to from_pyro (z holds max_choices slots per particle)"
                )
            pad = l - len(a)
            address.append(a + [0] * pad)
            value.append(v + [0.0] * pad)
            kind.append(c + [0] * pad)
        return {
            "address": torch.tensor(address, dtype=torch.int64, device=device).reshape(len(traces), l),
            "value": torch.tensor(value, dtype=torch.float64, device=device).reshape(len(traces), l),
            "kind": torch.tensor(kind, dtype=torch.int8, device=device).reshape(len(traces), l),
        }

    @staticmethod
    def rows(z: Any) -> tuple[tuple[int, ...], list]:
        """z's leading dims [*S, B] and its traces as one flat list of (addresses, values, kinds)
        lists, row-major over [*S, B].

        Raises:
            ValueError: z is not such a dict of three tensors of one shape [*S, B, L].
        """
        if not isinstance(z, dict) or set(z) != set(LEAVES) or not all(isinstance(z[k], Tensor) for k in LEAVES):
            have = sorted(z) if isinstance(z, dict) else type(z).__name__
            raise ValueError(f"z must be a program's choices, a dict of tensors {list(LEAVES)} [*S, B, L]; got {have}")
        shape = z["address"].shape
        if shape[:-1] == () or any(z[k].shape != shape for k in LEAVES):
            raise ValueError(f"the choices' tensors must share one shape [*S, B, L]; got {[list(z[k].shape) for k in LEAVES]}")
        cols = [z[k].reshape(-1, shape[-1]).tolist() for k in LEAVES]
        return tuple(shape[:-1]), list(zip(*cols))

    @staticmethod
    def table(row) -> dict[int, tuple[list, int]]:
        """One trace's slots as {address: (its elements, kind code)}."""
        out: dict[int, tuple[list, int]] = {}
        for a, v, c in zip(*row):
            if a == 0:
                continue
            if a in out:
                out[a][0].append(v)
            else:
                out[a] = ([v], c)
        return out

    def choices(self, z: Any) -> list:
        """z decoded for people: nested lists over its leading dims [*S, B], each trace a dict
        {site name: value} (a scalar tensor, or a flat one for a site of several elements), in the
        order drawn; a name this process has not seen shows as ``<address N>``."""
        lead, rows = self.rows(z)
        traces = []
        for row in rows:
            t = {}
            for a, (values, code) in self.table(row).items():
                v = torch.tensor(values, dtype=DTYPES[code])
                t[self.names.get(a, f"<address {a}>")] = v[0] if len(values) == 1 else v
            traces.append(t)
        for size in reversed(lead[1:]):
            traces = [traces[i : i + size] for i in range(0, len(traces), size)]
        return traces
