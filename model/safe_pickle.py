"""Unpickling in bounded time: what a small crafted pickle cannot make us do.

Refusing unknown globals (model/importer.py) or loading with ``weights_only`` (model/checkpoint.py)
stops a pickle from running code, but not from costing unbounded time. Shared references make a
"billion laughs": a list of ten references to a list of ten references ... is a few hundred
bytes and 10^30 elements to ``str()``. A nested tuple used as a dict key is hashed by walking
it the same way, inside the unpickler itself (a 654-byte checkpoint hung ``torch.load``).

``BoundedUnpickler`` is Python's own pure-Python unpickler (the C one cannot be watched per
instruction) with every instruction counted, dict keys limited to plain scalars and sets
refused; ``expanded_size`` counts a loaded object as a tree, so shared containers show.
"""

from __future__ import annotations

import io
import pickle

SCALARS = (str, bytes, int, float, bool, type(None))


class PickleRefused(Exception):
    """The pickle would cost unbounded time or needs something we do not build; says what."""


def counted(load):
    def step(self) -> None:
        self.ops += 1
        if self.ops > self.max_ops:
            raise PickleRefused(f"it has more than {self.max_ops:,} pickle instructions")
        load(self)
    return step


class BoundedUnpickler(pickle._Unpickler):
    """Counts instructions (at most ``max_ops``), takes only scalars as dict keys, builds no sets."""

    dispatch = {op: counted(load) for op, load in pickle._Unpickler.dispatch.items()}

    def __init__(self, file, max_ops: int, **kwargs):
        super().__init__(file, **kwargs)
        self.max_ops, self.ops = max_ops, 0

    @staticmethod
    def _scalars(items):
        """Dict keys are hashed: a nested tuple would be walked exponentially often."""
        for item in items:
            if not isinstance(item, SCALARS):
                raise PickleRefused(f"a dict key is a {type(item).__name__}, not a name or number")
        return items

    def _mapping_on_top(self):
        target = self.stack[-1]
        if isinstance(target, (list, tuple, str, bytes)) or not hasattr(target, "__setitem__"):
            raise PickleRefused(f"it sets items of a {type(target).__name__}")
        return target

    def load_dict(self):
        items = self.pop_mark()
        self.append(dict(zip(self._scalars(items[0::2]), items[1::2])))

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._mapping_on_top()[self._scalars([key])[0]] = value

    def load_setitems(self):
        items = self.pop_mark()
        target = self._mapping_on_top()
        for key, value in zip(self._scalars(items[0::2]), items[1::2]):
            target[key] = value

    def load_additems(self):
        raise PickleRefused("it builds a set")

    def load_frozenset(self):
        raise PickleRefused("it builds a frozenset")


for _op, _name in ((pickle.DICT, "load_dict"), (pickle.SETITEM, "load_setitem"), (pickle.SETITEMS, "load_setitems"),
                   (pickle.ADDITEMS, "load_additems"), (pickle.FROZENSET, "load_frozenset")):
    BoundedUnpickler.dispatch[_op[0]] = counted(getattr(BoundedUnpickler, _name))


def expanded_size(obj: object, budget: int) -> int:
    """Elements of ``obj`` counted as a tree (a shared list once per reference), stopping past ``budget``.

    Unshared, a pickle cannot hold more elements than instructions; only shared (or cyclic)
    containers expand beyond that, and those are what makes str() or a walk take forever."""
    count, todo = 0, [obj]
    while todo and count <= budget:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return count


def check_expansion(obj: object, budget: int) -> None:
    if expanded_size(obj, budget) > budget:
        raise PickleRefused(f"its objects expand to more than {budget:,} elements through shared references "
                            "(a 'billion laughs')")


class _Opaque:
    """Whatever a global or a persistent id would have built: only its structure matters here."""

    def __init__(self, *args, **kwargs):
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


class StructureUnpickler(BoundedUnpickler):
    """Reads a pickle's structure without importing or calling anything it names: every global is
    ``_Opaque``, every persistent id (a torch storage) an ``_Opaque`` instance."""

    def find_class(self, module: str, name: str):
        return _Opaque

    def persistent_load(self, pid):
        return _Opaque()

    def load_build(self):
        self.stack.pop()  # the state is not applied: nothing is built


StructureUnpickler.dispatch = {**BoundedUnpickler.dispatch, pickle.BUILD[0]: counted(StructureUnpickler.load_build)}


def check_structure(data: bytes, max_ops: int) -> None:
    """Raise PickleRefused when loading ``data`` could take unbounded time; nothing is imported or
    called. Other errors (a damaged pickle) propagate as they are."""
    check_expansion(StructureUnpickler(io.BytesIO(data), max_ops=max_ops, encoding="latin1").load(), max_ops)
