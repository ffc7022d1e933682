"""The terminal dashboard (`aether-box tui`): watches and drives a running box over the bus.

The app lives in `aether_box.tui.app` (imported only when the dashboard starts, so other
commands stay fast).
"""
