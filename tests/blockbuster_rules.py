"""The blockbuster set-up shared by the test process (conftest.py) and the box processes the
tests start (blockbuster_site/sitecustomize.py): what counts as blocking, and the few
deliberate exceptions, each with its reason."""

from __future__ import annotations

from blockbuster import BlockBuster, BlockBusterFunction

SCANNED = ["aether_box"]


def allow_deliberate_blocking(bb: BlockBuster) -> None:
    """Tell blockbuster about the blocking calls the box makes on its loop on purpose."""
    from aether_box.align.export import OnnxProjector

    # align projects up to 64 rows (align.service.INLINE_ROWS) with ONNX Runtime on the loop
    # itself: ~100 us, less than the hop to a worker thread costs (see the README's
    # Architecture). Declared as blocking, and allowed only on that path.
    bb.functions["aether_box.align.export.OnnxProjector.run"] = BlockBusterFunction(
        OnnxProjector,
        "run",
        scanned_modules=SCANNED,
        can_block_functions=[("aether_box/align/service.py", {"op_project"})],
    )


def allow_textual_app_construction(bb: BlockBuster) -> None:
    """Textual resolves its CSS path (a realpath: stat calls) as an App is made. The CLI makes
    the dashboard before any loop runs; the tests make it inside their async test, on the
    loop. Allowed in that one Textual function only."""
    for name in ("os.path.abspath", "os.stat", "os.lstat", "os.path.realpath"):
        function = bb.functions.get(name)
        if function is not None:
            function.can_block_in("textual/_path.py", "_make_path_object_relative")


def start() -> BlockBuster:
    """A blockbuster watching aether_box code, with the deliberate exceptions, activated."""
    bb = BlockBuster(SCANNED)
    allow_deliberate_blocking(bb)
    allow_textual_app_construction(bb)
    bb.activate()
    return bb
