"""A range recorder for ``aurora.perf.spans.set_ranges``: what Nsight Systems would see of
aurora's NVTX ranges, kept as data. A CPU process has no NVTX library, so the tests patch this
in where ``TorchRanges`` would go."""


class RangeRecorder:
    """Every range opened, as ``(depth, name)`` in order (depth 0: outermost). A range closed
    while another is the innermost open one fails at once, naming both."""

    def __init__(self):
        self.opened: list[tuple[int, str]] = []
        self._open: list[str] = []

    def push(self, name: str) -> None:
        self.opened.append((len(self._open), name))
        self._open.append(name)

    def pop(self, name: str) -> None:
        innermost = self._open[-1] if self._open else None
        if innermost != name:
            raise AssertionError(f"range {name!r} closed while {innermost!r} is the innermost open one")
        self._open.pop()

    @property
    def balanced(self) -> bool:
        """Every range opened has been closed."""
        return not self._open
